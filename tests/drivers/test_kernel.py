"""Guest kernel provisioning: the user's own kernel, Debian's via apt, the cache."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from a3s_box.drivers.common.artifacts import GuestArtifacts, ensure_guest_artifacts
from a3s_box.drivers.common.kernel import (ENV_KERNEL, ENV_MODULES, KernelError, cached_kernel,
                                    kernels_dir, versioned_package)
from a3s_box.errors import BoxError
from a3s_box.home import Home

APT_CACHE_DEPENDS = """linux-image-cloud-amd64
  Depends: linux-image-6.1.0-56-cloud-amd64
"""


def test_versioned_package_from_apt_cache_output() -> None:
    assert versioned_package(APT_CACHE_DEPENDS, "linux-image-cloud-amd64") == \
        "linux-image-6.1.0-56-cloud-amd64"
    with pytest.raises(KernelError, match="no versioned linux-image package listed"):
        versioned_package("linux-image-cloud-amd64\n", "linux-image-cloud-amd64")


def test_without_apt_the_error_says_to_set_the_kernel(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # a host without apt: nothing named apt-cache on PATH (real lookup, nothing stubbed)
    monkeypatch.delenv(ENV_KERNEL, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BoxError, match=f"apt-cache is not available on this host: set "
                                       f"{ENV_KERNEL}"):
        ensure_guest_artifacts(Home(tmp_path / "home"))
    assert not (kernels_dir(tmp_path / "home" / "cache") / "current").exists()


def test_provisioned_artifacts_need_no_network_or_tools(artifacts: GuestArtifacts,
                                                        test_home: Home,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # neither apt nor a compiler is reachable
    again = ensure_guest_artifacts(test_home)
    assert again == artifacts


def test_artifacts_kept_by_the_process_are_checked_against_their_files(artifacts: GuestArtifacts,
                                                                      tmp_path: Path) -> None:
    """A start asks twice; the answer is kept, but not past a change to what it names."""
    home = Home(tmp_path / "home")
    shutil.copytree(kernels_dir(artifacts.kernel.parent.parent.parent), kernels_dir(home.cache), symlinks=True)
    first = ensure_guest_artifacts(home)
    assert ensure_guest_artifacts(home) == first
    first.initramfs.unlink()  # gone from the cache: made again, not handed out missing
    assert ensure_guest_artifacts(home) == first and first.initramfs.is_file()
    current = kernels_dir(home.cache) / "current"
    release_dir = kernels_dir(home.cache) / first.kernel_release
    other = release_dir.with_name("9.9.9-other")
    shutil.copytree(release_dir, other)
    current.unlink()
    current.write_text("9.9.9-other\n")  # `box setup` provisioned another kernel
    assert ensure_guest_artifacts(home).kernel == other / "vmlinuz"


def test_a_half_provisioned_kernel_does_not_count(artifacts: GuestArtifacts,
                                                  tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    release_dir = kernels_dir(cache) / artifacts.kernel_release
    shutil.copytree(artifacts.kernel.parent, release_dir)  # copied, but `current` never written
    assert cached_kernel(cache) is None
    (kernels_dir(cache) / "current").write_text(artifacts.kernel_release + "\n")
    found = cached_kernel(cache)
    assert found is not None and found.release == artifacts.kernel_release


def test_users_own_kernel_and_modules(artifacts: GuestArtifacts, test_home: Home, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = cached_kernel(test_home.cache)
    assert kernel is not None
    mods = tmp_path / "lib/modules/6.1.0-mine"
    (mods / "kernel").mkdir(parents=True)
    for m in kernel.modules:
        (mods / "kernel" / f"{m.name}.ko").write_bytes(m.data)
    home = Home(tmp_path / "home")
    # the guest init is compiled once per source version: reuse it (other tests build it)
    shutil.copytree(artifacts.init_binary.parent, home.cache / artifacts.init_binary.parent.name)
    monkeypatch.setenv(ENV_KERNEL, str(artifacts.kernel))
    monkeypatch.setenv(ENV_MODULES, str(mods))
    mine = ensure_guest_artifacts(home)
    assert mine.kernel == artifacts.kernel and mine.kernel_release == "6.1.0-mine"
    assert mine.initramfs.read_bytes() == artifacts.initramfs.read_bytes()  # same init + modules
    monkeypatch.setenv(ENV_KERNEL, str(tmp_path / "missing-vmlinuz"))
    with pytest.raises(KernelError, match=f"{ENV_KERNEL}=.*missing-vmlinuz: no such file"):
        ensure_guest_artifacts(Home(tmp_path / "home"))
