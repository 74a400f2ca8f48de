"""`box serve`: a3s-box over HTTP (FastAPI on uvicorn), for the TypeScript SDK and any
HTTP client. One owner per concept:

models.py    request and response bodies (pydantic): the OpenAPI document comes from them
problems.py  every BoxError as an RFC 9457 problem (the CLI's message and locations)
auth.py      the bearer token for TCP (unix sockets rely on the socket's 0600 mode)
app.py       the routes, each a thin call into a3s_box.Host
metrics.py   /metrics (prometheus-client)
server.py    uvicorn on a unix socket or TCP

Threat: over TCP any client is hostile until it shows the token; bodies are bounded;
a client that goes away mid-exec leaves no session in the guest.
"""
