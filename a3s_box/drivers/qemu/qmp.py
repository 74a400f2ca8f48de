"""A small QMP client: the QEMU Machine Protocol over the box's qmp.sock.

The protocol core is sans-IO (`QmpCodec`: bytes in, greeting/replies/events out); the
thin `Qmp` class owns the socket. Used for pause/resume and snapshot save/restore.

    with Qmp(path, box="demo.db") as q:
        q.command("stop")
        q.command("migrate-set-capabilities", capabilities=[...])
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

from a3s_box.errors import DriverError
from a3s_box.polling import PathWatch, Poll

MAX_LINE = 1 << 20  # QEMU's replies are small; a longer line is not QMP


class QmpError(DriverError):
    """QEMU refused a command, or its QMP socket misbehaved."""


@dataclass
class QmpCodec:
    """Sans-IO: feed bytes, take JSON messages (one per line)."""

    buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self.buf += data
        out = []
        while (nl := self.buf.find(b"\n")) >= 0:
            line, self.buf = bytes(self.buf[:nl]), self.buf[nl + 1:]
            if line.strip():
                msg = json.loads(line)
                if isinstance(msg, dict):
                    out.append(msg)
        if len(self.buf) > MAX_LINE:
            raise ValueError("QMP line too long")
        return out

    @staticmethod
    def encode(command: str, **arguments: Any) -> bytes:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        return json.dumps(msg).encode() + b"\n"


class Qmp:
    def __init__(self, path: Path | str, box: str, timeout: float = 10.0) -> None:
        self.box = box
        self.timeout = timeout
        self.codec = QmpCodec()
        self.events: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        with PathWatch(path) as watch:  # QEMU makes the socket as it starts
            while True:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                try:
                    self.sock.connect(str(path))
                    break
                except OSError as e:
                    self.sock.close()
                    if time.monotonic() >= deadline:
                        raise QmpError(box, f"cannot reach QEMU's QMP socket {path}: {e}") from e
                    if os.path.exists(path):  # bound, not yet listening: a moment
                        time.sleep(0.001)
                    else:
                        watch.wait(deadline)
        self.sock.settimeout(timeout)
        greeting = self._next()
        if "QMP" not in greeting:
            raise QmpError(box, f"QMP: unexpected greeting {greeting}")
        self.command("qmp_capabilities")

    def _next(self) -> dict[str, Any]:
        while not self.pending:
            try:
                data = self.sock.recv(65536)
            except OSError as e:
                raise QmpError(self.box, f"QMP: {e}") from e
            if not data:
                raise QmpError(self.box, "QMP: QEMU closed the connection")
            try:
                self.pending += self.codec.feed(data)
            except ValueError as e:
                raise QmpError(self.box, f"QMP: {e}") from e
        return self.pending.pop(0)

    def command(self, name: str, **arguments: Any) -> Any:
        self.sock.sendall(QmpCodec.encode(name, **arguments))
        return self._reply(name)

    def pass_fd(self, name: str, fd: int) -> None:
        """Hand QEMU an open file or socket as NAME (`getfd`), for `fd:NAME` URIs: a
        sandboxed QEMU can neither open host paths nor spawn `exec:` helpers."""
        socket.send_fds(self.sock, [QmpCodec.encode("getfd", fdname=name)], [fd])
        self._reply("getfd")

    def add_fd(self, fd: int) -> int:
        """Put an open file in a new fd set (`add-fd`); its id, for /dev/fdset/ID paths."""
        socket.send_fds(self.sock, [QmpCodec.encode("add-fd")], [fd])
        return int(self._reply("add-fd")["fdset-id"])

    def _reply(self, name: str) -> Any:
        while True:
            msg = self._next()
            if "event" in msg:
                self.events.append(msg)
                continue
            if "error" in msg:
                err = msg["error"]
                raise QmpError(self.box, f"QEMU refused {name}: {err.get('desc', err)}")
            if "return" in msg:
                return msg["return"]

    def wait_event(self, event: str, until: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """Block until QEMU sends EVENT with data UNTIL accepts (events that came with
        earlier replies count); that data. Other events are dropped."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                while self.events:
                    ev = self.events.pop(0)
                    data = ev.get("data") or {}
                    if ev.get("event") == event and isinstance(data, dict) and until(data):
                        return data
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QmpError(self.box, f"QMP: no {event} event after {timeout:g}s")
                self.sock.settimeout(remaining)
                try:
                    msg = self._next()
                except QmpError as e:
                    if time.monotonic() >= deadline:  # the socket's timeout: ours
                        raise QmpError(self.box, f"QMP: no {event} event after {timeout:g}s") from e
                    raise
                if "event" in msg:
                    self.events.append(msg)
        finally:
            self.sock.settimeout(self.timeout)

    def wait_status(self, done: tuple[str, ...], timeout: float, query: str = "query-migrate",
                    key: str = "status") -> str:
        """Poll QUERY until its KEY is one of DONE (or 'failed'); the status reached."""
        deadline = time.monotonic() + timeout
        poll = Poll()
        while True:
            reply = self.command(query)
            status = str(reply.get(key, ""))
            if status in done:
                return status
            if status in ("failed", "cancelled"):
                why = reply.get("error-desc")
                raise QmpError(self.box, f"{query}: {status}" + (f" ({why})" if why else ""))
            if time.monotonic() >= deadline:
                raise QmpError(self.box, f"{query}: still {status or 'nothing'} after {timeout:.0f}s")
            poll.wait()

    def wait_until_not(self, query: str, value: str, timeout: float, key: str = "status") -> str:
        """Poll QUERY until its KEY is no longer VALUE; the new value."""
        deadline = time.monotonic() + timeout
        poll = Poll()
        while True:
            got = str(self.command(query).get(key, ""))
            if got != value:
                return got
            if time.monotonic() >= deadline:
                raise QmpError(self.box, f"{query}: still {value} after {timeout:.0f}s")
            poll.wait()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Qmp":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
