"""HTTP to a port of a sandbox's box, for the URLs the SDK's get_host(port) gives
({port}-{sandbox}.{domain}): each request is carried to 127.0.0.1:PORT inside the box
by the guest's /.a3s/fs connect (guest/relay.py) over the box's own guest channel (no host port, no
network device needed) and its response streamed back; h11 parses what the box says.

Threat: the box's server is hostile, and so may be the caller. The caller reaches a
sandbox's port only if the sandbox was made with public traffic (E2B's default) or
presents its traffic token (`e2b-traffic-access-token`, compared in constant time); a
box's response is parsed with caps (h11's header limit, no more than the request asked
for). WebSocket upgrades are refused (501): not carried yet."""
from __future__ import annotations

import asyncio
from pathlib import Path

import h11
from starlette.types import Receive, Scope, Send

from a3s_box import audit
from a3s_box.api.channels import Channels
from a3s_box.api.e2b import keys
from a3s_box.api.e2b.gate import find_sandbox
from a3s_box.api.limits import MAX_FILE
from a3s_box.errors import BoxError
from a3s_box.guest.client import GuestClient
from a3s_box.guest.protocol import Namespace
from a3s_box.guest.relay import open_port
from a3s_box.orchestrator.host import Host

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
                        b"trailer", b"upgrade", b"e2b-traffic-access-token"})


class PortRefused(BoxError):
    """No sandbox by that ID, or its traffic token is missing or wrong."""


class PortProxy:
    def __init__(self, home: Path, channels: Channels, key: keys.ServerKey) -> None:
        self.home, self.channels, self.key = home, channels, key

    def _client(self, sandbox_id: str, token: str | None) -> tuple[GuestClient, str]:
        with audit.acting_as(f"sandbox:{sandbox_id}"), Host(self.home) as h:
            rec, row = find_sandbox(h, sandbox_id)
            if not rec.public and not keys.matches(token, keys.traffic_token(self.key.value, rec)):
                raise PortRefused(f"sandbox {sandbox_id}: its traffic is private: send its traffic access token")
            if row.status != "running":
                raise PortRefused(f"sandbox {sandbox_id}: is {row.status}")
            return self.channels.client(h, row), row.name

    async def __call__(self, scope: Scope, receive: Receive, send: Send, port: int, sandbox_id: str) -> None:
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1011})
            return
        headers = [(k.lower(), v) for k, v in scope["headers"]]
        token = next((v.decode("latin-1") for k, v in headers if k == b"e2b-traffic-access-token"), None)
        if any(k == b"upgrade" for k, _ in headers):
            await _plain(send, 501, "upgrades (WebSocket) to a sandbox port are not carried")
            return
        try:
            client, box = await asyncio.to_thread(self._client, sandbox_id, token)
        except PortRefused as e:
            await _plain(send, 401 if "token" in str(e) else 502, str(e))
            return
        except BoxError as e:
            await _plain(send, 502, str(e))
            return
        body = bytearray()
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if len(body) > MAX_FILE:
                await _plain(send, 413, f"the body may be at most {MAX_FILE >> 20} MiB")
                return
            if not msg.get("more_body"):
                break
        await self._relay(scope, headers, bytes(body), client, box, port, send)

    async def _relay(self, scope: Scope, headers: list[tuple[bytes, bytes]], body: bytes, client: GuestClient,
                     box: str, port: int, send: Send) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | BoxError | None] = asyncio.Queue()
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        conn = h11.Connection(h11.CLIENT)
        out = conn.send(h11.Request(method=scope["method"], target=target, headers=[
            *[(k, v) for k, v in headers if k not in HOP_BY_HOP and k != b"content-length"],
            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]))
        out += conn.send(h11.Data(data=body)) if body else b""
        out += conn.send(h11.EndOfMessage())

        def received(data: bytes) -> None:  # on the guest client's reader thread: hand it over
            loop.call_soon_threadsafe(queue.put_nowait, data)

        def ended(error: BoxError | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, error)
        stream = await asyncio.to_thread(open_port, client, box, port, Namespace.AGENT,
                                         on_data=received, on_end=ended)
        started = False
        try:
            await asyncio.to_thread(stream.send, out)
            stream.close_send()
            while True:
                item = await queue.get()
                if isinstance(item, BoxError):
                    raise item
                conn.receive_data(item if item is not None else b"")
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        break
                    if isinstance(ev, h11.Response):
                        started = True
                        await send({"type": "http.response.start", "status": ev.status_code, "headers": [
                            (k, v) for k, v in ev.headers if k.lower() not in HOP_BY_HOP]})
                    elif isinstance(ev, h11.Data):
                        await send({"type": "http.response.body", "body": bytes(ev.data), "more_body": True})
                    elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                        return
                if item is None:  # the connection ended before a whole response
                    raise h11.RemoteProtocolError("the box's server closed the connection early")
        except (h11.RemoteProtocolError, BoxError) as e:
            if not started:
                why = str(e) if isinstance(e, BoxError) else f"box {box}: port {port}: {e}"
                await _plain(send, 502, why)
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            stream.close()


async def _plain(send: Send, status: int, message: str) -> None:
    body = (message + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
