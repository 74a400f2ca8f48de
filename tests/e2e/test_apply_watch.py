"""`box apply --watch` on real files and VMs: converge on save, survive a bad save,
leave the boxes running when stopped."""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import BoxCli, boxfile

pytestmark = pytest.mark.vm

BODY = """project: watch
boxes:
  w:
    image: hello
    resources: {{memory: {mem}}}
    namespaces: {{agent: {{command: ["/bin/sh", "-c", "exec sleep 100000"]}}}}
"""


def ps(box: BoxCli) -> dict[str, dict[str, object]]:
    return {b["name"]: b for b in box("ps", "-o", "json", check=True).json()}


def wait_until(pred: Callable[[], bool], timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.3)
    return False


def test_watch_converges_on_save_and_keeps_the_last_good_state(box: BoxCli, hello_image: Path,
                                                                tmp_path: Path) -> None:
    f = boxfile(tmp_path, hello_image, BODY.format(mem="128Mi"))
    p = box.popen("apply", "-f", str(f), "--watch")
    try:
        assert wait_until(lambda: ps(box).get("w", {}).get("status") == "running")
        first_pid = ps(box)["w"]["pid"]
        # an invalid save: reported, the box keeps running untouched
        f.write_text(f.read_text().replace("memory: 128Mi", "memory: lots"))
        time.sleep(3)
        assert ps(box)["w"]["pid"] == first_pid
        # a valid change: the box is recreated
        f.write_text(boxfile(tmp_path, hello_image, BODY.format(mem="160Mi"), "v2.yaml").read_text())
        assert wait_until(lambda: ps(box).get("w", {}).get("pid") not in (None, first_pid)
                          and ps(box)["w"]["status"] == "running")
    finally:
        os.kill(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "memory: 'lots' is not a size" in err and "keeping the last good state" in err
    assert "stopped watching; the boxes keep running" in err
    assert ps(box)["w"]["status"] == "running"  # declared state, not a child of the watcher
    box("delete", "-f", str(f), check=True)
