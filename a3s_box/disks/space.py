"""Full disks: what a write that found no space becomes, and the check made before a
write whose size is known.

Every write to the host's disk (the home: blobs, unpacked roots, the state store, build
layers, templates; a `box cp` destination) either completes or is removed, and a full
disk is said as one DiskFullError naming the folder, its file system when that is
elsewhere, what was needed when known and what is free once the half-written file is
gone:

    image docker.io/x:1: no space left on /home/u/.local/share/a3s-box (needs 120 MiB more; 58 MiB free)

`require` refuses up front (a pull knows its layers' sizes from the manifest); the
`full_disk_is_error` context manager translates ENOSPC/EDQUOT at the edge that wrote.
Put it outside the clean-up of what was half written, so that the free space it
reports is what is left after it.
"""
from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from a3s_box.errors import DiskFullError

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
SQLITE_FULL = 13
SQLITE_IOERR_SHMSIZE = 4874  # WAL's shared-memory file could not grow: "out of space", says SQLite


def is_full(e: BaseException) -> bool:
    """An OSError of a full file system or quota, or SQLite's SQLITE_FULL ('database or
    disk is full') or SQLITE_IOERR_SHMSIZE (read from the error's code, so sqlite3 need
    not be imported here)."""
    if isinstance(e, OSError):
        return e.errno in FULL_ERRNOS
    code = getattr(e, "sqlite_errorcode", None)
    return isinstance(code, int) and (code & 0xFF == SQLITE_FULL or code == SQLITE_IOERR_SHMSIZE)


def _existing(path: Path) -> Path:
    """PATH or its nearest ancestor that exists (a folder not made yet is on its parent's disk)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on PATH's file system (None: unknown)."""
    try:
        return shutil.disk_usage(_existing(path)).free
    except OSError:
        return None


def mount_point(path: Path) -> Path:
    """The folder PATH's file system is mounted on."""
    p = _existing(path)
    try:
        while not os.path.ismount(p) and p != p.parent:
            p = p.parent
    except OSError:
        pass
    return p


def disk_full(what: str, where: Path, needed: int | None = None, free: int | None = None) -> DiskFullError:
    """The error for WHAT finding no space under folder WHERE, with the figures now."""
    where = where.absolute()
    mount = mount_point(where)
    return DiskFullError(what, str(where), mount=str(mount) if mount != where else None, needed=needed,
                         free=free_bytes(where) if free is None else free)


def require(what: str, where: Path, needed: int) -> None:
    """Refuse before writing NEEDED bytes under WHERE when its file system has less free."""
    free = free_bytes(where)
    if free is not None and needed > free:
        raise disk_full(what, where, needed=needed, free=free)


@contextmanager
def full_disk_is_error(what: str, where: Path, needed: int | None = None) -> Iterator[None]:
    """An ENOSPC/EDQUOT OSError or SQLITE_FULL inside becomes DiskFullError (from it);
    everything else passes as it is."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - all but a full disk is re-raised as it is
        if isinstance(e, DiskFullError) or not is_full(e):
            raise
        raise disk_full(what, where, needed) from e
