"""ttrpc's framing, sans-IO: bytes in, messages out; messages in, bytes out. A thin
loop owns the socket (containerd's shim API speaks ttrpc over a unix socket).

    header   length u32 BE (of the payload) | stream id u32 BE | type u8 | flags u8
    types    1 request, 2 response, 3 data (streams)
    payload  a protobuf: ttrpc.Request for requests, ttrpc.Response for responses

Client-initiated streams have odd ids. A message announcing more than MAX_LENGTH is a
protocol error: the peer is cut off (ttrpc does the same) rather than buffered.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

HEADER = struct.Struct(">IIBB")
HEADER_LENGTH = HEADER.size  # 10
MAX_LENGTH = 4 << 20
TYPE_REQUEST, TYPE_RESPONSE, TYPE_DATA = 1, 2, 3
FLAG_REMOTE_CLOSED, FLAG_REMOTE_OPEN, FLAG_NO_DATA = 1, 2, 4


class TtrpcError(Exception):
    """The peer broke ttrpc's framing; the connection must be closed."""


@dataclass(frozen=True)
class Message:
    stream: int
    type: int
    payload: bytes
    flags: int = 0


def encode(m: Message) -> bytes:
    if len(m.payload) > MAX_LENGTH:
        raise TtrpcError(f"a message of {len(m.payload)} bytes exceeds ttrpc's {MAX_LENGTH}")
    return HEADER.pack(len(m.payload), m.stream, m.type, m.flags) + m.payload


@dataclass
class Reader:
    """Incremental decoder of a ttrpc byte stream."""

    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while len(self._buf) >= HEADER_LENGTH:
            length, stream, type_, flags = HEADER.unpack_from(self._buf)
            if length > MAX_LENGTH:
                raise TtrpcError(f"the peer announced a message of {length} bytes (at most {MAX_LENGTH})")
            if type_ not in (TYPE_REQUEST, TYPE_RESPONSE, TYPE_DATA):
                raise TtrpcError(f"unknown ttrpc message type {type_}")
            end = HEADER_LENGTH + length
            if len(self._buf) < end:
                break
            out.append(Message(stream, type_, bytes(self._buf[HEADER_LENGTH:end]), flags))
            del self._buf[:end]
        return out


def request(stream: int, service: str, method: str, payload: bytes, timeout_ns: int = 0,
            metadata: dict[str, str] | None = None) -> Message:
    from a3s_box.k8s.proto import ttrpc_pb2

    req: Any = ttrpc_pb2.Request(service=service, method=method, payload=payload, timeout_nano=timeout_ns)  # type: ignore[attr-defined]
    for k, v in sorted((metadata or {}).items()):
        req.metadata.add(key=k, value=v)
    return Message(stream, TYPE_REQUEST, req.SerializeToString())


def response(stream: int, payload: bytes = b"", code: int = 0, message: str = "") -> Message:
    """A reply; CODE a gRPC status code (0 OK, 5 NOT_FOUND, 12 UNIMPLEMENTED, ...)."""
    from a3s_box.k8s.proto import ttrpc_pb2

    resp: Any = ttrpc_pb2.Response(payload=payload)  # type: ignore[attr-defined]
    if code:
        resp.status.code = code
        resp.status.message = message
    return Message(stream, TYPE_RESPONSE, resp.SerializeToString())


def parse_request(m: Message) -> Any:
    from google.protobuf.message import DecodeError

    from a3s_box.k8s.proto import ttrpc_pb2

    req: Any = ttrpc_pb2.Request()  # type: ignore[attr-defined]
    try:
        req.ParseFromString(m.payload)
    except DecodeError as e:
        raise TtrpcError(f"stream {m.stream}: not a ttrpc request ({e})") from e
    return req


def parse_response(m: Message) -> Any:
    from google.protobuf.message import DecodeError

    from a3s_box.k8s.proto import ttrpc_pb2

    resp: Any = ttrpc_pb2.Response()  # type: ignore[attr-defined]
    try:
        resp.ParseFromString(m.payload)
    except DecodeError as e:
        raise TtrpcError(f"stream {m.stream}: not a ttrpc response ({e})") from e
    return resp
