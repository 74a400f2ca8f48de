"""A snapshot clone's RAM as a memfd of its own, filled from its template's RAM file.

A clone normally maps its template's RAM file copy-on-write. A clone whose virtio-fs
shares are hot-plugged cannot: virtiofsd maps guest RAM from the descriptor QEMU gives
it, and through a private mapping's file it would read the template's pages, never the
ones this guest wrote. So such a clone gets a shared copy: only the file's data extents
(SEEK_DATA/SEEK_HOLE: what the template's guest touched) are copied, by the kernel
(sendfile); holes stay holes and read as zeros. The copy is made in a child that first
joins the box's cgroup, so that its pages are charged to the box, as the RAM its guest
would have touched booting cold.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

CHUNK = 64 << 20  # one sendfile call at most (its count is an int)


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of each run of data in the first SIZE bytes of FD's file."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: no data past POS
            return
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end - start
        pos = end


def copy_data(src: int, dst: int, size: int) -> int:
    """SRC's data extents into DST at the same offsets; the bytes copied."""
    copied = 0
    for start, length in data_extents(src, size):
        off, left = start, length
        while left > 0:
            os.lseek(dst, off, os.SEEK_SET)
            n = os.sendfile(dst, src, off, min(left, CHUNK))
            if n <= 0:
                raise OSError(f"short copy at {off} of the template's RAM")
            off, left, copied = off + n, left - n, copied + n
    return copied


def clone_ram(template_ram: Path, size: int, join: Callable[[], None]) -> int:
    """A memfd of SIZE bytes holding TEMPLATE_RAM's data, filled by a child that runs
    JOIN (the box's cgroup) first; its descriptor (close-on-exec: hand it on with
    pass_fds). OSError when it cannot be made."""
    src = os.open(template_ram, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(src).st_size < size:
            raise OSError(f"{template_ram} is smaller than the box's {size >> 20} MiB of RAM")
        dst = os.memfd_create("a3s-clone-ram", os.MFD_CLOEXEC)
        try:
            os.ftruncate(dst, size)
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child's outcome is its exit status
                code = 1
                try:
                    join()
                    copy_data(src, dst, size)
                    code = 0
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
                raise OSError(f"copying {template_ram} into the clone's memory failed (status {status})")
            return dst
        except BaseException:
            os.close(dst)
            raise
    finally:
        os.close(src)
