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
import zlib
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11

from a3s_box.network.ca import LeafIssuer
from a3s_box.network.dns import AddressBook, DnsResponder
from a3s_box.network.log import NetworkLog
from a3s_box.network.policy import Flow, NetworkPolicy, Verdict, normalize_name
from a3s_box.network.http1 import HeadError, could_be_http, parse_request_head
from a3s_box.network.secrets import Scrubber, SecretBook
from a3s_box.network.sniff import MAX_PEEK, Sniffed, sniff

SO_ORIGINAL_DST = 80
SNIFF_WAIT = 0.3  # server-first protocols (ssh, smtp) send nothing: do not wait for them longer
DIAL_TIMEOUT = 15.0
CHUNK = 256 << 10
IDLE_TIMEOUT = 300.0  # a flow on which nothing moves either way this long is closed
MAX_FLOWS = 256  # flows one box may have open at once
# Ports where a flow to a name must be read (TLS ClientHello or HTTP head) and checked
# before anything is relayed: here a server-first protocol is not expected, and an
# unreadable start could carry another name to a shared front end.
WEB_PORTS = frozenset({80, 443, 8000, 8080, 8443, 8888})
PLACEHOLDER_SPAN = 128  # longer than any placeholder: the overlap kept between body chunks


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

    def send(self, n: int) -> None:
        self.sent += n

    def receive(self, n: int) -> None:
        self.received += n


@dataclass
class Activity:
    """When bytes last moved on a flow (either way), and its upstream to close when idle."""
    last: float
    upstream: tuple[asyncio.StreamWriter, ...] = ()
    idled: bool = False

    def touch(self) -> None:
        self.last = asyncio.get_running_loop().time()


def host_addresses() -> frozenset[ipaddress.IPv4Address]:
    """Every IPv4 address local to the host's network namespace (the kernel's LOCAL
    routes, /proc/net/fib_trie), public ones included: `public` must not reach a host
    service bound to 0.0.0.0 through the host's own public address."""
    out: set[ipaddress.IPv4Address] = set()
    try:
        lines = Path("/proc/net/fib_trie").read_text(encoding="ascii").splitlines()
    except OSError:
        return frozenset()
    for prev, line in zip(lines, lines[1:]):
        if line.strip() == "/32 host LOCAL" and "|--" in prev:
            try:
                out.add(ipaddress.IPv4Address(prev.split("|--")[1].strip()))
            except ValueError:
                pass
    return frozenset(out)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                count: Callable[[int], None], activity: Activity | None = None) -> None:
    try:
        while data := await reader.read(CHUNK):
            if activity is not None:
                activity.touch()
            writer.write(data)
            count(len(data))
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError, ssl.SSLError):
        pass


