"""Apply OCI layers onto a root folder, safely, even when run as root.

Every path is resolved inside the root one component at a time with dir fds and
O_NOFOLLOW; a symlink met on the way is resolved as if the root were `/` (chroot
semantics, like Docker's securejoin), so nothing is ever created or changed outside
the root. Symlinks are stored as data, never followed when writing the last
component: an existing entry is removed and re-created.

Refused with an ImageError: absolute member names, names or hardlink targets that
climb out with `..`, whiteouts of `.`/`..`, hardlinks to something that does not exist
in the root, symlink loops. Device nodes are skipped with a logged warning: the guest
kernel provides /dev (devtmpfs), and an image must not create devices on the host.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterator
from typing import IO, BinaryIO

from a3s_box.disks.space import is_full
from a3s_box.errors import ImageError

log = logging.getLogger(__name__)
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_MAX_HOPS = 40
_IS_ROOT = os.geteuid() == 0


def clean_name(name: str, ref: str) -> tuple[str, ...]:
    """A member name as path components inside the root; refuse names that escape it."""
    if name.startswith("/"):
        raise ImageError(ref, f"layer entry {name!r} has an absolute path")
    out: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not out:
                raise ImageError(ref, f"layer entry {name!r} points outside the root")
            out.pop()
        else:
            out.append(comp)
    return tuple(out)


class _HashingReader:
    """Feeds tarfile while hashing what it reads, to check the layer's diff_id."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.h = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        b = self.raw.read(n)
        self.h.update(b)
        return b

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return "sha256:" + self.h.hexdigest()


