"""A newc ("070701") cpio writer: the format the Linux kernel unpacks as an initramfs.

Pure: entries in, bytes out. Written here rather than shelling out to cpio so the
archive is byte-for-byte reproducible (fixed owners, times and inode numbers).
"""
from __future__ import annotations

import gzip
import stat
from collections.abc import Iterable
from dataclasses import dataclass

TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    path: str  # inside the archive, without a leading "/"
    mode: int  # full st_mode: file type bits | permissions
    data: bytes = b""  # file contents, or the target of a symlink

    @classmethod
    def dir(cls, path: str, perm: int = 0o755) -> "Entry":
        return cls(path, stat.S_IFDIR | perm)

    @classmethod
    def file(cls, path: str, data: bytes, perm: int = 0o644) -> "Entry":
        return cls(path, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, path: str, target: str) -> "Entry":
        return cls(path, stat.S_IFLNK | 0o777, target.encode())


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _member(ino: int, mode: int, name: str, data: bytes) -> bytes:
    raw_name = name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(mode) else 1
    # magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
    # rdevmajor, rdevminor, namesize, check
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(raw_name), 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields)
    return head + raw_name + _pad4(len(head) + len(raw_name)) + data + _pad4(len(data))


def newc(entries: Iterable[Entry]) -> bytes:
    """The archive: entries in the given order (parents before children), then the trailer."""
    parts: list[bytes] = []
    ino = 0
    for ino, e in enumerate(entries, start=1):
        if e.path.startswith("/") or not e.path:
            raise ValueError(f"cpio entry path must be relative and non-empty: {e.path!r}")
        parts.append(_member(ino, e.mode, e.path, e.data))
    parts.append(_member(ino + 1, 0, TRAILER, b""))
    return b"".join(parts)


def gzip_newc(entries: Iterable[Entry]) -> bytes:
    # mtime=0: the same entries always give the same bytes
    return gzip.compress(newc(entries), compresslevel=6, mtime=0)
