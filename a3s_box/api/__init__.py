"""`box serve`: a3s-box over HTTP (FastAPI on uvicorn), for the TypeScript SDK and any
HTTP client. One owner per concept:

models.py    request and response bodies (pydantic): the OpenAPI document comes from them
problems.py  every BoxError as an RFC 9457 problem (the CLI's message and locations)
auth.py      the bearer token for TCP (unix sockets rely on the socket's 0600 mode)
app.py       the app assembled: settings, the auth guard and body caps, the problem handler, routers
routes/      the endpoints, one APIRouter per resource, each a thin call into a3s_box.Host
deps.py      what an endpoint is given: the app's state (app.state.api) and a Host (HostDep)
limits.py    the caps on request bodies
channels.py  one greeted guest connection per running box, shared by exec requests
metrics.py   /metrics (prometheus-client)
server.py    uvicorn on a unix socket or TCP
openapi.py   the OpenAPI document, generated (schema/openapi.json)

A new endpoint is a function in the routes module of its resource (a new resource: a
module there, and one include_router line in app.py).

Threat: over TCP any client is hostile until it shows the token; bodies are bounded;
a client that goes away mid-exec leaves no session in the guest.
"""
