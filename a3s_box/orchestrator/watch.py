"""Watch mode: re-converge on every save of the Boxfile(s), and keep pools filled between.

The change stream is an argument (watchfiles in real use, a list in tests), so the loop
is testable without sleeping. An invalid save reports its problems and leaves the last
good state running; stopping the watcher leaves the boxes as they are: they are
declared state, not children of the watcher.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from a3s_box.errors import BoxError, BoxfileError

TICK_SECONDS = 5.0  # pool upkeep between saves


def file_changes(files: Sequence[Path], stop: Any = None) -> Iterator[set[Path]]:
    """Saves of `files`, debounced; an empty set every TICK_SECONDS without one.

    Watches the folders, not the files: editors save by writing a new file and renaming
    it over the old one, which a watch on the file itself would lose."""
    import watchfiles

    wanted = {f.resolve() for f in files}
    folders = sorted({str(f.parent) for f in wanted})
    for batch in watchfiles.watch(*folders, debounce=300, step=50, stop_event=stop,
                                  rust_timeout=int(TICK_SECONDS * 1000), yield_on_timeout=True,
                                  raise_interrupt=False):
        yield {Path(p).resolve() for _, p in batch} & wanted


def watch_loop(changes: Iterable[set[Path]], converge: Callable[[], None],
               upkeep: Callable[[], None], say: Callable[[str], None]) -> int:
    """Run `converge` now and after every non-empty change set, `upkeep` on empty ones.
    Returns how many converges ran."""
    runs = 0

    def attempt() -> None:
        nonlocal runs
        runs += 1
        try:
            converge()
        except BoxfileError as e:
            say(f"{e}\nthe Boxfile has errors: keeping the last good state; fix and save again")
        except BoxError as e:
            say(f"error: {e}")

    attempt()
    say("watching for changes (Ctrl-C stops watching; boxes keep running)")
    for changed in changes:
        if changed:
            say(f"changed: {', '.join(sorted(p.name for p in changed))}")
            attempt()
        else:
            try:
                upkeep()
            except BoxError as e:
                say(f"pool upkeep: {e}")
    return runs
