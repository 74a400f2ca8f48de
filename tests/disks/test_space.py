"""What a full disk is said as (pinned text), what counts as one, and the check made
before a write of a known size, on a real small tmpfs."""
from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from a3s_box.api.problems import status_of
from a3s_box.disks import space
from a3s_box.errors import DiskFullError
from tests.small_disk import SmallDisk, small_disk  # noqa: F401  (the fixture)

MiB = 1 << 20


@pytest.mark.parametrize(("kw", "text"), [
    (dict(needed=120 * MiB, free=58 * MiB), "image x:1: no space left on /h/a3s (needs 120 MiB more; 58 MiB free)"),
    (dict(free=58 * MiB + 1), "image x:1: no space left on /h/a3s (58 MiB free)"),
    (dict(needed=MiB + 1, free=MiB - 1), "image x:1: no space left on /h/a3s (needs 2 MiB more; 1023 KiB free)"),
    (dict(needed=3 << 30, free=(1 << 30) - 1), "image x:1: no space left on /h/a3s (needs 3.0 GiB more; 1023 MiB free)"),
    (dict(mount="/h", free=0), "image x:1: no space left on /h/a3s (file system /h; 0 KiB free)"),
    (dict(), "image x:1: no space left on /h/a3s"),
])
def test_the_message_names_the_folder_and_the_figures(kw: dict[str, object], text: str) -> None:
    assert str(DiskFullError("image x:1", "/h/a3s", **kw)) == text  # type: ignore[arg-type]


def test_what_counts_as_a_full_disk() -> None:
    assert space.is_full(OSError(errno.ENOSPC, "x")) and space.is_full(OSError(errno.EDQUOT, "x"))
    assert not space.is_full(OSError(errno.EIO, "x")) and not space.is_full(ValueError("x"))
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13  # what sqlite3 sets on SQLITE_FULL
    assert space.is_full(full)
    shm = sqlite3.OperationalError("disk I/O error")
    shm.sqlite_errorcode = 4874  # SQLITE_IOERR_SHMSIZE: WAL's shared memory could not grow
    assert space.is_full(shm)
    assert not space.is_full(sqlite3.OperationalError("database is locked"))


def test_a_full_disk_is_507_in_the_api() -> None:
    assert status_of(DiskFullError("x", "/h")) == 507


def test_require_refuses_what_cannot_fit_and_the_translation_keeps_other_errors(
        small_disk: SmallDisk) -> None:
    disk = small_disk.mount(4 * MiB)
    space.require("it", disk / "not-yet" / "made", 3 * MiB)  # fits: nothing raised
    with pytest.raises(DiskFullError) as err:
        space.require("it", disk, 5 * MiB)
    assert str(err.value) == f"it: no space left on {disk} (needs 5 MiB more; 4 MiB free)"
    assert space.mount_point(disk / "a" / "b") == disk

    with pytest.raises(DiskFullError) as err:
        with space.full_disk_is_error("writing", disk / "sub"):
            (disk / "big").write_bytes(b"x" * 5 * MiB)
    assert isinstance(err.value.__cause__, OSError)
    assert str(err.value).startswith(f"writing: no space left on {disk}/sub (file system {disk}; ")
    with pytest.raises(FileNotFoundError):
        with space.full_disk_is_error("writing", disk):
            (disk / "no" / "such").write_bytes(b"")
