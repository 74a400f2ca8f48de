"""One writer at a time per home: mutating commands hold an exclusive file lock.

flock is released by the kernel when the process dies, so a `kill -9`ed apply never
leaves a stale lock behind. The holder's pid is written into the file for messages
only: on a full disk it is left out, and the lock still holds.
"""
from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from a3s_box.disks.space import is_full
from a3s_box.errors import StateError


@contextmanager
def home_lock(path: Path, wait: bool = True, timeout: float | None = None,
              on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            if not wait:
                raise StateError(f"another box command ({holder}) is changing {path.parent}; "
                                 "retry later or drop --no-wait to wait for it") from None
            if on_wait is not None:
                on_wait()
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() > deadline:
                        raise StateError(f"timed out waiting for the lock on {path.parent} "
                                         f"held by {holder}") from None
                    time.sleep(0.1)
        os.ftruncate(fd, 0)
        try:
            os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        except OSError as e:  # who holds it is for messages; the flock is the lock
            if not is_full(e):
                raise
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown process"
    except OSError:
        return "unknown process"
