"""HTTP/1.x request heads from the guest, read strictly (RFC 9112). Sans-IO.

Threat: the guest writes every byte of the head and wants the proxy and the upstream to
read it differently: a Host the proxy checks and another the upstream serves (userinfo,
duplicates, a folded line, an absolute-form target), or a body the upstream frames
otherwise (Content-Length with Transfer-Encoding). Whatever RFC 9112 leaves to a
recipient's leniency is refused here, so what the proxy forwards has one reading.

    parse_request_head(b"GET / HTTP/1.1\\r\\nHost: a.example\\r\\n\\r\\n") -> RequestHead
    parse_request_head(b"GET / HTTP/1.1\\r\\nHo")   -> None       (more bytes may finish it)
    parse_request_head(b"\\r\\nGET / ...")           -> HeadError  (never a valid head)
    could_be_http(b"PROPF") -> True                               (a method still arriving)
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD = 16 << 10  # bytes of request line + header fields + the blank line
MAX_FIELDS = 100

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN_PREFIX = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}( |$)")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_VALUE = re.compile(rb"[\x21-\x7e\x80-\xff]([\x20-\x7e\x80-\xff\t]*[\x21-\x7e\x80-\xff])?|")
_REG_NAME = re.compile(r"[a-z0-9]([a-z0-9\-_]*[a-z0-9])?(\.[a-z0-9]([a-z0-9\-_]*[a-z0-9])?)*\.?")
_IPV6 = re.compile(r"\[[0-9a-f:.]+\]")


class HeadError(ValueError):
    """The bytes are not, and can never become, a head the proxy will forward."""


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str  # origin-form ("/path?q") or "*" (OPTIONS)
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    fields: tuple[tuple[bytes, bytes], ...]  # (name as sent, value without OWS), in order
    host: str  # the Host's name, lower case, without port or trailing dot
    port: int | None  # the Host's port, if it had one
    length: int  # bytes of the head, the blank line included

    def field(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.fields if k.lower() == name]


def could_be_http(data: bytes) -> bool:
    """Whether DATA may be the start of a request line (a method token, then a space)."""
    return bool(_TOKEN_PREFIX.match(data[:33]))


def parse_request_head(data: bytes) -> RequestHead | None:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) >= MAX_HEAD:
            raise HeadError(f"request head over {MAX_HEAD >> 10} KiB")
        if data and not could_be_http(data):
            raise HeadError("not an HTTP request line")
        if b"\n" in data.replace(b"\r\n", b""):
            raise HeadError("a bare LF or CR in the request head")
        return None
    if end + 4 > MAX_HEAD:
        raise HeadError(f"request head over {MAX_HEAD >> 10} KiB")
    head = data[:end]
    if b"\n" in head.replace(b"\r\n", b"") or b"\r" in head.replace(b"\r\n", b""):
        raise HeadError("a bare LF or CR in the request head")
    line, *lines = head.split(b"\r\n")
    method, target, version = _request_line(line)
    if len(lines) > MAX_FIELDS:
        raise HeadError(f"more than {MAX_FIELDS} header fields")
    fields = tuple(_field(raw) for raw in lines)
    host, port = _host(fields)
    _framing(fields, version)
    return RequestHead(method, target, version, fields, host, port, end + 4)


def _request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HeadError("the request line is not METHOD SP TARGET SP VERSION")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise HeadError("the method is not a token")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HeadError(f"unsupported version {version[:16]!r}")
    if not _TARGET.fullmatch(target):
        raise HeadError("the request target has spaces or control characters")
    if method == b"CONNECT":
        raise HeadError("CONNECT is not served (the proxy is transparent)")
    if target == b"*":
        if method != b"OPTIONS":
            raise HeadError("the asterisk target is for OPTIONS only")
    elif not target.startswith(b"/"):
        raise HeadError("only origin-form targets (/path) are accepted, not absolute-form")
    return method.decode(), target.decode(), version.decode()


def _field(raw: bytes) -> tuple[bytes, bytes]:
    if raw[:1] in (b" ", b"\t"):
        raise HeadError("a folded header line (obs-fold)")
    name, sep, value = raw.partition(b":")
    if not sep or not _TOKEN.fullmatch(name):
        raise HeadError(f"a malformed header field {name[:40]!r}")
    value = value.strip(b" \t")
    if not _VALUE.fullmatch(value):
        raise HeadError(f"header {name.decode()!r} has control characters")
    return name, value


def _host(fields: tuple[tuple[bytes, bytes], ...]) -> tuple[str, int | None]:
    said = [v for k, v in fields if k.lower() == b"host"]
    if len(said) != 1:
        raise HeadError("a request needs exactly one Host" if not said else "more than one Host")
    text = said[0].decode("latin-1").lower()
    host, port = text, None
    if text.startswith("["):
        close = text.find("]")
        host, rest = text[:close + 1], text[close + 1:]
        if not _IPV6.fullmatch(host) or (rest and not rest.startswith(":")):
            raise HeadError(f"Host {text!r} is not host[:port]")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_ = text.partition(":")
        port_text = port_text_ if sep else None
        if not _REG_NAME.fullmatch(host):
            raise HeadError(f"Host {text!r} is not host[:port]")
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536 or len(port_text) > 5:
            raise HeadError(f"Host {text!r} has no valid port")
        port = int(port_text)
    return host.rstrip("."), port


def _framing(fields: tuple[tuple[bytes, bytes], ...], version: str) -> None:
    lengths = [v for k, v in fields if k.lower() == b"content-length"]
    codings = [v for k, v in fields if k.lower() == b"transfer-encoding"]
    if lengths and codings:
        raise HeadError("both Content-Length and Transfer-Encoding")
    if len(lengths) > 1:
        raise HeadError("more than one Content-Length")
    if lengths and (not lengths[0].isdigit() or len(lengths[0]) > 18):
        raise HeadError("Content-Length is not a number")
    if codings:
        if version == "HTTP/1.0":
            raise HeadError("Transfer-Encoding in an HTTP/1.0 request")
        if len(codings) > 1 or codings[0].lower() != b"chunked":
            raise HeadError("Transfer-Encoding other than a single chunked")
