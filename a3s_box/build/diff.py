"""A build step's file-system change as an OCI layer: the tree after the step (UPPER,
the RUN VM's disk mounted read-only, or a folder a COPY filled) compared with the tree
before it (LOWER, the parent image's unpacked root).

A path is in the layer when it is new, changed type, or was touched during the step:
its ctime is at or after TOUCHED_AFTER (the moment before the step's VM booted; the
base it booted from was written earlier, so nothing the step left alone can be newer),
or its mode, owner, size, mtime or link target differ. A path gone from UPPER becomes
a whiteout (`.wh.NAME`); a folder whose every earlier entry is gone becomes opaque
(`.wh..wh..opq`) with what it holds now. Hard links within the layer stay hard links.

Paths the guest itself owns at run time (the guest init's /.a3s, the mount points
/proc /sys /dev, the files it writes for the network) never enter a layer: whatever
the lower tree had there stays.

The tar is deterministic for the same trees (sorted names, numeric owners, no user
names), so an unchanged step gives the same layer digest."""
from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
# The guest's own at run time (its init's tmpfs on /.a3s, mount points, the files it
# writes for the network): never part of a layer
GUEST_OWNED = frozenset({".a3s", "proc", "sys", "dev", "lost+found", "etc/resolv.conf", "etc/hosts",
                         "etc/hostname", "run/a3s", "run/a3s-oom", "run/a3s-ctr"})
# Folders the guest init makes (or chmods) at every boot: their own entry is in a layer
# only when what is in them changed
BOOT_MADE = frozenset({"tmp"})


@dataclass(frozen=True)
class Change:
    kind: str  # "add" (new or changed: the entry as UPPER has it), "delete", "opaque"
    path: str  # relative, POSIX


def _lstat(p: str) -> os.stat_result | None:
    try:
        return os.lstat(p)
    except FileNotFoundError:
        return None


def _names(d: str) -> set[str]:
    try:
        return set(os.listdir(d))
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _same(a: os.stat_result, b: os.stat_result, a_path: str, b_path: str) -> bool:
    if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode) or a.st_mode != b.st_mode:
        return False
    if (a.st_uid, a.st_gid) != (b.st_uid, b.st_gid):
        return False
    if stat.S_ISLNK(a.st_mode):
        return os.readlink(a_path) == os.readlink(b_path)
    if stat.S_ISDIR(a.st_mode):
        return True  # a folder's own mtime moves with its entries: those are compared instead
    if stat.S_ISCHR(a.st_mode) or stat.S_ISBLK(a.st_mode):
        return a.st_rdev == b.st_rdev
    return a.st_size == b.st_size and int(a.st_mtime) == int(b.st_mtime)


