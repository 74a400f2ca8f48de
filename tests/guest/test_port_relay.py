"""open_port: a TCP connection to a port in the box through the guest's `/.a3s/fs
connect`, against the real guest init (`--serve-stdio`) and servers this test starts on
127.0.0.1 (the agent's namespaces here share the host's network, as a box's loopback is
the agent's)."""
from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from a3s_box.errors import BoxError, PortError
from a3s_box.guest.protocol import Namespace
from a3s_box.guest.relay import HIGH_WATER, OnData, OnEnd, PortStream, open_port

if TYPE_CHECKING:
    from tests.guest.conftest import LocalGuest


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def echo_port() -> Iterator[int]:
    """Echoes each connection's bytes back as they come; closes at their end."""
    ls = socket.create_server(("127.0.0.1", 0))

    def serve(c: socket.socket) -> None:
        with c:
            while data := c.recv(1 << 16):
                c.sendall(data)

    def accept() -> None:
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    yield ls.getsockname()[1]
    ls.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _open(guest: LocalGuest, port: int, on_data: OnData | None = None, on_end: OnEnd | None = None) -> PortStream:
    return open_port(guest.client, "test", port, Namespace.AGENT, on_data=on_data, on_end=on_end,
                     applets=str(guest.state_dir))


def test_an_http_request_is_relayed(guest: LocalGuest, http_port: int) -> None:
    s = _open(guest, http_port)
    s.send(b"GET /x HTTP/1.0\r\nHost: box\r\n\r\n")
    s.close_send()
    answer = b"".join(s)
    assert answer.startswith(b"HTTP/1.0 200 ")
    assert answer.endswith(b"\r\n\r\nhello from /x")
    s.wait(5)


def test_callbacks_get_the_data_then_the_end(guest: LocalGuest, http_port: int) -> None:
    got: list[bytes] = []
    ends: list[BoxError | None] = []
    over = threading.Event()

    def end(e: BoxError | None) -> None:
        ends.append(e)
        over.set()
    s = _open(guest, http_port, on_data=got.append, on_end=end)
    s.send(b"GET /cb HTTP/1.1\r\nHost: box\r\nConnection: close\r\n\r\n")
    assert over.wait(10)
    assert ends == [None]
    assert b"".join(got).endswith(b"hello from /cb")
    with pytest.raises(RuntimeError):
        s.recv()


def test_a_refused_port_is_a_port_error(guest: LocalGuest) -> None:
    port = _free_port()
    ends: list[BoxError | None] = []
    s = _open(guest, port, on_end=ends.append)
    with pytest.raises(PortError, match=rf"^box test: port {port}: Connection refused$") as e:
        s.wait(10)
    assert (e.value.box, e.value.port) == ("test", port)
    assert ends == [e.value]
    with pytest.raises(PortError, match="Connection refused"):
        s.send(b"late")


def test_megabytes_both_ways_with_the_queue_paused_and_resumed(guest: LocalGuest, echo_port: int) -> None:
    data = os.urandom(3 * HIGH_WATER + 12345)
    s = _open(guest, echo_port)
    back = hashlib.sha256()
    size = [0]

    def read() -> None:
        for chunk in s:
            back.update(chunk)
            size[0] += len(chunk)
    reader = threading.Thread(target=read)
    for i in range(0, len(data), 100_000):
        s.send(data[i:i + 100_000])
    s.close_send()
    deadline = time.monotonic() + 10  # nobody reads yet: the queue fills, the relay is paused
    while not s._paused and time.monotonic() < deadline:
        time.sleep(0.01)
    assert s._paused
    reader.start()
    reader.join(60)
    assert not reader.is_alive()
    assert not s._paused
    assert size[0] == len(data)
    assert back.digest() == hashlib.sha256(data).digest()


def test_close_drops_the_connection_without_error(guest: LocalGuest, echo_port: int) -> None:
    ends: list[BoxError | None] = []
    over = threading.Event()

    def end(e: BoxError | None) -> None:
        ends.append(e)
        over.set()
    s = _open(guest, echo_port, on_end=end)
    s.send(b"ping")
    s.close()
    assert over.wait(10)
    assert ends == [None]


def test_bad_ports_are_refused_on_the_host(guest: LocalGuest) -> None:
    for port in (0, 65536, -1):
        with pytest.raises(ValueError, match="must be 1-65535"):
            _open(guest, port)
