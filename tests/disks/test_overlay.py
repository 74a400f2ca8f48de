"""disks/overlay.py, the one `qemu-img create -b`: an overlay appears whole or not at
all, threads making one at once do not trip over each other's temporary files, and a
failure says why."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from a3s_box.disks.overlay import OverlayError, create_overlay
from a3s_box.disks.qcow2 import backing_file


def test_threads_making_one_overlay_at_once_all_succeed(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * (1 << 20))
    dest = tmp_path / "overlay.qcow2"
    errors: list[BaseException] = []

    def make() -> None:
        try:
            create_overlay(base, dest, "raw")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=make) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and backing_file(dest) == base
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.raw", "overlay.qcow2"]  # no temporary left


def test_a_failure_says_why_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OverlayError, match="qemu-img create: .*"):
        create_overlay(tmp_path / "missing.qcow2", tmp_path / "o.qcow2", "qcow2")
    assert list(tmp_path.iterdir()) == []
