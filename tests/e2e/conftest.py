"""End-to-end fixtures: the `box` CLI as a user runs it, on real microVMs.

Each test module gets its own a3s-box home; the guest kernel and init (fetched and
built once, like `box setup` does) are shared through the test cache so that only the
first module pays for them.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from a3s_box.drivers.common.artifacts import ensure_guest_artifacts
from a3s_box.errors import BoxError
from a3s_box.home import Home

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def shared_cache() -> Path:
    base = os.environ.get("A3S_BOX_TEST_HOME") or str(Path.home() / ".cache" / "a3s-box-test")
    home = Home(Path(base).absolute()).ensure()
    try:
        ensure_guest_artifacts(home)
    except BoxError as e:
        pytest.fail(f"cannot provision the guest kernel and init: {e}")
    return home.cache


@pytest.fixture(scope="session")
def hello_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's OCI image, built offline by examples/hello/make_image.py."""
    out = tmp_path_factory.mktemp("hello") / "image"
    subprocess.run([sys.executable, str(ROOT / "examples/hello/make_image.py"), str(out)],
                   check=True, capture_output=True)
    return out


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class BoxCli:
    """Runs `box` in a subprocess against one home, as a user would."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "A3S_BOX_HOME": str(home)}

    def __call__(self, *args: str, timeout: float = 300, check: bool = False,
                 stdin: str | None = None) -> Result:
        r = subprocess.run([sys.executable, "-m", "a3s_box.cli", *args], env=self.env,
                           capture_output=True, text=True, timeout=timeout, input=stdin)
        res = Result(r.returncode, r.stdout, r.stderr)
        if check:
            assert r.returncode == 0, f"box {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        return res

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "a3s_box.cli", *args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    def vm_processes_after(self, seconds: float) -> list[int]:
        """vm_processes once they are gone, or after SECONDS: a pool filler that was booting a
        member when its pool was deleted takes that member down once its boot ends."""
        deadline = time.monotonic() + seconds
        while (left := self.vm_processes()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def vm_processes(self) -> list[int]:
        """Pids of every process (shim, qemu) that belongs to this home's boxes."""
        needle = str(self.home / "boxes").encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if needle in (entry / "cmdline").read_bytes():
                        pids.append(int(entry.name))
                except OSError:
                    pass
        return pids


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Iterator[BoxCli]:
    home = tmp_path_factory.mktemp("home")
    (home / "cache").symlink_to(shared_cache)
    cli = BoxCli(home)
    yield cli
    # Whatever a test left running is taken down, so no VM outlives the suite.
    for pid in cli.vm_processes():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def boxfile(tmp_path: Path, image: Path, body: str, name: str = "Boxfile.yaml") -> Path:
    f = tmp_path / name
    f.write_text(f"apiVersion: box.a3s.dev/v1\nimages:\n  hello: {{path: {image}}}\n{body}")
    return f
