"""HTTP/1.1 through the egress proxy, request by request, on blocking sockets.

Threat (see policy.py and secrets.py): the guest writes every byte of each request and
wants a second reading of it upstream, or a secret's value back. Each request head is
read strictly (http1.py) before h11 sees it and must name the host the flow was decided
for; placeholders are replaced only where secrets.py allows (TLS to the secret's host),
a placeholder in a request body ends the flow with a 403, and on flows that carry secrets
the response (head and body, decoded from gzip/deflate when the upstream insists) is
scrubbed back to the placeholders before the guest sees a byte of it.

Why blocking sockets, one thread per flow (egress.py starts them, bounded by its per-box
flow cap): an intercepted download is TLS on both sides, and asyncio's streams and TLS
protocol cost more per record than the crypto itself. Here TLS (tls.py) decrypts and
encrypts with the GIL released; bench/network.py measures the difference. A socket
timeout is the flow's idle timeout: a read or write that makes no progress that long
raises TimeoutError, and the caller logs the flow as ended idle.
"""
from __future__ import annotations

import select
import socket
import ssl
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any

import h11

from a3s_box.network.http1 import HeadError, parse_request_head
from a3s_box.network.log import NetworkLog
from a3s_box.network.scan import ScanBuffer
from a3s_box.network.secrets import Scrubber, SecretBook
from a3s_box.network.tls import Stream, TlsStream

CHUNK = 256 << 10
PLACEHOLDER_SPAN = 128  # longer than any placeholder: the overlap kept between body chunks
LINGER, LINGER_BYTES = 2.0, 4 << 20  # after a refusal: how long, how much of the box's rest is drained


@dataclass
class Counter:
    sent: int = 0  # box -> upstream
    received: int = 0  # upstream -> box
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def send(self, n: int) -> None:
        with self.lock:
            self.sent += n

    def receive(self, n: int) -> None:
        with self.lock:
            self.received += n


