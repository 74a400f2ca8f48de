"""A small HTTP proxy in front of the real registry that injects faults on purpose.

Only the faults are fake: every answer that is not a fault is the real registry's.
Faults: N answers of HTTP 500, blob bodies cut short (connection closed mid-body),
corrupted blob bytes, a canned manifest (wrong media type), and a bearer-token gate
(the WWW-Authenticate challenge flow, with a token endpoint checking basic credentials).
"""
from __future__ import annotations

import base64
import http.client
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Faults:
    fail_500: int = 0  # answer this many requests (matching `path_has`) with 500
    path_has: str = "/v2/"
    cut_blobs: int = 0  # this many blob answers send half the body, then close
    corrupt_blobs: bool = False
    manifest: tuple[bytes, str] | None = None  # (body, content type) for every manifest GET
    token_creds: tuple[str, str] | None = None  # require a bearer token got with these creds
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults = Faults()
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            def do_HEAD(self) -> None:
                proxy._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> Faults:
        self.faults = Faults()
        return self.faults

    def _take(self, attr: str) -> bool:
        with self.lock:
            n = getattr(self.faults, attr)
            if n > 0:
                setattr(self.faults, attr, n - 1)
                return True
            return False

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        f = self.faults
        with self.lock:
            f.seen.append((h.path, {k.lower(): v for k, v in h.headers.items()}))
        if h.path.startswith("/token"):
            return self._token(h)
        if f.token_creds and h.headers.get("Authorization") != "Bearer good-token":
            realm = f"http://{self.host}/token"
            return self._send(h, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {
                "WWW-Authenticate": f'Bearer realm="{realm}",service="test",scope="repository:x:pull"',
                "Content-Type": "application/json"})
        if f.path_has in h.path and self._take("fail_500"):
            return self._send(h, 500, b"injected failure", {})
        if "/manifests/" in h.path and f.manifest is not None:
            return self._send(h, 200, f.manifest[0], {"Content-Type": f.manifest[1]})
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in ("host", "authorization")}
        conn.request(h.command, h.path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        out = {k: v for k, v in resp.getheaders()
               if k.lower() not in ("transfer-encoding", "connection", "content-length")}
        if "/blobs/" in h.path and resp.status in (200, 206):
            if f.corrupt_blobs and body:
                body = bytes([body[0] ^ 0xFF]) + body[1:]
            if self._take("cut_blobs"):
                h.send_response(resp.status)
                for k, v in out.items():
                    h.send_header(k, v)
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                h.wfile.write(body[: len(body) // 2])
                h.wfile.flush()
                h.close_connection = True
                return
        self._send(h, resp.status, body, out)

    def _token(self, h: BaseHTTPRequestHandler) -> None:
        creds = self.faults.token_creds
        want = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode() if creds else ""
        if h.headers.get("Authorization") != want:
            return self._send(h, 401, b'{"details":"bad credentials"}', {})
        self._send(h, 200, b'{"token":"good-token"}', {"Content-Type": "application/json"})

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
