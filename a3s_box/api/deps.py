"""What an endpoint is given: its app's settings and shared state, and a Host acting for the caller."""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from a3s_box import audit
from a3s_box.api.auth import check, token_id
from a3s_box.api.channels import Channels
from a3s_box.api.metrics import Metrics
from a3s_box.orchestrator.host import Host


@dataclass(frozen=True)
class ApiState:
    """One app's settings and what its requests share, kept on `app.state.api` (never in a
    module, so two apps in one process stay apart)."""

    home: Path
    token: str | None  # required as a bearer token on every request (TCP); None: the socket's mode guards
    metrics: Metrics
    channels: Channels

    def admits(self, authorization: str | None) -> bool:
        """Whether a request with this Authorization header may go on."""
        return self.token is None or check(authorization, self.token)

    @contextmanager
    def host(self) -> Iterator[Host]:
        """A Host over the home acting for the caller (the audit log's `who`), for work that
        may outlive its endpoint (a stream, a tar upload's extractor) or begins after a
        WebSocket handshake. Work that ends with its endpoint takes HostDep instead."""
        with audit.acting_as(self.who()), Host(self.home) as h:
            yield h

    def who(self) -> str:
        """Who the audit log says acted: the token's id over TCP, else whoever runs the server."""
        return f"token:{token_id(self.token)}" if self.token else audit.who()


def api_state(conn: HTTPConnection) -> ApiState:
    """The ApiState create_app put on the app serving CONN (a request or a WebSocket)."""
    state: ApiState = conn.app.state.api
    return state


ApiDep = Annotated[ApiState, Depends(api_state)]


async def open_host(api: ApiDep) -> AsyncIterator[Host]:
    """A fresh Host for the request (the state store and the home lock serialise what must
    be), closed when the endpoint returns."""
    # async, so that acting_as sets the caller in the request's own context: a sync
    # dependency would set it in a worker thread's copy, which the endpoint never sees
    with audit.acting_as(api.who()):
        h = await run_in_threadpool(Host, api.home)  # it opens files and the state database
        try:
            yield h
        finally:
            h.close()


# "function": closed as the endpoint returns, before the response goes out, as a `with
# Host(...)` in its body would be (FastAPI waits for a sync endpoint's thread even when the
# client has gone, so the Host is never closed under work still using it)
HostDep = Annotated[Host, Depends(open_host, scope="function")]