def diff_trees(lower: Path, upper: Path, touched_after: float | None = None) -> list[Change]:
    """The changes from LOWER to UPPER, parents before children, names sorted."""
    out: list[Change] = []

    def walk(rel: str) -> None:
        lo, up = os.path.join(lower, rel), os.path.join(upper, rel)
        lower_names, upper_names = _names(lo), _names(up)
        kept = {n for n in lower_names if _join(rel, n) not in GUEST_OWNED}
        now = {n for n in upper_names if _join(rel, n) not in GUEST_OWNED}
        if rel and kept and not kept & now:  # every earlier entry gone: the folder starts afresh
            out.append(Change("opaque", rel))
            for name in sorted(now):
                add_tree(_join(rel, name))
            return
        for name in sorted(lower_names | upper_names):
            child = _join(rel, name)
            if child in GUEST_OWNED:
                continue
            ls, us = _lstat(os.path.join(lower, child)), _lstat(os.path.join(upper, child))
            if us is None:
                out.append(Change("delete", child))
            elif child in BOOT_MADE and stat.S_ISDIR(us.st_mode) and (ls is None or stat.S_ISDIR(ls.st_mode)):
                mark = len(out)
                walk(child)
                if len(out) > mark:
                    out.insert(mark, Change("add", child))
            elif ls is None or stat.S_IFMT(ls.st_mode) != stat.S_IFMT(us.st_mode):
                if ls is not None and stat.S_ISDIR(ls.st_mode):
                    out.append(Change("delete", child))  # a folder replaced by a file
                add_tree(child)
            elif stat.S_ISDIR(us.st_mode):
                mark = len(out)
                walk(child)
                touched = touched_after is not None and us.st_ctime >= touched_after
                if len(out) > mark or not _same(ls, us, os.path.join(lower, child), os.path.join(upper, child)) \
                        or touched:
                    out.insert(mark, Change("add", child))  # the folder's entry before its changes
            elif (touched_after is not None and us.st_ctime >= touched_after) \
                    or not _same(ls, us, os.path.join(lower, child), os.path.join(upper, child)):
                out.append(Change("add", child))

    def add_tree(rel: str) -> None:
        out.append(Change("add", rel))
        p = os.path.join(upper, rel)
        if os.path.isdir(p) and not os.path.islink(p):
            for name in sorted(os.listdir(p)):
                if _join(rel, name) not in GUEST_OWNED:
                    add_tree(_join(rel, name))

    walk("")
    return out


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _info(upper: Path, rel: str, st: os.stat_result) -> tarfile.TarInfo:
    t = tarfile.TarInfo(rel)
    t.mode = stat.S_IMODE(st.st_mode)
    t.uid, t.gid, t.uname, t.gname = st.st_uid, st.st_gid, "", ""
    t.mtime = int(st.st_mtime)
    if stat.S_ISDIR(st.st_mode):
        t.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        t.type, t.linkname = tarfile.SYMTYPE, os.readlink(upper / rel)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        t.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
        t.devmajor, t.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(st.st_mode):
        t.type = tarfile.FIFOTYPE
    elif stat.S_ISREG(st.st_mode):
        t.size = st.st_size
    else:
        raise ValueError(f"{rel}: a socket cannot be in a layer")
    return t


def _marker(rel: str) -> tarfile.TarInfo:
    t = tarfile.TarInfo(rel)
    t.mode, t.mtime, t.uname, t.gname = 0o644, 0, "", ""
    return t


def write_tar(changes: list[Change], upper: Path, out: IO[bytes]) -> None:
    """The layer (uncompressed tar) for CHANGES, files read from UPPER."""
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for c in changes:
            if c.kind == "delete":
                parent, _, name = c.path.rpartition("/")
                tar.addfile(_marker(_join(parent, WHITEOUT + name)))
                continue
            if c.kind == "opaque":
                tar.addfile(_marker(_join(c.path, OPAQUE)))
                continue
            st = os.lstat(upper / c.path)
            if stat.S_ISSOCK(st.st_mode):
                continue  # a socket left by a step is not file-system content
            t = _info(upper, c.path, st)
            if t.type == tarfile.REGTYPE and st.st_nlink > 1:
                first = links.setdefault((st.st_dev, st.st_ino), c.path)
                if first != c.path:
                    t.type, t.linkname, t.size = tarfile.LNKTYPE, first, 0
            if t.type == tarfile.REGTYPE:
                with open(upper / c.path, "rb") as f:
                    tar.addfile(t, f)
            else:
                tar.addfile(t)


class _Hashing:
    """A write-only file that hashes and counts what passes through to TARGET."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target, self.sha, self.size = target, hashlib.sha256(), 0

    def write(self, b: bytes) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.target.write(b)

    def flush(self) -> None:
        self.target.flush()


@dataclass(frozen=True)
class LayerFile:
    path: Path  # the gzipped tar
    digest: str  # of the gzipped bytes
    diff_id: str  # of the tar
    size: int


def compress(tar_path: Path, dest: Path) -> LayerFile:
    """gzip TAR_PATH to DEST (mtime 0: the same tar gives the same blob)."""
    diff = hashlib.sha256()
    with open(tar_path, "rb") as src, open(dest, "wb") as raw:
        hashed = _Hashing(raw)
        with gzip.GzipFile(fileobj=hashed, mode="wb", mtime=0, compresslevel=6) as gz:
            for chunk in _chunks(src):
                diff.update(chunk)
                gz.write(chunk)
    return LayerFile(dest, "sha256:" + hashed.sha.hexdigest(), "sha256:" + diff.hexdigest(), hashed.size)


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(1 << 20):
        yield chunk
