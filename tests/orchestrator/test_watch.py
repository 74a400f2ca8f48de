"""Watch mode: the loop with an injected change stream, and watchfiles on a real file."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from a3s_box.errors import BoxfileError, Problem
from a3s_box.orchestrator.watch import file_changes, watch_loop


def test_converges_at_start_and_on_each_save_upkeep_on_quiet_ticks() -> None:
    events: list[str] = []
    f = Path("/x/Boxfile.yaml")
    runs = watch_loop([{f}, set(), {f}], lambda: events.append("converge"),
                      lambda: events.append("upkeep"), lambda m: None)
    assert runs == 3
    assert events == ["converge", "converge", "upkeep", "converge"]


def test_an_invalid_save_is_reported_and_the_loop_goes_on() -> None:
    said: list[str] = []
    calls = iter([None, BoxfileError([Problem("B.yaml", 3, 5, "boxes.a.image", "unknown image 'x'")]), None])

    def converge() -> None:
        err = next(calls)
        if err is not None:
            raise err

    f = Path("/x/B.yaml")
    assert watch_loop([{f}, {f}], converge, lambda: None, said.append) == 3
    assert any("B.yaml:3:5: boxes.a.image: unknown image 'x'" in m and "last good state" in m
               for m in said)


def test_watchfiles_sees_an_editor_style_save(tmp_path: Path) -> None:
    target = tmp_path / "Boxfile.yaml"
    target.write_text("a: 1\n")
    stop = threading.Event()
    seen: list[set[Path]] = []

    def save_like_an_editor() -> None:
        time.sleep(0.5)
        tmp = tmp_path / ".Boxfile.yaml.swp"
        tmp.write_text("a: 2\n")
        tmp.replace(target)  # write a new file, rename it over the old one

    threading.Thread(target=save_like_an_editor, daemon=True).start()
    for ticks, changed in enumerate(file_changes([target], stop=stop)):
        if changed:
            seen.append(changed)
            break
        if ticks >= 4:  # several quiet ticks: the save was missed
            break
    stop.set()
    assert seen == [{target.resolve()}]
