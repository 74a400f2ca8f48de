"""The tree a build step's VM left, as its guest init streamed it (`/.a3s/tar L SINCE`,
a pax tar): read in userspace, so the host never mounts a disk a guest wrote.

Threat: everything in the stream is the hostile guest's (a RUN line downloads and runs
what it likes, as root). The host only parses it here, with Python's tarfile reader in
stream mode: names are checked (relative, no `..`, no NUL, each parent listed before
it, none twice), only files, folders, symlinks, hard links to earlier files, devices
and fifos are accepted, and nothing is made on the host but plain private data files
holding the contents of changed files, at most MAX_BYTES of them. Ownership, modes,
devices and links exist only as metadata that goes into the layer's tar.

Files the step did not touch (ctime before SINCE) come without content (`A3S.skipped`,
their size in `A3S.size`): the diff takes them as unchanged when their metadata match
the tree the step started from, and fails the build (never guesses) when they do not.
"""
from __future__ import annotations

import os
import posixpath
import stat
import tarfile
from pathlib import Path
from typing import IO, Any

from a3s_box.imagebuild.diff import Meta

_TYPES = {tarfile.REGTYPE: stat.S_IFREG, tarfile.AREGTYPE: stat.S_IFREG, tarfile.DIRTYPE: stat.S_IFDIR,
          tarfile.SYMTYPE: stat.S_IFLNK, tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
          tarfile.FIFOTYPE: stat.S_IFIFO}
MAX_ENTRIES = 2_000_000


class GuestTreeError(Exception):
    """The stream is not a tree the diff can trust (or it is larger than allowed)."""


class GuestTree:
    """A Tree (build/diff.py) read from a guest's stream; contents spooled in SPOOL."""

    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self._meta: dict[str, Meta] = {"": Meta(stat.S_IFDIR | 0o755, 0, 0, 0, 0.0, 0.0)}
        self._children: dict[str, set[str]] = {"": set()}
        self._content: dict[str, Path] = {}
        self._skipped: set[str] = set()
        self._first_link: dict[str, str] = {}
        self._linked: set[str] = set()  # files that other paths are hard links to

    # --- the Tree protocol ---------------------------------------------------------
    def names(self, rel: str) -> set[str]:
        return set(self._children.get(rel, ()))

    def meta(self, rel: str) -> Meta | None:
        return self._meta.get(rel)

    def open(self, rel: str) -> IO[bytes]:
        rel = self._first_link.get(rel, rel)
        if rel in self._skipped:
            raise GuestTreeError(f"{rel}: changed, yet the step's VM sent it as untouched")
        return open(self._content[rel], "rb")

    def link_key(self, rel: str) -> object | None:
        first = self._first_link.get(rel)
        return first if first is not None else (rel if rel in self._linked else None)

    # --- reading ---------------------------------------------------------------------
    @classmethod
    def read(cls, stream: IO[bytes] | Any, spool: Path, max_bytes: int) -> "GuestTree":
        tree = cls(spool)
        spool.mkdir(mode=0o700, exist_ok=True)
        total = 0
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for n, m in enumerate(tar):
                    if n >= MAX_ENTRIES:
                        raise GuestTreeError(f"more than {MAX_ENTRIES} entries")
                    total += tree._add(tar, m, n, max_bytes - total)
        except tarfile.TarError as e:
            raise GuestTreeError(f"not a tar stream: {e}") from e
        return tree

    def _add(self, tar: tarfile.TarFile, m: tarfile.TarInfo, n: int, room: int) -> int:
        rel = _name(m.name)
        parent, leaf = posixpath.split(rel)
        if rel in self._meta:
            raise GuestTreeError(f"{rel}: listed twice")
        parent_meta = self._meta.get(parent)
        if parent_meta is None or not stat.S_ISDIR(parent_meta.mode):
            raise GuestTreeError(f"{rel}: its folder was not listed before it")
        pax = m.pax_headers
        try:
            ctime = float(pax.get("ctime", "0"))
            mtime = float(pax.get("mtime", m.mtime))
        except ValueError:
            raise GuestTreeError(f"{rel}: a time that is not a number") from None
        spooled = 0
        if m.type == tarfile.LNKTYPE:
            first = _name(m.linkname)
            target = self._meta.get(self._first_link.get(first, first))
            if target is None or not stat.S_ISREG(target.mode):
                raise GuestTreeError(f"{rel}: a hard link to {first!r}, which is not an earlier file")
            first = self._first_link.get(first, first)
            self._first_link[rel] = first
            self._linked.add(first)
            self._meta[rel] = target
        elif m.type in _TYPES:
            kind = _TYPES[m.type]
            size = m.size
            if kind == stat.S_IFREG and pax.get("A3S.skipped") == "1":
                if m.size != 0 or not pax.get("A3S.size", "").isdigit():
                    raise GuestTreeError(f"{rel}: an untouched file with content or no size")
                size = int(pax["A3S.size"])
                self._skipped.add(rel)
            elif kind == stat.S_IFREG:
                if m.size > room:
                    raise GuestTreeError("the step left more changed data than its disk holds")
                src = tar.extractfile(m)
                assert src is not None
                dest = self.spool / str(n)
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                self._content[rel] = dest
                spooled = m.size
            elif m.size:
                raise GuestTreeError(f"{rel}: content on an entry that has none")
            self._meta[rel] = Meta(kind | (m.mode & 0o7777), m.uid, m.gid, size, mtime, ctime,
                                   (m.devmajor, m.devminor) if kind in (stat.S_IFCHR, stat.S_IFBLK) else (0, 0),
                                   m.linkname if kind == stat.S_IFLNK else "")
            if kind == stat.S_IFDIR:
                self._children[rel] = set()
        else:
            raise GuestTreeError(f"{rel}: an entry of type {m.type!r} cannot be in a layer")
        self._children[parent].add(leaf)
        return spooled


def _name(raw: str) -> str:
    name = raw.removeprefix("./").rstrip("/")
    parts = name.split("/")
    if not name or name.startswith("/") or "\0" in name or any(p in ("", ".", "..") for p in parts):
        raise GuestTreeError(f"{raw[:200]!r}: not a plain relative name")
    return name
