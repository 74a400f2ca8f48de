"""disks/overlay.py, the one `qemu-img create -b`: an overlay appears whole or not at
all, threads making one at once do not trip over each other's temporary files, and a
failure says why."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from a3s_box.disks.overlay import OverlayError, create_overlay
from a3s_box.disks.qcow2 import backing_file


def test_threads_making_one_overlay_at_once_all_succeed(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * (1 << 20))
    dest = tmp_path / "overlay.qcow2"
    with ThreadPoolExecutor(6) as pool:  # a failure in any raises here
        made = list(pool.map(lambda _: create_overlay(base, dest, "raw"), range(6)))
    assert made == [dest] * 6 and backing_file(dest) == base
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.raw", "overlay.qcow2"]  # no temporary left


def test_a_failure_says_why_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OverlayError, match="qemu-img create: .*"):
        create_overlay(tmp_path / "missing.qcow2", tmp_path / "o.qcow2", "qcow2")
    assert list(tmp_path.iterdir()) == []
