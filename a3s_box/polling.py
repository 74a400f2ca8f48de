"""Waiting for something another process does (a socket appearing, a VM's state
changing) when there is nothing to block on: short pauses first, longer ones later.

A box's start waits on several such steps in a row, most of them done in a few
milliseconds; a fixed 10-20 ms pause cost each of them half that on average. The pauses
here start at 1 ms and double to a ceiling, so a quick step is seen almost at once and a
slow one (a cold boot of seconds) costs no more wake-ups than a fixed pause would."""
from __future__ import annotations

import time
from collections.abc import Iterator

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
