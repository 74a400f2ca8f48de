"""Upgrades: a box applied by the previous release (built from v0.1.0's commit) keeps
running under this tree: `box ps` sees it running, `plan` has nothing to do, `exec`
reaches it, apply leaves its VM alone, and delete takes it down with nothing left."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, BoxCli, boxfile

pytestmark = pytest.mark.vm
PREVIOUS = "v0.1.0"
# The tag's commit: a clone made without tags (CI pushes branches only) still has it.
PREVIOUS_COMMIT = "c6c71268ee70f39d677d0c80dcd4c811ae111ea0"

BODY = """project: up
boxes:
  old:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
"""


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's tree, from its commit (a shallow clone lacks it: then skip)."""
    have = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{PREVIOUS_COMMIT}^{{commit}}"],
                          capture_output=True)
    if have.returncode != 0:
        pytest.skip(f"{PREVIOUS} ({PREVIOUS_COMMIT[:12]}) is not in this clone's history (a shallow clone)")
    out = tmp_path_factory.mktemp("previous")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", PREVIOUS_COMMIT], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out


def test_a_box_of_the_previous_release_is_adopted(box: BoxCli, hello_image: Path, tmp_path: Path,
                                                  previous: Path) -> None:
    f = boxfile(tmp_path, hello_image, BODY)
    env = {**box.env, "PYTHONPATH": str(previous)}
    old = subprocess.run([sys.executable, "-m", "a3s_box.cli", "apply", "-f", str(f)], env=env, cwd=previous,
                         capture_output=True, text=True, timeout=600)
    assert old.returncode == 0, old.stderr
    check = subprocess.run([sys.executable, "-c", "import a3s_box; print(a3s_box.__file__)"], env=env,
                           cwd=previous, capture_output=True, text=True)
    assert check.stdout.startswith(str(previous)), "the previous release's code ran"

    before = {b["name"]: b for b in box("ps", "-o", "json", check=True).json()}["old"]
    assert before["status"] == "running", before
    assert "No changes" in box("plan", "-f", str(f), check=True).out
    assert box("exec", "old", "--", "hostname", check=True).out == "old\n"
    box("apply", "-f", str(f), check=True)
    after = {b["name"]: b for b in box("ps", "-o", "json", check=True).json()}["old"]
    assert after["pid"] == before["pid"], "the VM was left running, not booted again"
    box("delete", "-f", str(f), check=True)
    assert box.vm_processes() == []
