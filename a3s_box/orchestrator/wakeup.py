"""Whether a reconcile loop runs for a home, and how to wake it: acquire and release
wake the loop of `box serve` instead of spawning filler processes.

In the loop's process its wake() is registered by home; other processes see the loop by
its flock on <home>/reconciler.lock (released by the kernel when the server dies).
"""
from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_wakers: dict[str, Callable[[], None]] = {}
_wakers_lock = threading.Lock()


@contextmanager
def registered(home: Path, wake: Callable[[], None]) -> Iterator[None]:
    """While a loop runs: its wake() known here, its lock held for other processes."""
    fd = os.open(home / "reconciler.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with _wakers_lock:
            _wakers[str(home)] = wake
        yield
    finally:
        with _wakers_lock:
            _wakers.pop(str(home), None)
        os.close(fd)


def wake_loop(home: Path) -> bool:
    """Wake the loop of HOME if one runs here; True also when one runs in another process
    (it passes every few seconds: it refills without being told); False: no loop."""
    with _wakers_lock:
        wake = _wakers.get(str(home))
    if wake is not None:
        wake()
        return True
    return running_elsewhere(home)


def running_elsewhere(home: Path) -> bool:
    try:
        fd = os.open(home / "reconciler.lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
