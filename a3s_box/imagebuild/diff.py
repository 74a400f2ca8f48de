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
from typing import IO, Protocol

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


@dataclass(frozen=True)
class Meta:
    """What the diff compares of one entry, wherever the tree lives."""
    mode: int  # st_mode: type and permission bits
    uid: int
    gid: int
    size: int
    mtime: float
    ctime: float
    rdev: tuple[int, int] = (0, 0)  # major, minor of a device
    link: str = ""  # a symlink's target


class Tree(Protocol):
    """A file system tree the diff reads: a folder on the host, or a guest's stream."""

    def names(self, rel: str) -> set[str]: ...

    def meta(self, rel: str) -> Meta | None: ...

    def open(self, rel: str) -> IO[bytes]: ...

    def link_key(self, rel: str) -> object | None:
        """Equal for the paths of one file with several hard links; None: no others."""
        ...


class DiskTree:
    """A folder on the host (a stage's unpacked tree, or a folder a COPY filled)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def names(self, rel: str) -> set[str]:
        try:
            return set(os.listdir(os.path.join(self.root, rel)))
        except (FileNotFoundError, NotADirectoryError):
            return set()

    def meta(self, rel: str) -> Meta | None:
        p = os.path.join(self.root, rel)
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return None
        return Meta(st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime, st.st_ctime,
                    (os.major(st.st_rdev), os.minor(st.st_rdev)),
                    os.readlink(p) if stat.S_ISLNK(st.st_mode) else "")

    def open(self, rel: str) -> IO[bytes]:
        return open(os.path.join(self.root, rel), "rb")

    def link_key(self, rel: str) -> object | None:
        st = os.lstat(os.path.join(self.root, rel))
        return (st.st_dev, st.st_ino) if st.st_nlink > 1 and stat.S_ISREG(st.st_mode) else None


def _tree(t: "Tree | Path") -> Tree:
    return DiskTree(t) if isinstance(t, Path) else t


def _same(a: Meta, b: Meta) -> bool:
    if a.mode != b.mode or (a.uid, a.gid) != (b.uid, b.gid):
        return False
    if stat.S_ISLNK(a.mode):
        return a.link == b.link
    if stat.S_ISDIR(a.mode):
        return True  # a folder's own mtime moves with its entries: those are compared instead
    if stat.S_ISCHR(a.mode) or stat.S_ISBLK(a.mode):
        return a.rdev == b.rdev
    return a.size == b.size and int(a.mtime) == int(b.mtime)


def diff_trees(lower: "Tree | Path", upper: "Tree | Path", touched_after: float | None = None) -> list[Change]:
    """The changes from LOWER to UPPER, parents before children, names sorted."""
    lo_t, up_t = _tree(lower), _tree(upper)
    out: list[Change] = []

    def touched(m: Meta) -> bool:
        return touched_after is not None and m.ctime >= touched_after

    def walk(rel: str) -> None:
        lower_names, upper_names = lo_t.names(rel), up_t.names(rel)
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
            ls, us = lo_t.meta(child), up_t.meta(child)
            if us is None:
                out.append(Change("delete", child))
            elif child in BOOT_MADE and stat.S_ISDIR(us.mode) and (ls is None or stat.S_ISDIR(ls.mode)):
                mark = len(out)
                walk(child)
                if len(out) > mark:
                    out.insert(mark, Change("add", child))
            elif ls is None or stat.S_IFMT(ls.mode) != stat.S_IFMT(us.mode):
                if ls is not None and stat.S_ISDIR(ls.mode):
                    out.append(Change("delete", child))  # a folder replaced by a file
                add_tree(child)
            elif stat.S_ISDIR(us.mode):
                mark = len(out)
                walk(child)
                if len(out) > mark or not _same(ls, us) or touched(us):
                    out.insert(mark, Change("add", child))  # the folder's entry before its changes
            elif touched(us) or not _same(ls, us):
                out.append(Change("add", child))

    def add_tree(rel: str) -> None:
        out.append(Change("add", rel))
        m = up_t.meta(rel)
        if m is not None and stat.S_ISDIR(m.mode):
            for name in sorted(up_t.names(rel)):
                if _join(rel, name) not in GUEST_OWNED:
                    add_tree(_join(rel, name))

    walk("")
    return out


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _info(rel: str, m: Meta) -> tarfile.TarInfo:
    t = tarfile.TarInfo(rel)
    t.mode = stat.S_IMODE(m.mode)
    t.uid, t.gid, t.uname, t.gname = m.uid, m.gid, "", ""
    t.mtime = int(m.mtime)
    if stat.S_ISDIR(m.mode):
        t.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(m.mode):
        t.type, t.linkname = tarfile.SYMTYPE, m.link
    elif stat.S_ISCHR(m.mode) or stat.S_ISBLK(m.mode):
        t.type = tarfile.CHRTYPE if stat.S_ISCHR(m.mode) else tarfile.BLKTYPE
        t.devmajor, t.devminor = m.rdev
    elif stat.S_ISFIFO(m.mode):
        t.type = tarfile.FIFOTYPE
    elif stat.S_ISREG(m.mode):
        t.size = m.size
    else:
        raise ValueError(f"{rel}: a socket cannot be in a layer")
    return t


def _marker(rel: str) -> tarfile.TarInfo:
    t = tarfile.TarInfo(rel)
    t.mode, t.mtime, t.uname, t.gname = 0o644, 0, "", ""
    return t


def write_tar(changes: list[Change], upper: "Tree | Path", out: IO[bytes]) -> None:
    """The layer (uncompressed tar) for CHANGES, files read from UPPER."""
    up_t = _tree(upper)
    links: dict[object, str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for c in changes:
            if c.kind == "delete":
                parent, _, name = c.path.rpartition("/")
                tar.addfile(_marker(_join(parent, WHITEOUT + name)))
                continue
            if c.kind == "opaque":
                tar.addfile(_marker(_join(c.path, OPAQUE)))
                continue
            m = up_t.meta(c.path)
            if m is None or stat.S_ISSOCK(m.mode):
                continue  # a socket left by a step is not file-system content
            t = _info(c.path, m)
            key = up_t.link_key(c.path) if t.type == tarfile.REGTYPE else None
            if key is not None:
                first = links.setdefault(key, c.path)
                if first != c.path:
                    t.type, t.linkname, t.size = tarfile.LNKTYPE, first, 0
            if t.type == tarfile.REGTYPE:
                with up_t.open(c.path) as f:
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
