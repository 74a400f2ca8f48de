"""A clone's own RAM (drivers/qemu/clone_ram.py): the template file's data, at the same
offsets, in a memfd whose holes stay holes; a copy that cannot be made says so."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from a3s_box.drivers.qemu.clone_ram import clone_ram, data_extents

MiB = 1 << 20


def _sparse(path: Path, size: int, pieces: dict[int, bytes]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in pieces.items():
            f.seek(off)
            f.write(data)
    return path


def test_the_copy_holds_the_templates_data_and_no_more(tmp_path: Path) -> None:
    pieces = {0: b"boot" * 1024, 5 * MiB: os.urandom(3 * MiB), 31 * MiB: b"end" * 4096}
    ram = _sparse(tmp_path / "ram", 32 * MiB, pieces)
    with open(ram, "rb") as f:
        extents = list(data_extents(f.fileno(), 32 * MiB))
    assert [off for off, _ in extents] == sorted(off - off % 4096 for off in pieces)
    joined: list[int] = []
    fd = clone_ram(ram, 32 * MiB, lambda: joined.append(os.getpid()))
    try:
        assert joined == []  # JOIN ran in the child (the box's cgroup), not in the shim
        assert os.fstat(fd).st_size == 32 * MiB
        assert os.pread(fd, 32 * MiB, 0) == ram.read_bytes()
        assert os.fstat(fd).st_blocks * 512 < 6 * MiB  # the holes were not filled
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)


def test_a_copy_that_cannot_be_made_is_an_error(tmp_path: Path) -> None:
    small = _sparse(tmp_path / "small", MiB, {0: b"x"})
    with pytest.raises(OSError, match="smaller"):
        clone_ram(small, 2 * MiB, lambda: None)

    def refuse() -> None:
        raise OSError("cgroup full")
    with pytest.raises(OSError, match="failed"):
        clone_ram(small, MiB, refuse)
