"""A real small file system to fill: a tmpfs mounted for one test (root only; the CI
machine runs the tests as root), unmounted by the fixture's finalizer whatever happened.

    from tests.small_disk import SmallDisk, small_disk  # noqa: F401  (fixture import)

    def test_x(small_disk: SmallDisk) -> None:
        home = small_disk.mount(60 << 20)        # a 60 MiB file system, empty
        small_disk.fill(home, leave=1 << 20)     # now 1 MiB is free
"""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

CHUNK = 1 << 20


class SmallDisk:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.mounted: list[Path] = []

    def mount(self, size: int, name: str = "small") -> Path:
        """An empty tmpfs of SIZE bytes (rounded to pages) at BASE/NAME."""
        path = self.base / name
        path.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
        self.mounted.append(path)
        return path

    @staticmethod
    def free(path: Path) -> int:
        return shutil.disk_usage(path).free

    def fill(self, path: Path, leave: int = 0, name: str = ".filler") -> Path:
        """Write a file under PATH until LEAVE bytes (or less) are free; the file."""
        filler = path / name
        with open(filler, "ab") as f:
            while (room := self.free(path) - leave) > 0:
                try:
                    f.write(b"\0" * min(room, CHUNK))
                    f.flush()
                except OSError:
                    break
        return filler

    def files(self, path: Path) -> list[str]:
        """Every file and folder under PATH (relative, sorted): what a test says is left."""
        return sorted(str(p.relative_to(path)) for p in path.rglob("*"))

    def unmount_all(self) -> None:
        for path in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(path)], check=False)
        self.mounted.clear()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    disk = SmallDisk(tmp_path / "disks")
    try:
        yield disk
    finally:
        disk.unmount_all()
