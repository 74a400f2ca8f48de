"""Tar streams for `box cp`, on the host side: made from a host path in chunks, and
extracted safely from a stream a guest made.

Threat: the guest is hostile, so a tar it sends is too. The extractor writes only
below its destination folder: absolute names and `..` are refused, every folder is
opened component by component with O_NOFOLLOW (a symlink the stream made earlier is
never written through), only files, folders and symlinks are made, and symlinks are
stored as they are, never followed; no file or folder gets a setuid or setgid bit (a
setuid-root program of the guest's must not land on the host). Files are written under a temporary name and
renamed, and the whole extraction happens in a temporary folder beside the final
one, so a failure leaves nothing at the destination.
"""
from __future__ import annotations

import os
import queue
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

CHUNK = 1 << 20
SAFE_FILE_MODE = 0o777  # permission bits only: never setuid, setgid or sticky
SAFE_DIR_MODE = 0o1777  # the sticky bit of a /tmp-like folder is kept


class TarError(Exception):
    """A stream that is not a tar, or holds a name that escapes its folder."""


class _ChunkWriter:
    """A write-only file that hands what is written to SINK in chunks."""

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self.sink = sink
        self.buf = bytearray()

    def write(self, b: bytes) -> int:
        self.buf += b
        if len(self.buf) >= CHUNK:
            self.sink(bytes(self.buf))
            self.buf.clear()
        return len(b)

    def flush(self) -> None:
        if self.buf:
            self.sink(bytes(self.buf))
            self.buf.clear()


def write_tar(path: Path, arcname: str, sink: Callable[[bytes], None]) -> None:
    """PATH (a file or a tree; symlinks stored, not followed) as a tar stream into SINK."""
    out = _ChunkWriter(sink)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
        tar.add(str(path), arcname=arcname, recursive=True)
    out.flush()


class QueueReader:
    """A read-only file fed from another thread (the guest's output), bounded in memory."""

    def __init__(self, depth: int = 16) -> None:
        self.q: queue.Queue[bytes | None] = queue.Queue(depth)
        self.buf = b""
        self.eof = False

    def feed(self, data: bytes) -> None:
        self.q.put(data)

    def close_feed(self) -> None:
        self.q.put(None)

    def read(self, n: int = -1) -> bytes:
        while not self.eof and (n < 0 or len(self.buf) < n):
            item = self.q.get()
            if item is None:
                self.eof = True
            else:
                self.buf += item
        if n < 0:
            out, self.buf = self.buf, b""
        else:
            out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def discard(self) -> None:
        """Read on to the end, keeping nothing: a reader that gave up must not leave the
        feeding thread blocked on a full queue."""
        self.buf = b""
        while not self.eof:
            if self.q.get() is None:
                self.eof = True


def _parts(name: str) -> list[str]:
    if name.startswith("/") or "\0" in name:
        raise TarError(f"{name!r}: an absolute name in the stream")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise TarError(f"{name!r}: '..' in the stream")
    return parts


def _open_dir(root_fd: int, parts: list[str]) -> int:
    """The folder PARTS under ROOT_FD, made as needed, never through a symlink."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def extract_tar(stream: IO[bytes] | Any, dest: Path) -> list[str]:
    """Extract the stream into folder DEST (which must exist); the top-level names."""
    top: list[str] = []
    dir_times: list[tuple[list[str], float]] = []
    root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            tar = tarfile.open(fileobj=stream, mode="r|*")
        except tarfile.TarError as e:
            raise TarError(f"not a tar stream: {e}") from e
        with tar:
            for m in tar:
                parts = _parts(m.name)
                if not parts:
                    continue
                if parts[0] not in top:
                    top.append(parts[0])
                parent = _open_dir(root, parts[:-1])
                leaf = parts[-1]
                try:
                    if m.isdir():
                        try:
                            os.mkdir(leaf, 0o700, dir_fd=parent)
                        except FileExistsError:
                            pass
                        os.chmod(leaf, m.mode & SAFE_DIR_MODE, dir_fd=parent, follow_symlinks=False)
                        dir_times.append((parts, float(m.mtime)))
                    elif m.issym():
                        try:
                            os.unlink(leaf, dir_fd=parent)
                        except FileNotFoundError:
                            pass
                        os.symlink(m.linkname, leaf, dir_fd=parent)
                        os.utime(leaf, (m.mtime, m.mtime), dir_fd=parent, follow_symlinks=False)
                    elif m.isfile():
                        src = tar.extractfile(m)
                        assert src is not None
                        tmp = f".a3s-cp.{os.getpid()}.{leaf}"[:255]
                        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     0o600, dir_fd=parent)
                        try:
                            while chunk := src.read(CHUNK):
                                os.write(fd, chunk)
                            os.fchmod(fd, m.mode & SAFE_FILE_MODE)
                        finally:
                            os.close(fd)
                        os.utime(tmp, (m.mtime, m.mtime), dir_fd=parent)
                        os.replace(tmp, leaf, src_dir_fd=parent, dst_dir_fd=parent)
                    # hard links, devices, fifos: not made
                finally:
                    os.close(parent)
        for parts, mtime in reversed(dir_times):
            parent = _open_dir(root, parts[:-1])
            try:
                os.utime(parts[-1], (mtime, mtime), dir_fd=parent, follow_symlinks=False)
            finally:
                os.close(parent)
    except tarfile.TarError as e:
        raise TarError(f"the stream broke off: {e}") from e
    finally:
        os.close(root)
    return top


def iter_file(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def run_in_thread(fn: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def wrap() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)
    t = threading.Thread(target=wrap, daemon=True)
    t.start()
    return t, errors
