"""The egress proxy of one box: every TCP flow and DNS query the box sends ends here.

Threat (see policy.py): the guest is hostile. The proxy decides each flow on what the
host knows, the name behind one of our DNS addresses or the raw IP, and what the
stream itself claims (TLS SNI, HTTP Host) must agree with that name. It then dials
the name itself, resolving it now (a rebinding DNS cannot point it at the host's
network) or the `hosts:` address, never the IP the guest chose. Flows to a secret's
hosts on port 443 are terminated with the box's CA so that placeholders can be
replaced (secrets.py); every other TLS flow passes through untouched.

Runs in the helper process (network/helper.py): listeners live in the box's network
namespace (netns.py), outgoing sockets in the host's.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11

from a3s_box.network.ca import LeafIssuer
from a3s_box.network.dns import AddressBook, DnsResponder
from a3s_box.network.log import NetworkLog
from a3s_box.network.policy import Flow, NetworkPolicy, Verdict, normalize_name
from a3s_box.network.secrets import SecretBook
from a3s_box.network.sniff import MAX_PEEK, Sniffed, sniff

SO_ORIGINAL_DST = 80
SNIFF_WAIT = 0.3  # server-first protocols (ssh, smtp) send nothing: do not wait for them longer
DIAL_TIMEOUT = 15.0
CHUNK = 64 << 10


class Denied(Exception):
    pass


def original_destination(sock: Any) -> tuple[ipaddress.IPv4Address, int]:
    """Where the box meant to connect, before the namespace's REDIRECT rule."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, addr = struct.unpack("!2xH4s8x", raw)
    return ipaddress.IPv4Address(addr), port


@dataclass
class Counter:
    sent: int = 0  # box -> upstream
    received: int = 0  # upstream -> box


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                count: Callable[[int], None]) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            count(len(data))
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError, ssl.SSLError):
        pass


async def _close(*writers: asyncio.StreamWriter) -> None:
    for w in writers:
        try:
            w.close()
        except (ConnectionError, OSError, RuntimeError):
            pass


