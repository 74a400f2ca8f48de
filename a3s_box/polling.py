"""Waiting for something another process does (a socket appearing, a VM's state
changing) when there is nothing to block on: short pauses first, longer ones later.

A box's start waits on several such steps in a row, most of them done in a few
milliseconds; a fixed 10-20 ms pause cost each of them half that on average. The pauses
here start at 1 ms and double to a ceiling, so a quick step is seen almost at once and a
slow one (a cold boot of seconds) costs no more wake-ups than a fixed pause would.
Where the thing awaited is a file or socket appearing, PathWatch blocks on the folder
instead (inotify) and the wait ends as it appears."""
from __future__ import annotations

import ctypes
import os
import select
import threading
import time
from collections.abc import Iterator
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)

FIRST = 0.001
CEILING = 0.02


def pauses(first: float = FIRST, ceiling: float = CEILING) -> Iterator[float]:
    """Endless pause lengths: FIRST, doubling, then CEILING for ever."""
    pause = first
    while True:
        yield pause
        pause = min(pause * 2, ceiling)


class Poll:
    """`poll = Poll()`, then `poll.wait()` between two checks of the same thing."""

    def __init__(self, first: float = FIRST, ceiling: float = CEILING) -> None:
        self._pauses = pauses(first, ceiling)

    def wait(self) -> None:
        time.sleep(next(self._pauses))


# inotify(7): a process creating a file (or renaming one into place) in a folder wakes
# whoever watches the folder. Linux only, as the rest of a3s-box.
_IN_MOVED_TO, _IN_CREATE = 0x80, 0x100
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC


class PathWatch:
    """Blocks until something is created or renamed into PATH's folder, so a wait for a
    socket or file another process makes ends when it appears rather than at the next
    poll (a doubling poll saw a step ~15 ms late in the worst case, ~9 ms on average,
    measured on a box's start). Where the folder cannot be watched (it does not exist
    yet; inotify is out of watches) `wait` falls back to Poll's pauses: slower, not wrong.

        with PathWatch(path) as watch:      # watching before the first check: no race
            while not path.exists():
                ...check that the maker still lives...
                watch.wait(deadline)
    """

    RECHECK = 0.05  # the longest a wait blocks: the caller's other checks run that often

    def __init__(self, path: Path | str) -> None:
        self._fallback = Poll()
        self._fd = -1
        fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            return
        folder = os.fsencode(os.path.dirname(os.fspath(path)) or ".")
        if _libc.inotify_add_watch(fd, folder, _IN_MOVED_TO | _IN_CREATE) < 0:
            os.close(fd)
            return
        self._fd = fd

    def wait(self, deadline: float) -> bool:
        """Until the folder changes (True), or RECHECK passes or DEADLINE
        (time.monotonic()) comes (False)."""
        if self._fd < 0:
            self._fallback.wait()
            return False
        timeout = max(0.0, min(self.RECHECK, deadline - time.monotonic()))
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return False
        try:
            while os.read(self._fd, 65536):
                pass
        except BlockingIOError:
            pass
        return True

    def close(self) -> None:
        if self._fd >= 0:
            # closing an inotify instance waits out an SRCU grace period (fsnotify's group
            # teardown: ~10 ms measured here, per watch): done off the caller's path
            threading.Thread(target=os.close, args=(self._fd,), daemon=True).start()
            self._fd = -1

    def __enter__(self) -> "PathWatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
