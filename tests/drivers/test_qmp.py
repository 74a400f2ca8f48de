"""The QMP codec without QEMU: whole lines only, partial lines kept, garbage refused."""
from __future__ import annotations

import json

import pytest

from a3s_box.drivers.qemu.qmp import QmpCodec


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
