"""Fixtures for the driver tests: the real guest artifacts, a busybox root disk.

The test home is $A3S_BOX_TEST_HOME (default ~/.cache/a3s-box-test), so the kernel is
fetched with apt-get once and reused by later runs, as `box setup` does for users.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from a3s_box.drivers.common.artifacts import GuestArtifacts, ensure_guest_artifacts
from a3s_box.errors import BoxError
from a3s_box.home import Home


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")


@pytest.fixture(scope="session")
def test_home() -> Home:
    base = os.environ.get("A3S_BOX_TEST_HOME") or str(Path.home() / ".cache" / "a3s-box-test")
    return Home(Path(base).absolute()).ensure()


@pytest.fixture(scope="session")
def artifacts(test_home: Home) -> GuestArtifacts:
    _need("apt-get", "dpkg-deb", "musl-gcc")
    try:
        return ensure_guest_artifacts(test_home)
    except BoxError as e:
        pytest.skip(f"cannot provision the guest kernel here: {e}")


@pytest.fixture(scope="session")
def base_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ext4 image holding busybox-static and its applet links."""
    _need("mkfs.ext4", "qemu-img", "qemu-system-x86_64")
    out = tmp_path_factory.mktemp("rootfs")
    root = out / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for a in applets:
        if not (root / "bin" / a).exists():
            (root / "bin" / a).symlink_to("busybox")
    disk = out / "base.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-d", str(root), str(disk), "32M"], check=True,
                   capture_output=True)
    return disk