class RootWriter:
    """Writes layers into `root` (an existing, empty-or-partial folder we own)."""

    def __init__(self, root: str, ref: str) -> None:
        self.ref = ref
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)

    def close(self) -> None:
        os.close(self.root_fd)

    def __enter__(self) -> "RootWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- layers -----------------------------------------------------------------
    def apply(self, blob: BinaryIO, compression: str, diff_id: str | None = None,
              what: str = "layer") -> None:
        raw: IO[bytes] = blob
        if compression == "gz":
            raw = gzip.GzipFile(fileobj=blob, mode="rb")  # type: ignore[assignment]
        reader = _HashingReader(raw)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                created: set[tuple[str, ...]] = set()
                for m in tar:
                    self._entry(tar, m, created, what)
            got = reader.drain()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            if is_full(e):
                raise  # not the layer's fault: the caller names the disk (a3s_box.disks.space)
            raise ImageError(self.ref, f"{what} could not be unpacked: {e}") from e
        if diff_id and got != diff_id:
            raise ImageError(self.ref, f"{what} content does not match its diff_id {diff_id} (got {got})")

    def _entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo, created: set[tuple[str, ...]],
               what: str) -> None:
        parts = clean_name(m.name, self.ref)
        if not parts:
            return  # the root itself: keep ours
        base, parent = parts[-1], parts[:-1]
        if base == OPAQUE:
            fd = self._mkdirs(parent, m.name)
            try:
                for child in os.listdir(fd):
                    if parent + (child,) not in created:
                        _remove(fd, child)
            finally:
                os.close(fd)
            return
        if base.startswith(WHITEOUT):
            target = base[len(WHITEOUT):]
            if target in ("", ".", "..") or "/" in target:
                raise ImageError(self.ref, f"whiteout {m.name!r} points outside its folder")
            pfd = self._dir(parent, create=False, name=m.name)
            if pfd is not None:
                try:
                    _remove(pfd, target)
                finally:
                    os.close(pfd)
            return
        if m.ischr() or m.isblk():
            log.warning("%s: %s: skipping device node %s", self.ref, what, m.name)
            return
        created.add(parts)
        fd = self._mkdirs(parent, m.name)
        try:
            self._write(tar, m, fd, base)
        finally:
            os.close(fd)

    def _write(self, tar: tarfile.TarFile, m: tarfile.TarInfo, fd: int, base: str) -> None:
        existing = _lstat(fd, base)
        if m.isdir():
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                if existing is not None:
                    _remove(fd, base)
                os.mkdir(base, 0o700, dir_fd=fd)
        else:
            if existing is not None:
                _remove(fd, base)
            if m.issym():
                os.symlink(m.linkname, base, dir_fd=fd)
            elif m.islnk():
                self._hardlink(m, fd, base)
                return  # a hardlink shares the target's inode and metadata
            elif m.isfifo():
                os.mkfifo(base, 0o600, dir_fd=fd)
            elif m.isreg():
                out = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                              dir_fd=fd)
                src = tar.extractfile(m)
                with os.fdopen(out, "wb") as f:
                    if src is not None:
                        shutil.copyfileobj(src, f, 1 << 20)
            else:
                log.warning("%s: skipping %s of unsupported type %r", self.ref, m.name, m.type)
                return
        if _IS_ROOT:
            os.chown(base, m.uid, m.gid, dir_fd=fd, follow_symlinks=False)
        if not m.issym():  # we just made it, so it is not a symlink: following is safe
            os.chmod(base, m.mode & 0o7777, dir_fd=fd)
        os.utime(base, (m.mtime, m.mtime), dir_fd=fd, follow_symlinks=False)

    def _hardlink(self, m: tarfile.TarInfo, fd: int, base: str) -> None:
        target = clean_name(m.linkname, self.ref)
        if not target:
            raise ImageError(self.ref, f"hardlink {m.name!r} points at the root")
        sfd = self._dir(target[:-1], create=False, name=m.name)
        st = _lstat(sfd, target[-1]) if sfd is not None else None
        try:
            if st is None or stat.S_ISDIR(st.st_mode):
                raise ImageError(self.ref, f"hardlink {m.name!r} -> {m.linkname!r}: "
                                           "target is not a file in the image")
            os.link(target[-1], base, src_dir_fd=sfd, dst_dir_fd=fd, follow_symlinks=False)
        finally:
            if sfd is not None:
                os.close(sfd)

    # --- path resolution inside the root -----------------------------------------
    def _mkdirs(self, parts: tuple[str, ...], name: str) -> int:
        fd = self._dir(parts, create=True, name=name)
        assert fd is not None  # create=True always yields a folder or raises
        return fd

    def _dir(self, parts: tuple[str, ...], *, create: bool, name: str) -> int | None:
        """An fd for the folder `parts` inside the root, resolving symlinks as in a chroot."""
        stack = [os.dup(self.root_fd)]
        todo = list(parts)
        hops = 0
        try:
            while todo:
                c = todo.pop(0)
                if c in ("", "."):
                    continue
                if c == "..":
                    if len(stack) > 1:
                        os.close(stack.pop())
                    continue
                st = _lstat(stack[-1], c)
                if st is None:
                    if not create:
                        return None
                    os.mkdir(c, 0o755, dir_fd=stack[-1])
                    st = os.lstat(c, dir_fd=stack[-1])
                if stat.S_ISLNK(st.st_mode):
                    hops += 1
                    if hops > _MAX_HOPS:
                        raise ImageError(self.ref, f"layer entry {name!r}: too many levels of symlinks")
                    link = os.readlink(c, dir_fd=stack[-1])
                    if link.startswith("/"):
                        while len(stack) > 1:
                            os.close(stack.pop())
                    todo[:0] = link.split("/")
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    if not create:
                        return None
                    raise ImageError(self.ref, f"layer entry {name!r}: {c!r} is not a directory")
                stack.append(os.open(c, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                     dir_fd=stack[-1]))
            return stack.pop()
        finally:
            for f in stack:
                os.close(f)


def _lstat(fd: int, name: str) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=fd)
    except FileNotFoundError:
        return None


def _remove(fd: int, name: str) -> None:
    st = _lstat(fd, name)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=fd)  # fd-based: never follows symlinks
    else:
        os.unlink(name, dir_fd=fd)


def walk_sizes(root: str) -> Iterator[int]:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            yield os.lstat(os.path.join(dirpath, f)).st_size
