"""The QMP codec without QEMU: whole lines only, partial lines kept, garbage refused; and
the client against a real QEMU (no machine) for what needs one: its events."""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from a3s_box.drivers.qemu.qmp import Qmp, QmpCodec, QmpError


def test_messages_come_out_whole_whatever_the_chunking() -> None:
    c = QmpCodec()
    raw = b'{"QMP": {"version": {}}}\n{"return": {}}\n{"event": "STOP"}\n'
    got = []
    for i in range(len(raw)):
        got += c.feed(raw[i:i + 1])
    assert got == [{"QMP": {"version": {}}}, {"return": {}}, {"event": "STOP"}]


def test_commands_are_one_json_line() -> None:
    line = QmpCodec.encode("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared",
                                                                    "state": True}])
    assert line.endswith(b"\n") and json.loads(line)["execute"] == "migrate-set-capabilities"
    assert json.loads(QmpCodec.encode("stop")) == {"execute": "stop"}


def test_an_endless_line_is_refused() -> None:
    with pytest.raises(ValueError):
        QmpCodec().feed(b"x" * (2 << 20))


@pytest.fixture
def qemu_qmp(tmp_path: Path) -> Iterator[Path]:
    """A real QEMU with no machine, its QMP socket at the returned path."""
    sock = tmp_path / "qmp.sock"
    proc = subprocess.Popen(["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
                             "-S", "-qmp", f"unix:{sock},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield sock
    finally:
        proc.kill()
        proc.wait()


def test_an_event_qemu_sends_ends_the_wait(qemu_qmp: Path) -> None:
    with Qmp(qemu_qmp, "t", timeout=10.0) as q:
        q.command("cont")  # RESUME comes after the command's reply, or with it
        data = q.wait_event("RESUME", lambda d: True, 10.0)
        assert data == {} and q.command("query-status")["status"] == "running"
        q.command("stop")
        with pytest.raises(QmpError, match="no RESUME event"):  # STOP came, and is not what was asked
            q.wait_event("RESUME", lambda d: True, 0.3)