async def _answer(writer: asyncio.StreamWriter, data: bytes) -> None:
    """A last word to the box; it may have gone already."""
    try:
        writer.write(data)
        await writer.drain()
    except (ConnectionError, OSError):
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
                 destination: Callable[[Any], tuple[ipaddress.IPv4Address, int]] = original_destination,
                 local_addresses: Callable[[], frozenset[ipaddress.IPv4Address]] = host_addresses,
                 leaves: Any = None) -> None:
        self.policy = policy
        self.destination = destination  # SO_ORIGINAL_DST; injectable for tests without netfilter
        self.local_addresses = local_addresses  # the host's own: never dialled in `public`
        self.secrets = secrets
        self.log = log
        self.dns = DnsResponder(policy.answers)
        self.leaves = LeafIssuer(ca_folder, leaves) if secrets and ca_folder is not None else None
        # The host's trust store (OpenSSL's default paths; SSL_CERT_FILE is honoured).
        self.upstream_tls = upstream_tls or ssl.create_default_context()
        self.open_flows = 0
        self.max_flows = MAX_FLOWS
        self.idle_timeout = IDLE_TIMEOUT

    # --- TCP from the box -----------------------------------------------------------
    async def on_flow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open_flows >= self.max_flows:
            self.log.write(proto="tcp", verdict="deny", reason=f"the box has {self.open_flows} flows open "
                           f"(at most {self.max_flows})")
            await _close(writer)
            return
        self.open_flows += 1
        activity = Activity(asyncio.get_running_loop().time())
        watchdog = asyncio.create_task(self._watch(activity, writer))
        try:
            await self._flow(reader, writer, activity)
        except Exception as e:  # one flow's failure never stops the proxy
            self.log.write(proto="tcp", verdict="error", reason=f"{type(e).__name__}: {e}")
        finally:
            watchdog.cancel()
            self.open_flows -= 1
            await _close(writer, *activity.upstream)

    async def _watch(self, activity: "Activity", writer: asyncio.StreamWriter) -> None:
        """Ends a flow on which nothing moved, either way, for idle_timeout seconds."""
        loop = asyncio.get_running_loop()
        while True:
            left = activity.last + self.idle_timeout - loop.time()
            if left <= 0:
                activity.idled = True
                await _close(writer, *activity.upstream)
                return
            await asyncio.sleep(min(left, 5.0))

    async def _flow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    activity: "Activity") -> None:
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
            await self._intercept(reader, writer, name, port, verdict, activity)
            return
        # Server-first protocols (ssh, smtp) send nothing until the server speaks: after a
        # short quiet time such a flow may start, but only to a name on a port that is not
        # a web port, and its first bytes are still read and decided before they go out.
        quiet_ok = name is None or port not in WEB_PORTS
        first, seen = await self._peek(reader, activity, SNIFF_WAIT if quiet_ok else None)
        if seen is None and first:
            seen = Sniffed("bad", reason=f"idle for {self.idle_timeout:g}s before its first bytes could be read"
                           if activity.idled else "the flow ended before its first bytes could be read")
        if seen is None and not quiet_ok:
            self.log.write(proto="tcp", dst=where, verdict="deny", reason="closed before sending anything")
            return
        verdict = self._decide(name, ip, port, seen)
        is_http = seen is not None and seen.kind in ("http", "bad") and could_be_http(first.lstrip(b"\r\n \t"))
        if not verdict.allowed:
            self.log.write(proto="tcp", dst=where, verdict="deny", reason=verdict.reason)
            if is_http and not activity.idled:
                await _answer(writer, _forbidden(verdict.reason))
            return
        try:
            up_r, up_w, peer = await self._dial(verdict)
        except Denied as e:
            self.log.write(proto="tcp", dst=where, verdict="deny", reason=str(e))
            if is_http:
                writer.write(_forbidden(str(e)))
            return
        activity.upstream = (up_w,)
        count = Counter()
        reason = verdict.reason
        try:
            if seen is not None and seen.kind == "http":
                await self._http(reader, writer, up_r, up_w, verdict.dial[0] if verdict.dial else "",
                                 first, count, activity, tls=False)
                return
            if seen is None:  # quiet: let the server speak, decide on the box's first bytes
                server = asyncio.create_task(_pipe(up_r, writer, count.receive, activity))
                first, seen = await self._peek(reader, activity, None)
                late = self._decide(name, ip, port, seen) if seen is not None else verdict
                if not late.allowed or (seen is not None and seen.kind == "http"):
                    reason = late.reason if not late.allowed else "HTTP after a quiet start"
                    server.cancel()
                    self.log.write(proto="tcp", dst=where, verdict="deny", reason=reason)
                    return
                up_w.write(first)
                count.send(len(first))
                await asyncio.gather(_pipe(reader, up_w, count.send, activity), server)
                return
            up_w.write(first)
            count.send(len(first))
            await asyncio.gather(_pipe(reader, up_w, count.send, activity),
                                 _pipe(up_r, writer, count.receive, activity))
        finally:
            await _close(up_w)
            self.log.write(proto="tcp", dst=where, ip=peer, verdict="allow",
                           reason=reason + (" (ended idle)" if activity.idled else ""),
                           sent=count.sent, received=count.received)

    def _decide(self, name: str | None, ip: ipaddress.IPv4Address, port: int, seen: Sniffed | None) -> Verdict:
        """The policy's verdict on what was read; fail-closed on what could not be."""
        if seen is not None and seen.kind == "bad":
            return Verdict(False, seen.reason)
        flow = Flow(port, name=name, ip=None if name else ip,
                    sni=seen.server_name if seen and seen.kind == "tls" else None,
                    http_host=seen.server_name if seen and seen.kind == "http" else None)
        verdict = self.policy.decide(flow)
        if not verdict.allowed:
            return verdict
        if seen is not None and seen.kind == "other" and name is not None and port in WEB_PORTS:
            return Verdict(False, f"neither TLS nor HTTP on {name}:{port} (a web port: only what "
                                  "can be read and checked is relayed)")
        if seen is not None and seen.kind == "http" and seen.head is not None:
            refusal, _, _ = self.secrets.substitute_fields(
                seen.head.target.encode(), seen.head.fields, None)
            if refusal:
                return Verdict(False, refusal)
        if name is None and self.policy.mode == "public" and ip in self.local_addresses():
            return Verdict(False, f"{ip} is an address of this host")
        return verdict

    async def _peek(self, reader: asyncio.StreamReader, activity: "Activity",
                    quiet: float | None) -> tuple[bytes, Sniffed | None]:
        """The flow's first bytes until they can be decided. QUIET: give up waiting for a
        first byte after that long (None: wait as long as the flow may idle)."""
        data, seen = b"", None
        while seen is None and len(data) < MAX_PEEK:
            try:
                wait = quiet if quiet is not None and not data else None
                chunk = await asyncio.wait_for(reader.read(MAX_PEEK - len(data)), wait)
            except asyncio.TimeoutError:
                break
            if not chunk:
                break
            activity.touch()
            data += chunk
            seen = sniff(data)
        return data, seen

    async def _dial(self, verdict: Verdict, tls_name: str | None = None
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        assert verdict.dial is not None
        host, port = verdict.dial
        if verdict.pinned is not None:
            candidates = [str(verdict.pinned)]
            if verdict.reason == "public":
                await self._refuse_denied_addresses(verdict.pinned, port)
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
            except OSError as e:
                raise Denied(f"cannot resolve {host}: {e}") from e
            candidates, why = [], f"{host} has no IPv4 address"
            local = self.local_addresses()
            for info in infos:
                ip = str(info[4][0])
                addr = ipaddress.IPv4Address(ip)
                refusal = self.policy.acceptable_answer(host, addr, port)
                if refusal is None and addr in local:
                    refusal = f"{host} resolved to {ip}, an address of this host"
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

    async def _refuse_denied_addresses(self, ip: ipaddress.IPv4Address, port: int) -> None:
        """`public`: a raw address is refused when a name in `deny` resolves to it now
        (dialling a denied name's address must not get around the name)."""
        loop = asyncio.get_running_loop()
        for rule in self.policy.deny:
            if not rule.name or rule.wildcard or not rule.matches_port(port):
                continue
            try:
                infos = await loop.getaddrinfo(rule.name, port, family=socket.AF_INET,
                                               type=socket.SOCK_STREAM)
            except OSError:
                continue
            if any(ipaddress.IPv4Address(str(i[4][0])) == ip for i in infos):
                raise Denied(f"{ip} is an address of {rule.name}, which is denied")

    # --- secrets: TLS terminated with the box's CA --------------------------------------
    async def _intercept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         name: str, port: int, verdict: Verdict, activity: "Activity") -> None:
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
        activity.upstream = (up_w,)
        count = Counter()
        try:
            await self._http(reader, writer, up_r, up_w, name, b"", count, activity, tls=True)
        finally:
            await _close(up_w)
            self.log.write(proto="tcp", dst=f"{name}:{port}", ip=peer, verdict="allow",
                           reason=verdict.reason + " (intercepted for secrets)",
                           sent=count.sent, received=count.received)

    # --- HTTP/1.1, request by request (keep-alive included) ---------------------------
    async def _http(self, c_r: asyncio.StreamReader, c_w: asyncio.StreamWriter,
                    u_r: asyncio.StreamReader, u_w: asyncio.StreamWriter, host: str,
                    first: bytes, count: Counter, activity: "Activity", tls: bool) -> None:
        """Each request's head is read strictly (http1.py) before h11 sees it, decided,
        its placeholders replaced (TLS to the secret's host only); its body is checked
        for placeholders; on flows that carry secrets the response is scrubbed."""
        upstream = h11.Connection(h11.CLIENT)
        pending = first
        scrub = self.secrets.scrubber(host) if tls else None

        async def fill(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    data = await reader.read(CHUNK)
                    if data:
                        activity.touch()
                    conn.receive_data(data)
                    continue
                return ev

        def to_upstream(ev: Any) -> None:
            out = upstream.send(ev)
            if out:
                u_w.write(out)
                count.send(len(out))

        try:
            while True:
                head = None
                while head is None:
                    try:
                        head = parse_request_head(pending)
                    except HeadError as e:
                        return await self._refuse_http(c_w, host, str(e))
                    if head is None:
                        data = await c_r.read(CHUNK)
                        if not data:
                            return
                        activity.touch()
                        pending += data
                if head.host != host:
                    return await self._refuse_http(c_w, host, f"HTTP Host {head.host!r} does not match "
                                                              f"{host!r}, the name the box resolved")
                refusal, fields, used = self.secrets.substitute_fields(
                    head.target.encode(), head.fields, host if tls else None)
                if refusal:
                    return await self._refuse_http(c_w, host, refusal)
                if used:
                    self.log.write(proto="http", dst=host, verdict="allow",
                                   reason=f"secret {', '.join(used)} substituted")
                box = h11.Connection(h11.SERVER)  # a fresh one per request: each head is ours to read
                box.receive_data(pending)
                request = await fill(box, c_r)
                if not isinstance(request, h11.Request):
                    return
                fields = [(k, v) for k, v in fields if k.lower() != b"expect"]
                if scrub:  # bodies the proxy can read, so that it can scrub them
                    fields = [(k, v) for k, v in fields if k.lower() != b"accept-encoding"]
                    fields.append((b"Accept-Encoding", b"identity"))
                if head.field(b"expect"):
                    c_w.write(box.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
                to_upstream(h11.Request(method=request.method, target=request.target, headers=fields))
                tail = b""
                while True:
                    body = await fill(box, c_r)
                    if isinstance(body, h11.Data):
                        window = tail + bytes(body.data)
                        if found := self.secrets.placeholders_in(window):
                            return await self._refuse_http(
                                c_w, host, f"placeholder of secret {', '.join(found)} in a request body", box)
                        tail = window[-PLACEHOLDER_SPAN:]
                        to_upstream(body)
                    elif isinstance(body, h11.EndOfMessage):
                        to_upstream(body)
                        break
                    else:
                        return
                await u_w.drain()
                if not await self._response(box, c_w, upstream, u_r, fill, count, scrub,
                                            head.method == "HEAD", head.version):
                    return
                if h11.MUST_CLOSE in (box.our_state, box.their_state, upstream.our_state,
                                      upstream.their_state):
                    return
                pending = bytes(box.trailing_data[0])
                upstream.start_next_cycle()
        except (h11.ProtocolError, ConnectionError, OSError, ssl.SSLError):
            return

    async def _response(self, box: h11.Connection, c_w: asyncio.StreamWriter, upstream: h11.Connection,
                        u_r: asyncio.StreamReader, fill: Callable[..., Any], count: Counter,
                        scrub: Scrubber | None, head_only: bool, version: str) -> bool:
        """Relays one response to the box (scrubbed when SCRUB); False: end the flow."""
        def to_box(ev: Any) -> None:
            out = box.send(ev)
            if out:
                c_w.write(out)
                count.receive(len(out))

        inflate: Any = None
        while True:
            resp = await fill(upstream, u_r)
            if isinstance(resp, h11.InformationalResponse):
                if resp.status_code != 100:
                    to_box(h11.InformationalResponse(status_code=resp.status_code,
                                                     headers=resp.headers, reason=resp.reason))
                continue
            if isinstance(resp, h11.Response):
                headers = list(resp.headers)
                if scrub:
                    headers = [(k, scrub.line(v)) for k, v in headers]
                    bodied = not head_only and resp.status_code not in (204, 304)
                    coding = b",".join(v for k, v in headers if k.lower() == b"content-encoding").strip().lower()
                    if bodied and coding not in (b"", b"identity"):
                        if coding not in (b"gzip", b"x-gzip", b"deflate"):
                            to_box(h11.Response(status_code=502, headers=[
                                (b"content-type", b"text/plain"), (b"connection", b"close")]))
                            to_box(h11.Data(data=b"a3s-box: the upstream sent a body encoded as " + coding
                                            + b", which the proxy cannot read to keep secrets out of it\n"))
                            to_box(h11.EndOfMessage())
                            await c_w.drain()
                            return False
                        inflate = zlib.decompressobj(wbits=47 if b"gzip" in coding else 15)
                    if bodied:  # scrubbing changes the length: re-framed
                        headers = [(k, v) for k, v in headers if k.lower() not in (
                            b"content-length", b"transfer-encoding", b"content-encoding")]
                        if version == "HTTP/1.1":
                            headers.append((b"transfer-encoding", b"chunked"))
                # re-made: h11 speaks HTTP/1.1 to the box whatever the upstream spoke
                to_box(h11.Response(status_code=resp.status_code, headers=headers, reason=resp.reason))
                await c_w.drain()
                continue
            if isinstance(resp, h11.Data):
                data = bytes(resp.data)
                if inflate is not None:
                    data = inflate.decompress(data)
                if scrub:
                    data = scrub.feed(data)
                if data:
                    to_box(h11.Data(data=data))
                await c_w.drain()
                continue
            if isinstance(resp, h11.EndOfMessage):
                if scrub and (rest := scrub.flush()):
                    to_box(h11.Data(data=rest))
                to_box(h11.EndOfMessage())
                await c_w.drain()
                return True
            return False

    async def _refuse_http(self, c_w: asyncio.StreamWriter, host: str, reason: str,
                           box: h11.Connection | None = None) -> None:
        self.log.write(proto="http", dst=host, verdict="deny", reason=reason)
        if box is not None and box.our_state is h11.SEND_RESPONSE:
            c_w.write(box.send(h11.Response(status_code=403, headers=[
                (b"content-type", b"text/plain"), (b"connection", b"close")])) or b"")
            c_w.write(box.send(h11.Data(data=f"a3s-box: {reason}\n".encode())) or b"")
            c_w.write(box.send(h11.EndOfMessage()) or b"")
        else:
            c_w.write(_forbidden(reason))
        await c_w.drain()

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
