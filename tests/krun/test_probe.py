"""The host probe (a real, cached probe boot) and, where it says yes, a real boot."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from a3s_box.drivers import get_driver
from a3s_box.drivers.base import BoxLaunch, HostSupport, VmState
from a3s_box.drivers.krun import KrunDriver, host_support
from a3s_box.drivers.krun.library import Krun
from a3s_box.drivers.krun.probe import CANNOT, boot_probe, probe_key
from a3s_box.drivers.qemu.driver import QemuDriver
from a3s_box.errors import HostUnsupported
from a3s_box.guest.client import GuestClient
from a3s_box.guest.protocol import BoxConfig
from a3s_box.home import Home


@pytest.fixture(scope="module")
def support(krun: Krun, test_home: Home) -> HostSupport:
    return host_support(test_home)  # boots the probe guest once per host/library/kernel


def test_a_probe_guest_that_never_powers_off_is_cut_short(krun: Krun, sleeper: Path) -> None:
    v = boot_probe(sleeper, timeout=1.5)
    assert not v.usable and v.detail.startswith(CANNOT) and v.detail.endswith("qemu/tcg")


def test_the_verdict_is_cached_under_its_key(krun: Krun, support: HostSupport,
                                             test_home: Home) -> None:
    again = host_support(test_home)
    assert (again.usable, again.detail) == (support.usable,
                                            support.detail.removesuffix(" [cached]") +
                                            " [cached]")
    saved = json.loads((test_home.cache / "krun-probe.json").read_text())
    init = Path(saved["key"]["guest_init"])
    assert saved["key"] == probe_key(krun.paths, init)
    assert saved["key"]["host_kernel"] == os.uname().release


def test_auto_picks_what_the_probe_says(support: HostSupport, test_home: Home) -> None:
    picked = get_driver("auto", test_home)
    assert isinstance(picked, KrunDriver if support.usable else QemuDriver)
    assert isinstance(get_driver("libkrun", test_home), KrunDriver)


def test_start_is_refused_with_the_probe_reason(support: HostSupport, test_home: Home,
                                                busybox_root: Path, tmp_path: Path) -> None:
    if support.usable:
        pytest.skip("this host runs libkrun guests")
    launch = BoxLaunch("t.no", tmp_path / "box", 1, 128, BoxConfig(hostname="no"),
                       rootfs_dir=busybox_root, security="relaxed")
    with pytest.raises(HostUnsupported) as e:
        KrunDriver(test_home).start(launch, 10.0)
    assert str(e.value) == f"libkrun: {support.detail.removesuffix(' [cached]')}"
    assert not (tmp_path / "box").exists()


def test_a_box_boots_answers_and_stops(support: HostSupport, test_home: Home,
                                       busybox_root: Path, tmp_path: Path) -> None:
    if not support.usable:
        pytest.skip(support.detail)
    driver = KrunDriver(test_home)
    launch = BoxLaunch("t.boot", tmp_path / "box", 1, 256,
                       BoxConfig(hostname="boot", argv=("/bin/sleep", "100000")),
                       rootfs_dir=busybox_root, security="relaxed")
    handle = driver.start(launch, 30.0)
    try:
        assert driver.observe(handle).state == VmState.RUNNING
        with GuestClient(driver.connect(handle, 5.0), box="t.boot") as c:
            info = c.hello(5.0)
            assert info["transport"] == "vsock"
            done = c.run(["/bin/echo", "hi"])
            assert done.stdout == b"hi\n"
    finally:
        driver.stop(handle, 10.0)
    assert driver.observe(handle).state == VmState.EXITED
    assert not Path(handle.channel).exists()