def forbidden(reason: str) -> bytes:
    """A whole 403 answer, for a box whose request was never read by h11."""
    body = f"a3s-box: {reason}\n".encode()
    return (b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _content_length(resp: h11.Response) -> int | None:
    """The body's length when the upstream framed it by Content-Length alone (h11 has
    checked that every Content-Length agrees)."""
    fields = {k.lower(): v for k, v in resp.headers}
    if b"transfer-encoding" in fields or b"content-length" not in fields:
        return None
    return int(fields[b"content-length"])


def _keeps_alive(resp: h11.Response) -> bool:
    close = any(k.lower() == b"connection" and b"close" in v.lower() for k, v in resp.headers)
    return resp.http_version == b"1.1" and not close


def linger(sock: Stream) -> None:
    """After a last answer: drains what the box sent that was not read, for a while, as
    closing on unread bytes resets the flow and the box would lose the answer."""
    if isinstance(sock, socket.socket):  # TLS: the close_notify at its close ends it
        sock.shutdown(socket.SHUT_WR)
    sock.settimeout(LINGER)
    drained, sink = 0, memoryview(bytearray(CHUNK))
    while drained < LINGER_BYTES and (n := sock.recv_into(sink, CHUNK)):
        drained += n


class _End(Exception):
    """The flow ends here (refused, or a peer went away)."""


@dataclass
class Exchange:
    box: Stream  # a plain socket, or a TlsStream when intercepted
    upstream: Stream
    host: str  # the name the flow was decided for
    secrets: SecretBook
    log: NetworkLog
    count: Counter
    tls: bool  # only TLS flows to a secret's host get values (and are scrubbed)
    _polls: dict[int, select.poll] = field(default_factory=dict, repr=False)
    _scan: ScanBuffer = field(default_factory=lambda: ScanBuffer(CHUNK), repr=False)

    def run(self, first: bytes) -> None:
        """Serves requests until a peer closes or a request is refused. FIRST: what
        the proxy already read from the box. Raises TimeoutError when the flow idled."""
        pending: bytes | None = first
        scrub = self.secrets.scrubber(self.host) if self.tls else None
        try:
            while pending is not None:
                head = self._head(pending)
                if head is None:
                    return
                pending = self._one(head, scrub)
        except _End:
            return
        except (h11.ProtocolError, ConnectionError):
            return

    # --- reading ------------------------------------------------------------------
    def _fill(self, conn: h11.Connection, sock: Stream) -> Any:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(self._recv(sock))
                continue
            return ev

    def _recv(self, sock: Stream) -> bytes:
        return bytes(self._scan.view[:self._read(sock, CHUNK)])

    def _read(self, sock: Stream, limit: int) -> int:
        """Reads what SOCK has (waiting for its first bytes), up to LIMIT, into the
        flow's buffer; how much. Batched: a TLS socket gives one record (16 KiB) per read,
        and h11 and the scrubber cost per call. One buffer, reused: a fresh 256 KiB
        object per read is fresh pages from the allocator each time."""
        view = self._scan.view
        size = sock.recv_into(view, limit)
        if not size:
            return 0
        poll = self._polls.get(sock.fileno())
        if poll is None:
            poll = self._polls[sock.fileno()] = select.poll()
            poll.register(sock.fileno(), select.POLLIN)
        pending = sock.pending if isinstance(sock, TlsStream) else (lambda: 0)
        while size < limit and (pending() or poll.poll(0)):
            more = sock.recv_into(view[size:], limit - size)
            if not more:
                break
            size += more
        return size

    def _head(self, pending: bytes) -> tuple[Any, bytes] | None:
        while True:
            try:
                head = parse_request_head(pending)
            except HeadError as e:
                self._refuse(str(e))
            if head is not None:
                return head, pending
            data = self._recv(self.box)
            if not data:
                return None
            pending += data

    # --- one request and its response -------------------------------------------
    def _one(self, parsed: tuple[Any, bytes], scrub: Scrubber | None) -> bytes | None:
        """Relays one request and its response; the bytes of the next request already
        read, or None when the flow ends."""
        head, pending = parsed
        if head.host != self.host:
            self._refuse(f"HTTP Host {head.host!r} does not match {self.host!r}, the name the box resolved")
        refusal, fields, used = self.secrets.substitute_fields(
            head.target.encode(), head.fields, self.host if self.tls else None)
        if refusal:
            self._refuse(refusal)
        if used:
            self.log.write(proto="http", dst=self.host, verdict="allow", reason=f"secret {', '.join(used)} substituted")
        box = h11.Connection(h11.SERVER)  # fresh per request: each head is ours to read first
        upstream = h11.Connection(h11.CLIENT)
        box.receive_data(pending)
        request = self._fill(box, self.box)
        if not isinstance(request, h11.Request):
            return None
        fields = [(k, v) for k, v in fields if k.lower() != b"expect"]
        if scrub:  # bodies the proxy can read, so that it can scrub them
            fields = [(k, v) for k, v in fields if k.lower() != b"accept-encoding"]
            fields.append((b"Accept-Encoding", b"identity"))
        if head.field(b"expect"):
            self.box.sendall(box.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
        self._to_upstream(upstream, h11.Request(method=request.method, target=request.target, headers=fields))
        tail = b""
        while True:
            body = self._fill(box, self.box)
            if isinstance(body, h11.Data):
                window = tail + bytes(body.data)
                if found := self.secrets.placeholders_in(window):
                    self._refuse(f"placeholder of secret {', '.join(found)} in a request body", box)
                tail = window[-PLACEHOLDER_SPAN:]
                self._to_upstream(upstream, body)
            elif isinstance(body, h11.EndOfMessage):
                self._to_upstream(upstream, body)
                break
            else:
                return None
        if not self._response(box, upstream, scrub, head.method == "HEAD", head.version):
            return None
        if h11.MUST_CLOSE in (box.our_state, box.their_state, upstream.our_state, upstream.their_state):
            return None
        return bytes(box.trailing_data[0])

    def _to_upstream(self, upstream: h11.Connection, ev: Any) -> None:
        out = upstream.send(ev)
        if out:
            self.upstream.sendall(out)
            self.count.send(len(out))

    def _to_box(self, box: h11.Connection, ev: Any) -> None:
        out = box.send(ev)
        if out:
            self.box.sendall(out)
            self.count.receive(len(out))

    def _response(self, box: h11.Connection, upstream: h11.Connection, scrub: Scrubber | None,
                  head_only: bool, version: str) -> bool:
        """Relays one response to the box (scrubbed when SCRUB); False: end the flow."""
        inflate: Any = None
        while True:
            resp = self._fill(upstream, self.upstream)
            if isinstance(resp, h11.InformationalResponse):
                if resp.status_code != 100:
                    self._to_box(box, h11.InformationalResponse(status_code=resp.status_code,
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
                            self._to_box(box, h11.Response(status_code=502, headers=[
                                (b"content-type", b"text/plain"), (b"connection", b"close")]))
                            self._to_box(box, h11.Data(data=b"a3s-box: the upstream sent a body encoded as " + coding
                                                       + b", which the proxy cannot read to keep secrets out of it\n"))
                            self._to_box(box, h11.EndOfMessage())
                            return False
                        inflate = zlib.decompressobj(wbits=47 if b"gzip" in coding else 15)
                    if bodied:  # scrubbing changes the length: re-framed
                        headers = [(k, v) for k, v in headers if k.lower() not in (
                            b"content-length", b"transfer-encoding", b"content-encoding")]
                        if version == "HTTP/1.1":
                            headers.append((b"transfer-encoding", b"chunked"))
                # re-made: h11 speaks HTTP/1.1 to the box whatever the upstream spoke
                self._to_box(box, h11.Response(status_code=resp.status_code, headers=headers, reason=resp.reason))
                length = _content_length(resp) if scrub and inflate is None and not head_only else None
                if length is not None and resp.status_code not in (204, 304):
                    return self._scrubbed_body(box, upstream, scrub, length, version == "HTTP/1.1",
                                               _keeps_alive(resp))
                continue
            if isinstance(resp, h11.Data):
                data = bytes(resp.data)
                if inflate is not None:
                    data = inflate.decompress(data)
                if scrub:
                    data = scrub.feed(data)
                if data:
                    self._to_box(box, h11.Data(data=data))
                continue
            if isinstance(resp, h11.EndOfMessage):
                if scrub and (rest := scrub.flush()):
                    self._to_box(box, h11.Data(data=rest))
                self._to_box(box, h11.EndOfMessage())
                return True
            return False

    def _scrubbed_body(self, box: h11.Connection, upstream: h11.Connection, scrub: Any, length: int,
                       chunked: bool, keep_alive: bool) -> bool:
        """A body of LENGTH bytes relayed scrubbed without h11 in the way: read into the
        flow's buffer and sent from it when the scrubber finds nothing to hold or replace
        (a download is bytes in, bytes out, no copy of its own). False: end the flow."""
        def chunk(data: Any) -> None:
            if chunked:
                self.box.sendall(b"%x\r\n" % len(data))
            self.box.sendall(data)
            if chunked:
                self.box.sendall(b"\r\n")
            self.count.receive(len(data))

        early = upstream.trailing_data[0]  # what h11 read past the head
        if len(early) > length:  # bytes beyond the body: no next response is asked for
            keep_alive, early = False, early[:length]
        left = length - len(early)
        if early and (out := scrub.feed(early)):
            chunk(out)
        while left > 0:
            size = self._read(self.upstream, min(left, CHUNK))
            if not size:
                return False  # the upstream ended early: so does the box's body
            left -= size
            if scrub.passes(self._scan, size):
                chunk(self._scan.view[:size])
            elif out := scrub.feed(bytes(self._scan.view[:size])):
                chunk(out)
        if rest := scrub.flush():
            chunk(rest)
        self._to_box(box, h11.EndOfMessage())
        return keep_alive

    def _refuse(self, reason: str, box: h11.Connection | None = None) -> None:
        """Logs REASON, answers the box with a 403 and ends the flow."""
        self.log.write(proto="http", dst=self.host, verdict="deny", reason=reason)
        try:
            if box is not None and box.our_state is h11.SEND_RESPONSE:
                self.box.sendall(b"".join(box.send(ev) or b"" for ev in (
                    h11.Response(status_code=403, headers=[(b"content-type", b"text/plain"),
                                                           (b"connection", b"close")]),
                    h11.Data(data=f"a3s-box: {reason}\n".encode()), h11.EndOfMessage())))
            else:
                self.box.sendall(forbidden(reason))
            linger(self.box)
        except OSError:
            pass
        raise _End(reason)

