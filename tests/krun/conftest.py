"""Fixtures for the libkrun driver tests: the real library (no fake libkrun), a test
home shared with the driver tests (so the probe verdict is cached across runs), and a
static guest program that never answers (for timeouts and kills on any host).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from a3s_box.drivers.krun.library import Krun, load
from a3s_box.errors import HostUnsupported
from a3s_box.home import Home


@pytest.fixture(scope="session")
def krun() -> Krun:
    try:
        return load()
    except HostUnsupported as e:
        pytest.skip(f"no libkrun here (pip install smolmachines): {e}")


@pytest.fixture(scope="session")
def test_home() -> Home:
    base = os.environ.get("A3S_BOX_TEST_HOME") or str(Path.home() / ".cache" / "a3s-box-test")
    return Home(Path(base).absolute()).ensure()


@pytest.fixture(scope="session")
def sleeper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static guest init that never listens on vsock and never powers off."""
    if shutil.which("musl-gcc") is None:
        pytest.skip("needs musl-gcc (musl-tools)")
    out = tmp_path_factory.mktemp("sleeper")
    (out / "sleeper.c").write_text("#include <unistd.h>\nint main(void){for(;;)pause();}\n")
    subprocess.run(["musl-gcc", "-static", "-Os", "-o", str(out / "sleeper"),
                    str(out / "sleeper.c")], check=True, capture_output=True)
    return out / "sleeper"


@pytest.fixture(scope="session")
def busybox_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unpacked root folder: busybox-static and its applet links."""
    if not Path("/bin/busybox").is_file():
        pytest.skip("needs busybox-static")
    root = tmp_path_factory.mktemp("image") / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for a in ("sh", "echo", "sleep", "cat", "true"):
        (root / "bin" / a).symlink_to("busybox")
    return root
