"""What the first bytes of a flow say about where it wants to go. Sans-IO: bytes in,
an answer out; the proxy feeds it what it has read so far.

    sniff(b"\\x16\\x03\\x01...") -> Sniffed(kind="tls", server_name="api.example.com")
    sniff(b"GET / HTTP/1.1\\r\\nHost: a.example\\r\\n\\r\\n") -> Sniffed(kind="http", ...)
    sniff(b"\\x16\\x03")  -> None  (need more bytes)

The bytes come from the hostile guest: every length is checked against what is there,
nothing is trusted beyond MAX_PEEK, and a malformed hello is "other", never an exception.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MAX_PEEK = 16 << 10  # a ClientHello or request head larger than this is not sniffed

_HTTP_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"PATCH ", b"OPTIONS ",
                 b"CONNECT ", b"TRACE ")


@dataclass(frozen=True)
class Sniffed:
    kind: Literal["tls", "http", "other"]
    server_name: str | None = None  # TLS SNI or the HTTP Host (without a port)
    has_secret_marker: bool = False  # set by the proxy, not here


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


def _tls_server_name(data: bytes) -> str | None:
    rec = _Cursor(data)
    if rec.num(1) != 0x16:
        raise _Bad
    rec.take(2)  # record version
    length = rec.num(2)
    if length > MAX_PEEK:
        raise _Bad
    body = rec.sub(length) if len(data) >= 5 + length else None
    if body is None:
        raise _Short
    if body.num(1) != 0x01:  # ClientHello
        raise _Bad
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


def _http_host(data: bytes) -> str | None:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) >= MAX_PEEK:
            raise _Bad
        raise _Short
    lines = data[:end].split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    target = rest.partition(b" ")[0]
    if method == b"CONNECT":
        return _strip_port(target.decode("latin-1"))
    for line in lines[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == b"host":
            return _strip_port(value.strip().decode("latin-1"))
    return None


def _strip_port(hostport: str) -> str:
    host = hostport.rsplit(":", 1)[0] if hostport.count(":") == 1 else hostport
    return host.lower()


def sniff(data: bytes) -> Sniffed | None:
    """Sniffed once the start of the flow is recognised (or known not to be), None
    while more bytes could change the answer."""
    if not data:
        return None
    try:
        if data[0] == 0x16:
            return Sniffed("tls", _tls_server_name(data))
        if any(m.startswith(data[:len(m)]) for m in _HTTP_METHODS):
            if not any(data.startswith(m) for m in _HTTP_METHODS):
                return None  # a method still arriving
            return Sniffed("http", _http_host(data))
    except _Short:
        return None if len(data) < MAX_PEEK else Sniffed("other")
    except _Bad:
        return Sniffed("other")
    return Sniffed("other")
