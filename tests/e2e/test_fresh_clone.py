"""The README's first command as a new user runs it: `scripts/demo.sh` from a fresh copy
of the repository, with only the distribution's Python on a minimal PATH, no PYTHON,
no virtual environment active, a new HOME and a new a3s-box home.

It catches the class "works only because the checkout is the current folder": the
demo runs from another folder, a3s-box is installed as a copy (not an editable link)
and the tour is then run from `/` in a new login shell, which must find `box` by itself.

Faked only where a real one costs time and proves nothing here: pip's download cache
and the guest kernel's .deb are the machine's own (the kernel is not in the repo; the
guest init is built anew from the installed package's sources).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT

pytestmark = pytest.mark.vm

MINIMAL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _fresh_copy(dest: Path) -> None:
    """What a clone of the working tree holds: tracked and new files, nothing ignored."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "-co", "--exclude-standard"],
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file() or src.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name, follow_symlinks=False)


def _processes_mentioning(needle: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs the distribution's python3")
def test_demo_from_a_fresh_clone_with_the_system_python(tmp_path: Path, shared_cache: Path) -> None:
    clone, user_home, box_home, elsewhere = (tmp_path / n for n in ("clone", "user", "boxhome", "elsewhere"))
    for d in (clone, user_home, box_home / "cache", elsewhere):
        d.mkdir(parents=True)
    _fresh_copy(clone)
    (box_home / "cache" / "kernels").symlink_to(shared_cache / "kernels")
    env = {
        "PATH": MINIMAL_PATH, "HOME": str(user_home), "USER": "root", "LANG": "C.UTF-8",
        "A3S_BOX_HOME": str(box_home),
        # a user layout (venv in ~/.local/share, `box` in ~/.local/bin) inside the test's HOME
        "A3S_BOX_VENV": str(user_home / ".local/share/a3s-box-venv"),
        "A3S_BOX_BIN_DIR": str(user_home / ".local/bin"),
        "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache/pip")),
    }
    login = ["env", "-i", f"HOME={user_home}", "USER=root", f"A3S_BOX_HOME={box_home}",
             "bash", "-lc"]
    try:
        first = subprocess.run(["bash", str(clone / "scripts/demo.sh")], cwd=elsewhere, env=env,
                               capture_output=True, text=True, timeout=1500)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "box delete -f examples/hello/Boxfile.yaml" in first.stdout
        assert "Demo done. Two microVMs are running, db and agent" in first.stdout
        assert "installing a3s-box" in first.stderr
        assert "a new login shell finds it." in first.stdout

        # A new login shell, in another folder, finds `box` and the tour works as printed.
        which = subprocess.run([*login, "command -v box"], cwd="/", capture_output=True, text=True)
        assert which.stdout.strip() == str(user_home / ".local/bin/box"), which.stderr
        ps = subprocess.run([*login, "box ps -o json"], cwd="/", capture_output=True, text=True, timeout=120)
        assert ps.returncode == 0, ps.stderr
        assert {b["name"]: b["status"] for b in json.loads(ps.stdout)} == {"agent": "running", "db": "running"}
        uname = subprocess.run([*login, "box exec agent -- uname -r"], cwd="/", capture_output=True,
                               text=True, timeout=120)
        assert uname.returncode == 0 and uname.stdout.strip() not in ("", os.uname().release), uname.stderr

        # A second run installs nothing and changes nothing, and still succeeds.
        second = subprocess.run(["bash", str(clone / "scripts/demo.sh")], cwd=elsewhere, env=env,
                                capture_output=True, text=True, timeout=900)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "installing" not in second.stderr and "creating a virtual environment" not in second.stderr
        assert "no changes" in second.stdout
        assert (user_home / ".profile").read_text().count("a3s-box") == 1

        gone = subprocess.run([*login, f"box delete -f {clone}/examples/hello/Boxfile.yaml"], cwd="/",
                              capture_output=True, text=True, timeout=300)
        assert gone.returncode == 0, gone.stderr
        assert _processes_mentioning(str(box_home / "boxes")) == []
    finally:
        for pid in _processes_mentioning(str(box_home / "boxes")):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
