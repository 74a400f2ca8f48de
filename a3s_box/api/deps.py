"""What an endpoint is given: its app's settings and shared state, and a Host acting for the caller."""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, WebSocketException
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request

from a3s_box import audit
from a3s_box.api.access import Caller, TokenBook, check_route, owned_box, usable_pool
from a3s_box.api.channels import Channels
from a3s_box.api.metrics import Metrics
from a3s_box.api.problems import RequestTooLarge, Unauthorized, status_of
from a3s_box.errors import BoxError
from a3s_box.orchestrator.host import Host


@dataclass(frozen=True)
class ApiState:
    """One app's settings and what its requests share, kept on `app.state.api` (never in a
    module, so two apps in one process stay apart)."""

    home: Path
    token: str | None  # the admin token, required over TCP; None: the socket's mode guards
    metrics: Metrics
    channels: Channels
    tokens: TokenBook

    def caller(self, authorization: str | None) -> Caller | None:
        """Who sent a request with this Authorization header (None: not admitted)."""
        return self.tokens.caller(authorization)

    @contextmanager
    def host(self, caller: Caller) -> Iterator[Host]:
        """A Host over the home acting for CALLER (the audit log's `who`), for work that
        may outlive its endpoint (a stream, a tar upload's extractor) or begins after a
        WebSocket handshake. Work that ends with its endpoint takes HostDep instead."""
        with audit.acting_as(who(caller)), Host(self.home) as h:
            yield h


def who(caller: Caller) -> str:
    """Who the audit log says acted: the token's id over TCP, else whoever runs the server."""
    return audit.who() if caller.id == "local" else f"token:{caller.id}"


def api_state(conn: HTTPConnection) -> ApiState:
    """The ApiState create_app put on the app serving CONN (a request or a WebSocket)."""
    state: ApiState = conn.app.state.api
    return state


ApiDep = Annotated[ApiState, Depends(api_state)]


async def authorize(conn: HTTPConnection) -> Caller:
    """Every route's first dependency: who calls (401 without a token we know) and whether
    that token may call this route, on this box or pool (access.py)."""
    api = api_state(conn)
    # HTTP: the guard resolved it already; a WebSocket is not seen by the guard
    caller = getattr(conn.state, "caller", None) or api.caller(conn.headers.get("authorization"))
    websocket = conn.scope["type"] == "websocket"
    try:
        if caller is None:
            raise Unauthorized("a bearer token is required (box serve --print-token)")
        route = conn.scope.get("route")
        check_route(caller, "WS" if websocket else conn.scope["method"], getattr(route, "path", ""))
        if "name" in conn.path_params:
            await run_in_threadpool(owned_box, caller, api.tokens.store(), conn.path_params["name"])
        if "pool" in conn.path_params:
            usable_pool(caller, conn.path_params["pool"])
    except BoxError as e:
        if websocket:  # no exception handlers for WebSockets: a close code and the reason
            raise WebSocketException(code=4000 + status_of(e), reason=str(e)[:120]) from e
        raise
    return caller


CallerDep = Annotated[Caller, Depends(authorize)]


async def capped_body(request: Request, limit: int, what: str) -> bytes:
    """The request's body, read on the event loop as it arrives; RequestTooLarge (413)
    naming WHAT once it passes LIMIT bytes (a chunked body has no length to refuse early)."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise RequestTooLarge(f"{what} may be at most {limit >> 20} MiB")
    return bytes(data)


async def open_host(caller: CallerDep, api: ApiDep) -> AsyncIterator[Host]:
    """A fresh Host for the request (the state store and the home lock serialise what must
    be), closed when the endpoint returns."""
    # async, so that acting_as sets the caller in the request's own context: a sync
    # dependency would set it in a worker thread's copy, which the endpoint never sees
    with audit.acting_as(who(caller)):
        h = await run_in_threadpool(Host, api.home)  # it opens files and the state database
        try:
            yield h
        finally:
            h.close()


# "function": closed as the endpoint returns, before the response goes out, as a `with
# Host(...)` in its body would be (FastAPI waits for a sync endpoint's thread even when the
# client has gone, so the Host is never closed under work still using it)
HostDep = Annotated[Host, Depends(open_host, scope="function")]
