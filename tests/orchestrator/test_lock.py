"""The home lock: a second writer waits, or fails with --no-wait; a killed holder frees it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from a3s_box.errors import StateError
from a3s_box.orchestrator.lock import home_lock
from tests.small_disk import SmallDisk, small_disk  # noqa: F401  (the fixture)

HOLD = """
import sys, time
from pathlib import Path
from a3s_box.orchestrator.lock import home_lock
with home_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


def _holder(path: Path) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    p.stdout.close()
    return p


def test_no_wait_fails_naming_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / "apply.lock"
    p = _holder(lock)
    try:
        with pytest.raises(StateError, match=f"pid {p.pid}"):
            with home_lock(lock, wait=False):
                pass
    finally:
        p.kill()
        p.wait()


def test_kill_9_of_the_holder_releases_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "apply.lock"
    p = _holder(lock)
    waited: list[bool] = []
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    with home_lock(lock, wait=True, timeout=10, on_wait=lambda: waited.append(True)):
        pass
    assert waited == []


def test_a_waiting_writer_gets_the_lock_when_the_holder_exits(tmp_path: Path) -> None:
    lock = tmp_path / "apply.lock"
    p = _holder(lock)
    waited: list[bool] = []

    def release_soon() -> None:
        waited.append(True)
        os.kill(p.pid, signal.SIGTERM)

    with home_lock(lock, wait=True, timeout=30, on_wait=release_soon):
        got = time.monotonic()
    p.wait()
    assert waited == [True] and got > 0


def test_the_lock_holds_on_a_full_disk(small_disk: SmallDisk) -> None:
    """A full home must still be lockable: the commands that free it (or say it is
    full) take the lock first; the holder's pid is then left out of the file."""
    home = small_disk.mount(1 << 20)
    small_disk.fill(home)
    with home_lock(home / "apply.lock"):
        with pytest.raises(StateError, match="unknown process"):
            with home_lock(home / "apply.lock", wait=False):
                pass
