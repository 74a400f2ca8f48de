"""Where E2B traffic enters `box serve`: an ASGI layer in front of the app that sends
/e2b/... to E2B's control API or to envd (process and filesystem over Connect RPC,
/files, /health), and a request whose Host is {port}-{sandbox}.{domain} to that port of
the sandbox's box. The SDK's API URL and sandbox URL are both http(s)://SERVER/e2b.

Everything else goes on to the app, whose guard and routes are unchanged: E2B requests
never reach them, and are admitted by control.py (the API key) and gate.py (the
sandbox's access token) instead."""
from __future__ import annotations

import re
from pathlib import Path

from starlette.routing import Router
from starlette.types import ASGIApp, Receive, Scope, Send

from a3s_box.api.access import TokenBook
from a3s_box.api.channels import Channels
from a3s_box.api.e2b import control, files_http, keys
from a3s_box.api.e2b.envd.filesystem.filesystem_connect import FilesystemASGIApplication
from a3s_box.api.e2b.envd.process.process_connect import ProcessASGIApplication
from a3s_box.api.e2b.expiry import ExpiryThread
from a3s_box.api.e2b.filesystem import FilesystemService
from a3s_box.api.e2b.gate import Gate
from a3s_box.api.e2b.ports import PortProxy
from a3s_box.api.e2b.processes import ProcessService, ProcessTable
from a3s_box.api.limits import MAX_JSON

PREFIX = "/e2b"
PORT_HOST = re.compile(r"^(\d{1,5})-([a-z0-9][a-z0-9-]{0,62})\.")


class E2bGateway:
    """The E2B side of one app: its services and apps, and what runs beside them (the
    timeout thread); `route` is called by GatewayMiddleware for every request."""

    def __init__(self, home: Path, tokens: TokenBook, channels: Channels, domain: str | None = None) -> None:
        key = keys.ServerKey(home)
        gate = Gate(home, channels, key)
        self.processes = ProcessTable()
        self.filesystem = FilesystemService(gate.open)
        self.expiry = ExpiryThread(home)
        self.control = control.build(home, tokens, key, domain)
        self.process_app = ProcessASGIApplication(ProcessService(gate.open, self.processes), read_max_bytes=MAX_JSON)
        self.fs_app = FilesystemASGIApplication(self.filesystem, read_max_bytes=MAX_JSON)
        self.files = Router(routes=files_http.routes(gate.open))
        self.ports = PortProxy(home, channels, key)

    def start(self) -> None:
        self.expiry.start()

    def stop(self) -> None:
        self.expiry.stop()
        self.filesystem.close()

    async def route(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        if scope["type"] not in ("http", "websocket"):
            await app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        hit = PORT_HOST.match(host)
        if hit is not None:
            await self.ports(scope, receive, send, int(hit.group(1)), hit.group(2))
            return
        path: str = scope["path"]
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await app(scope, receive, send)
            return
        sub = path[len(PREFIX):] or "/"
        inner = {**scope, "root_path": PREFIX}  # Starlette and connectrpc route on path minus root_path
        if sub.startswith("/process.Process/"):
            await self.process_app(inner, receive, send)
        elif sub.startswith("/filesystem.Filesystem/"):
            await self.fs_app(inner, receive, send)
        elif sub in ("/files", "/health"):
            await self.files(inner, receive, send)
        else:
            await self.control(inner, receive, send)


class GatewayMiddleware:
    """Outermost on the app: E2B traffic never meets the app's guard or routes."""

    def __init__(self, app: ASGIApp, gateway: E2bGateway) -> None:
        self.app, self.gateway = app, gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.gateway.route(scope, receive, send, self.app)