def _forbidden(reason: str) -> bytes:
    body = f"a3s-box: {reason}\n".encode()
    return (b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class Egress:
    def __init__(self, policy: NetworkPolicy, secrets: SecretBook, log: NetworkLog,
                 ca_folder: Any = None, upstream_tls: ssl.SSLContext | None = None,
                 destination: Callable[[Any], tuple[ipaddress.IPv4Address, int]] = original_destination
                 ) -> None:
        self.policy = policy
        self.destination = destination  # SO_ORIGINAL_DST; injectable for tests without netfilter
        self.secrets = secrets
        self.log = log
        self.dns = DnsResponder(policy.answers)
        self.leaves = LeafIssuer(ca_folder) if secrets and ca_folder is not None else None
        # The host's trust store (OpenSSL's default paths; SSL_CERT_FILE is honoured).
        self.upstream_tls = upstream_tls or ssl.create_default_context()
        self.open_flows = 0

    # --- TCP from the box -----------------------------------------------------------
    async def on_flow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_flows += 1
        try:
            await self._flow(reader, writer)
        except Exception as e:  # one flow's failure never stops the proxy
            self.log.write(proto="tcp", verdict="error", reason=f"{type(e).__name__}: {e}")
        finally:
            self.open_flows -= 1
            await _close(writer)

    async def _flow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ip, port = self.destination(writer.get_extra_info("socket"))
        name = self.dns.book.name_of(ip) if AddressBook.is_ours(ip) else None
        if AddressBook.is_ours(ip) and name is None:
            self.log.write(proto="tcp", dst=f"{ip}:{port}", verdict="deny",
                           reason="an address the box's DNS never handed out")
            return
        where = f"{name}:{port}" if name else f"{ip}:{port}"
        if name and self.leaves and self.secrets.intercepts(name, port):
            verdict = self.policy.decide(Flow(port, name=name))
            if not verdict.allowed:
                self.log.write(proto="tcp", dst=where, verdict="deny", reason=verdict.reason)
                return
            await self._intercept(reader, writer, name, port, verdict)
            return
        first, seen = await self._peek(reader)
        flow = Flow(port, name=name, ip=None if name else ip,
                    sni=seen.server_name if seen and seen.kind == "tls" else None,
                    http_host=seen.server_name if seen and seen.kind == "http" else None)
        verdict = self.policy.decide(flow)
        is_http = seen is not None and seen.kind == "http"
        if verdict.allowed and is_http:
            leaked = self.secrets.foreign(first, None)
            if leaked:
                verdict = Verdict(False, f"placeholder of secret {', '.join(leaked)} in a plain HTTP request")
        if not verdict.allowed:
            self.log.write(proto="tcp", dst=where, verdict="deny", reason=verdict.reason)
            if is_http:
                writer.write(_forbidden(verdict.reason))
                await writer.drain()
            return
        try:
            up_r, up_w, peer = await self._dial(verdict)
        except Denied as e:
            self.log.write(proto="tcp", dst=where, verdict="deny", reason=str(e))
            if is_http:
                writer.write(_forbidden(str(e)))
            return
        count = Counter()
        try:
            if is_http:
                await self._http(reader, writer, up_r, up_w, verdict.dial[0] if verdict.dial else "",
                                 first, count, tls=False)
            else:
                up_w.write(first)
                count.sent += len(first)
                await asyncio.gather(
                    _pipe(reader, up_w, lambda n: setattr(count, "sent", count.sent + n)),
                    _pipe(up_r, writer, lambda n: setattr(count, "received", count.received + n)))
        finally:
            await _close(up_w)
            self.log.write(proto="tcp", dst=where, ip=peer, verdict="allow", reason=verdict.reason,
                           sent=count.sent, received=count.received)

    async def _peek(self, reader: asyncio.StreamReader) -> tuple[bytes, Sniffed | None]:
        data, seen = b"", None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SNIFF_WAIT
        while seen is None and len(data) < MAX_PEEK:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(MAX_PEEK - len(data)), left)
            except asyncio.TimeoutError:
                break
            if not chunk:
                break
            data += chunk
            seen = sniff(data)
        return data, seen

    async def _dial(self, verdict: Verdict, tls_name: str | None = None
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        assert verdict.dial is not None
        host, port = verdict.dial
        if verdict.pinned is not None:
            candidates = [str(verdict.pinned)]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
            except OSError as e:
                raise Denied(f"cannot resolve {host}: {e}") from e
            candidates, why = [], f"{host} has no IPv4 address"
            for info in infos:
                ip = str(info[4][0])
                refusal = self.policy.acceptable_answer(host, ipaddress.IPv4Address(ip), port)
                if refusal:
                    why = refusal
                elif ip not in candidates:
                    candidates.append(ip)
            if not candidates:
                raise Denied(why)
        last = ""
        for ip in candidates:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(
                    ip, port, ssl=self.upstream_tls if tls_name else None,
                    server_hostname=tls_name), DIAL_TIMEOUT)
                return r, w, ip
            except ssl.SSLError as e:
                raise Denied(f"{host}: upstream TLS failed ({e.reason or e})") from e
            except (OSError, asyncio.TimeoutError) as e:
                last = f"{host} ({ip}:{port}): {e or 'timed out'}"
        raise Denied(f"cannot connect to {last}")

    # --- secrets: TLS terminated with the box's CA --------------------------------------
    async def _intercept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         name: str, port: int, verdict: Verdict) -> None:
        assert self.leaves is not None
        try:
            await writer.start_tls(self.leaves.context_for(name))
        except (ssl.SSLError, ConnectionError, OSError) as e:
            self.log.write(proto="tcp", dst=f"{name}:{port}", verdict="deny",
                           reason=f"TLS with the box failed: {e}")
            return
        try:
            up_r, up_w, peer = await self._dial(verdict, tls_name=name)
        except Denied as e:
            self.log.write(proto="tcp", dst=f"{name}:{port}", verdict="deny", reason=str(e))
            writer.write(_forbidden(str(e)))
            return
        count = Counter()
        try:
            await self._http(reader, writer, up_r, up_w, name, b"", count, tls=True)
        finally:
            await _close(up_w)
            self.log.write(proto="tcp", dst=f"{name}:{port}", ip=peer, verdict="allow",
                           reason=verdict.reason + " (intercepted for secrets)",
                           sent=count.sent, received=count.received)

    # --- HTTP/1.1, request by request (keep-alive included) ---------------------------
    async def _http(self, c_r: asyncio.StreamReader, c_w: asyncio.StreamWriter,
                    u_r: asyncio.StreamReader, u_w: asyncio.StreamWriter, host: str,
                    first: bytes, count: Counter, tls: bool) -> None:
        box = h11.Connection(h11.SERVER)
        upstream = h11.Connection(h11.CLIENT)
        if first:
            box.receive_data(first)  # (b"" would mean end of stream to h11)

        async def next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    conn.receive_data(await reader.read(CHUNK))
                    continue
                return ev

        def to_box(ev: Any) -> None:
            out = box.send(ev)
            if out:
                c_w.write(out)
                count.received += len(out)

        def to_upstream(ev: Any) -> None:
            out = upstream.send(ev)
            if out:
                u_w.write(out)
                count.sent += len(out)

        try:
            while True:
                ev = await next_event(box, c_r)
                if not isinstance(ev, h11.Request):  # closed, or not HTTP after all
                    return
                refusal, request = self._rewrite(ev, host, tls)
                if refusal:
                    self.log.write(proto="http", dst=host, verdict="deny", reason=refusal)
                    to_box(h11.Response(status_code=403, headers=[("content-type", "text/plain"),
                                                                  ("connection", "close")]))
                    to_box(h11.Data(data=f"a3s-box: {refusal}\n".encode()))
                    to_box(h11.EndOfMessage())
                    await c_w.drain()
                    return
                if any(k.lower() == b"expect" for k, _ in ev.headers):
                    to_box(h11.InformationalResponse(status_code=100, headers=[]))
                to_upstream(request)
                while True:
                    body = await next_event(box, c_r)
                    if isinstance(body, h11.Data):
                        to_upstream(body)
                    elif isinstance(body, h11.EndOfMessage):
                        to_upstream(body)
                        break
                    else:
                        return
                await u_w.drain()
                while True:
                    resp = await next_event(upstream, u_r)
                    if isinstance(resp, h11.InformationalResponse):
                        if resp.status_code != 100:
                            to_box(h11.InformationalResponse(status_code=resp.status_code,
                                                             headers=resp.headers, reason=resp.reason))
                        continue
                    if isinstance(resp, h11.Response):
                        # re-made: h11 speaks HTTP/1.1 to the box whatever the upstream spoke
                        to_box(h11.Response(status_code=resp.status_code, headers=resp.headers,
                                            reason=resp.reason))
                        await c_w.drain()
                        continue
                    if isinstance(resp, h11.Data):
                        to_box(resp)
                        await c_w.drain()
                        continue
                    if isinstance(resp, h11.EndOfMessage):
                        to_box(resp)
                        await c_w.drain()
                        break
                    return
                if h11.MUST_CLOSE in (box.our_state, box.their_state, upstream.our_state,
                                      upstream.their_state):
                    return
                box.start_next_cycle()
                upstream.start_next_cycle()
        except (h11.ProtocolError, ConnectionError, OSError, ssl.SSLError) as e:
            return

    def _rewrite(self, req: h11.Request, host: str, tls: bool) -> tuple[str, h11.Request]:
        """(a refusal, or "" and the request to send upstream)."""
        headers = [(k, v) for k, v in req.headers if k.lower() != b"expect"]
        said = next((v.decode("latin-1") for k, v in headers if k.lower() == b"host"), None)
        if said is not None and normalize_name(said.rsplit(":", 1)[0]) != host:
            return f"HTTP Host {said!r} does not match {host!r}", req
        head = req.target + b"\n" + b"\n".join(v for _, v in headers)
        leaked = self.secrets.foreign(head, host if tls else None)
        if leaked:
            how = "to another host" if tls else "over plain HTTP"
            return f"placeholder of secret {', '.join(leaked)} sent {how}", req
        if not tls:
            return "", h11.Request(method=req.method, target=req.target, headers=headers)
        used: list[str] = []
        target, names = self.secrets.substitute(req.target, host)
        used += names
        out = []
        for k, v in headers:
            v, names = self.secrets.substitute(v, host)
            used += names
            out.append((k, v))
        if used:
            self.log.write(proto="http", dst=host, verdict="allow",
                           reason=f"secret {', '.join(sorted(set(used)))} substituted")
        return "", h11.Request(method=req.method, target=target, headers=out)

    # --- DNS from the box -------------------------------------------------------------
    def on_dns(self, data: bytes) -> bytes | None:
        out, name, answer = self.dns.answer(data)
        self.log.write(proto="dns", dst=name, verdict="deny" if "nxdomain" in answer else "allow",
                       reason=answer)
        return out


class DnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, egress: Egress) -> None:
        self.egress = egress
        self.transport: Any = None  # the selector datagram transport (not a DatagramTransport subclass)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        out = self.egress.on_dns(data)
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)


async def relay_published(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          inner: socket.socket, inner_port: int) -> None:
    """A host connection to a published port, into the box's namespace where the VMM
    forwards it to the guest."""
    try:
        await asyncio.get_running_loop().sock_connect(inner, ("127.0.0.1", inner_port))
        in_r, in_w = await asyncio.open_connection(sock=inner)
    except OSError:
        inner.close()
        await _close(writer)
        return
    try:
        await asyncio.gather(_pipe(reader, in_w, lambda n: None), _pipe(in_r, writer, lambda n: None))
    finally:
        await _close(in_w, writer)
