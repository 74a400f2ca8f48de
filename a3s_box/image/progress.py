"""Per-layer progress bars on a terminal (rich); nothing at all otherwise."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol


class LayerProgress(Protocol):
    def layer(self, name: str, total: int) -> Callable[[int], None]: ...


class _Quiet:
    def layer(self, name: str, total: int) -> Callable[[int], None]:
        return lambda n: None


class _Bars:
    def __init__(self, progress: "object") -> None:
        self.p = progress

    def layer(self, name: str, total: int) -> Callable[[int], None]:
        from rich.progress import Progress

        p: Progress = self.p  # type: ignore[assignment]
        task = p.add_task(name, total=total)
        return lambda n: p.advance(task, n)


@contextmanager
def layer_progress(enabled: bool, title: str) -> Iterator[LayerProgress]:
    if not (enabled and sys.stderr.isatty()):
        yield _Quiet()
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=Console(stderr=True), transient=False) as p:
        p.console.print(title)
        yield _Bars(p)
