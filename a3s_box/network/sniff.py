"""What the first bytes of a flow say about where it wants to go. Sans-IO: bytes in,
an answer out; the proxy feeds it what it has read so far.

    sniff(b"\\x16\\x03\\x01...") -> Sniffed(kind="tls", server_name="api.example.com")
    sniff(b"GET / HTTP/1.1\\r\\nHost: a.example\\r\\n\\r\\n") -> Sniffed(kind="http", ...)
    sniff(b"\\x16\\x03")  -> None  (need more bytes)

The bytes come from the hostile guest: every length is checked against what is there,
nothing is trusted beyond MAX_PEEK, a ClientHello is reassembled across records, HTTP
heads are read strictly (http1.py), and what starts as TLS or HTTP but cannot be read
is "bad" (the proxy refuses it), never an exception and never "other".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from a3s_box.network.http1 import MAX_HEAD, HeadError, RequestHead, could_be_http, parse_request_head

MAX_PEEK = MAX_HEAD  # a ClientHello or request head larger than this is refused


@dataclass(frozen=True)
class Sniffed:
    kind: Literal["tls", "http", "bad", "other"]
    server_name: str | None = None  # TLS SNI or the HTTP Host (without a port)
    head: RequestHead | None = None  # "http": the first request's head, read strictly
    reason: str = ""  # "bad": why


class _Short(Exception):
    """Not enough bytes yet."""


class _Bad(Exception):
    """Not what it claimed to be."""


class _Cursor:
    def __init__(self, data: bytes, end: int | None = None) -> None:
        self.data, self.pos = data, 0
        self.end = len(data) if end is None else end

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise _Short if self.end == len(self.data) else _Bad
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def num(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def sub(self, n: int) -> "_Cursor":
        if self.pos + n > self.end:
            raise _Short if self.end == len(self.data) else _Bad
        c = _Cursor(self.data, self.pos + n)
        c.pos = self.pos
        self.pos += n
        return c


def _client_hello(data: bytes) -> bytes:
    """The ClientHello handshake message, reassembled from as many records as it spans
    (a hello split over records must not slip past unread)."""
    pos, message = 0, b""
    while True:
        if len(data) - pos < 5:
            raise _Short
        kind, major, length = data[pos], data[pos + 1], int.from_bytes(data[pos + 3:pos + 5], "big")
        if kind != 0x16 or major != 0x03 or length == 0 or length > MAX_PEEK:
            raise _Bad
        if len(data) - pos - 5 < length:
            raise _Short
        message += data[pos + 5:pos + 5 + length]
        pos += 5 + length
        if len(message) >= 4:
            if message[0] != 0x01:  # ClientHello
                raise _Bad
            need = 4 + int.from_bytes(message[1:4], "big")
            if need > MAX_PEEK:
                raise _Bad
            if len(message) >= need:
                return message[:need]


def _tls_server_name(data: bytes) -> str | None:
    message = _client_hello(data)
    try:
        return _server_name(message)
    except _Short:  # the message is whole: a length inside it lies
        raise _Bad from None


def _server_name(message: bytes) -> str | None:
    body = _Cursor(message)
    body.take(1)
    hello = body.sub(body.num(3))
    hello.take(2 + 32)  # client version, random
    hello.take(hello.num(1))  # session id
    hello.take(hello.num(2))  # cipher suites
    hello.take(hello.num(1))  # compression methods
    if hello.pos == hello.end:
        return None  # no extensions
    exts = hello.sub(hello.num(2))
    while exts.pos < exts.end:
        kind, ext = exts.num(2), exts.sub(exts.num(2))
        if kind != 0:  # server_name
            continue
        names = ext.sub(ext.num(2))
        while names.pos < names.end:
            name_type, name = names.num(1), names.take(names.num(2))
            if name_type == 0:
                try:
                    return name.decode("ascii").lower()
                except UnicodeDecodeError:
                    raise _Bad from None
        return None
    return None


def sniff(data: bytes) -> Sniffed | None:
    """Sniffed once the start of the flow is recognised (or known not to be), None
    while more bytes could change the answer. "bad": it started as TLS or HTTP but
    is not a hello or head the proxy can read (too big, malformed): refused, never
    relayed; "other": bytes that can be neither."""
    if not data:
        return None
    if data[0] == 0x16:
        try:
            return Sniffed("tls", _tls_server_name(data))
        except _Short:
            return None if len(data) < MAX_PEEK else Sniffed("bad", reason="TLS ClientHello over 16 KiB")
        except _Bad:
            return Sniffed("bad", reason="a malformed TLS ClientHello")
    if data[:1] in (b"\r", b"\n", b" ", b"\t"):  # lenient servers skip these before a request
        return Sniffed("bad", reason="whitespace before the request line")
    if could_be_http(data):
        try:
            head = parse_request_head(data)
        except HeadError as e:
            return Sniffed("bad", reason=str(e))
        return None if head is None else Sniffed("http", head.host, head=head)
    return Sniffed("other")
