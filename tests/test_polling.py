"""a3s_box/polling.py: PathWatch wakes when a file appears in the folder it watches."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from a3s_box.polling import PathWatch


@pytest.mark.parametrize("how", ["create", "rename"])
def test_a_file_appearing_wakes_the_watch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    monkeypatch.setattr(PathWatch, "RECHECK", 60.0)  # only the event can end the wait early
    target = tmp_path / "guest.sock"

    def make() -> None:
        time.sleep(0.05)
        if how == "create":
            target.write_text("")
        else:  # as the shim's loop and exit.json appear: made aside, renamed into place
            (tmp_path / ".tmp").write_text("")
            os.rename(tmp_path / ".tmp", target)

    with PathWatch(target) as watch:
        maker = threading.Thread(target=make)
        maker.start()
        woke = watch.wait(time.monotonic() + 60.0)  # the watch predates the file: its event is queued
        while not target.exists():
            woke = watch.wait(time.monotonic() + 60.0)
        maker.join()
    assert woke and target.exists()


def test_the_wait_ends_at_the_deadline_with_nothing_made(tmp_path: Path) -> None:
    with PathWatch(tmp_path / "never") as watch:
        assert watch.wait(time.monotonic()) is False


def test_a_folder_that_cannot_be_watched_falls_back_to_pauses(tmp_path: Path) -> None:
    with PathWatch(tmp_path / "missing" / "file") as watch:
        assert watch.wait(time.monotonic() + 60.0) is False  # a pause, then the caller checks again
