"""`box serve`'s app, assembled: its settings and shared state, the auth guard and body
caps, the problem handler, and the routers of api/routes (each endpoint a thin call into
a3s_box.Host, so the CLI, the Python API and HTTP clients see the same behaviour and the
same messages)."""
from __future__ import annotations

import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

import a3s_box
from a3s_box.api import models as m
from a3s_box.api.channels import Channels
from a3s_box.api.access import TokenBook
from a3s_box.api.deps import ApiState, api_state, authorize
from a3s_box.api.limits import body_limit
from a3s_box.api.metrics import Metrics
from a3s_box.api.problems import as_response, problem
from a3s_box.api.routes import boxes, boxfile, events, files, images, pools, system, tokens
from a3s_box.api.routes import exec as exec_  # the module's name is the route's; `exec` is a builtin
from a3s_box.errors import BoxError


def create_app(home: Path, token: str | None = None, reconcile: float | None = None,
               e2b_domain: str | None = None) -> FastAPI:
    """The API for HOME; TOKEN: required as a bearer token on every request (TCP).
    RECONCILE (seconds): run the host's reconcile loop at that period while serving.
    E2B_DOMAIN: the domain of sandbox port URLs (api/e2b; default: the host called)."""
    app = FastAPI(title="a3s-box", version=a3s_box.__version__,
                  description="AI agents in hardware-isolated microVMs: the `box` CLI over HTTP.",
                  responses={400: {"model": m.Problem}, 401: {"model": m.Problem}},
                  dependencies=[Depends(authorize)])  # every route: who calls, and may they (access.py)
    api = ApiState(home=home, token=token, metrics=Metrics(home), channels=Channels(), tokens=TokenBook(home, token))
    app.state.api = api
    app.router.on_shutdown.append(api.channels.close)
    app.router.on_shutdown.append(api.tokens.close)
    if reconcile is not None:
        loop = ReconcileThread(home, reconcile)
        app.router.on_startup.append(loop.start)
        app.router.on_shutdown.append(loop.stop)
    app.middleware("http")(guard)
    _mount_e2b(app, api, e2b_domain)  # after the guard: outside it, E2B admits its own callers
    app.exception_handler(BoxError)(box_error)
    # in the order the endpoints have always had (the OpenAPI document lists them so)
    app.include_router(system.router)
    app.include_router(boxfile.router)
    app.include_router(boxes.router)
    app.include_router(exec_.router)
    app.include_router(files.router)
    app.include_router(pools.router)
    app.include_router(images.router)
    app.include_router(events.router)
    app.include_router(tokens.router)
    _mount_mcp(app, api)
    return app


def _mount_e2b(app: FastAPI, api: ApiState, domain: str | None) -> None:
    """E2B's REST API and envd under /e2b, and sandbox port URLs by Host (api/e2b/gateway.py)."""
    from a3s_box.api.e2b.gateway import E2bGateway, GatewayMiddleware

    gateway = E2bGateway(api.home, api.tokens, api.channels, domain)
    app.add_middleware(GatewayMiddleware, gateway=gateway)
    app.router.on_startup.append(gateway.start)
    app.router.on_shutdown.append(gateway.stop)


def _mount_mcp(app: FastAPI, api: ApiState) -> None:
    """MCP's streamable HTTP at /mcp (api/mcp.py): the guard's token check applies as to
    every route; the tools act with the token's scope. Not an OpenAPI route (its own
    protocol). No DNS-rebinding host check: TCP needs the bearer token, which a browser
    page cannot send cross-origin, and the unix socket is not reachable from one."""
    from mcp.server.transport_security import TransportSecuritySettings

    from a3s_box.api import mcp

    server = mcp.build(api.home, mcp.caller_over_http(api.tokens))
    sub = server.streamable_http_app(streamable_http_path="/mcp", transport_security=TransportSecuritySettings(
        enable_dns_rebinding_protection=False))
    app.router.routes.extend(sub.routes)
    sessions = server.session_manager.run()  # entered and left in the lifespan's one task

    async def start() -> None:
        await sessions.__aenter__()

    async def stop() -> None:
        await sessions.__aexit__(None, None, None)
    app.router.on_startup.append(start)
    app.router.on_shutdown.append(stop)


async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """The bearer token (TCP) and the body caps, before any route runs; counts requests."""
    api = api_state(request)
    caller = api.caller(request.headers.get("authorization"))
    if caller is None:
        return as_response(m.Problem(title="unauthorized", status=401,
                                     detail="a bearer token is required (box serve --print-token)"))
    request.state.caller = caller  # authorize (deps.py) and /mcp's tools take it from here: one lookup
    length = int(request.headers.get("content-length") or 0)
    limit = body_limit(request.url.path)
    if length > limit:
        return as_response(m.Problem(title="request too large", status=413,
                                     detail=f"the body may be at most {limit >> 20} MiB"))
    response = await call_next(request)
    route = request.scope.get("route")
    api.metrics.requests.labels(getattr(route, "path", "other"), str(response.status_code)).inc()
    return response


async def box_error(_request: Request, e: BoxError) -> JSONResponse:
    return as_response(problem(e))


class ReconcileThread:
    """The orchestrator's reconcile loop on a thread of the server, its lines on stderr."""

    def __init__(self, home: Path, period: float) -> None:
        self.home, self.period = home, period
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from a3s_box.orchestrator.host import Host
        from a3s_box.orchestrator.reconcile import Reconciler

        host = Host(self.home)
        loop = Reconciler(host.home, host.runtime, host.images, self.period,
                          log=lambda line: print(f"a3s-box: {line}", file=sys.stderr, flush=True))
        self._thread = threading.Thread(target=loop.run, args=(self._stop,), name="a3s-reconcile", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
