"""TLS over a blocking socket through memory BIOs, for the proxy's HTTP flows (exchange.py).

Why not `ssl.SSLSocket`: OpenSSL reading a socket itself asks the kernel for each 16 KiB
record in two reads (its header, then its body) and writes each record with one call;
a 500 MiB download through an intercepted flow is then some 100,000 system calls a
side. Here the socket is read in gulps of up to 256 KiB into the incoming BIO and all
that one write of the application made goes out in one `sendall`, so a download costs
a system call per gulp. Certificates and names are checked by the same `SSLContext`s
as before (the box's leaf issuer, the host's trust store).

Threat: none of its own; what the peer sends is only ever given to OpenSSL. A peer that
stops mid-handshake or mid-record is bounded by the socket's timeout (the flow's idle
timeout).
"""
from __future__ import annotations

import socket
import ssl
from types import TracebackType
from typing import Protocol, cast

GULP = 256 << 10


class Stream(Protocol):
    """What exchange.py reads and writes: a plain socket or a TlsStream."""

    def recv_into(self, buffer: memoryview, nbytes: int, /) -> int: ...

    def sendall(self, data: bytes | memoryview, /) -> None: ...

    def fileno(self) -> int: ...

    def settimeout(self, value: float | None, /) -> None: ...

    def close(self) -> None: ...


class TlsStream:
    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_side: bool,
                 server_hostname: str | None = None) -> None:
        self.sock = sock
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_side=server_side,
                                     server_hostname=server_hostname)
        self._gulp = bytearray(GULP)

    @classmethod
    def accept(cls, sock: socket.socket, context: ssl.SSLContext) -> "TlsStream":
        """The server side of SOCK, handshake done (ssl.SSLError, OSError otherwise)."""
        stream = cls(sock, context, server_side=True)
        stream._handshake()
        return stream

    @classmethod
    def connect(cls, sock: socket.socket, context: ssl.SSLContext, server_hostname: str) -> "TlsStream":
        stream = cls(sock, context, server_side=False, server_hostname=server_hostname)
        stream._handshake()
        return stream

    def _handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise ConnectionResetError("the peer closed during the TLS handshake") from None
        self._flush()

    def _flush(self) -> None:
        if self._out.pending:
            self.sock.sendall(self._out.read())

    def _fill(self) -> bool:
        """One gulp from the socket into the incoming BIO; False at its end."""
        n = self.sock.recv_into(self._gulp)
        if not n:
            self._in.write_eof()
            return False
        self._in.write(memoryview(self._gulp)[:n])
        return True

    def pending(self) -> int:
        """Bytes readable without waiting: decrypted, or still encrypted in the BIO."""
        return self._tls.pending() + self._in.pending

    def recv_into(self, buffer: memoryview, nbytes: int, /) -> int:
        """Up to NBYTES into BUFFER, waiting for the first; 0 at the end of the stream."""
        while True:
            try:
                return cast(int, self._tls.read(nbytes, buffer))  # a count, given a buffer
            except ssl.SSLWantReadError:
                if self._in.eof or not self._fill():
                    return 0
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return 0

    def sendall(self, data: bytes | memoryview, /) -> None:
        view = memoryview(data)
        while view:
            n = self._tls.write(view)
            view = view[n:]
            self._flush()

    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, value: float | None, /) -> None:
        self.sock.settimeout(value)

    def close(self) -> None:
        """Says close_notify when the socket still takes it, then closes."""
        try:
            self._tls.unwrap()
        except (ssl.SSLError, ValueError):
            pass
        try:
            self._flush()
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> "TlsStream":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
