"""The supervisor and driver as real processes around the real libkrun.

The guest here is `sleeper` (never listens, never powers off), so these run the same on
a host whose KVM boots guests and on one whose KVM cannot (there the VMM sits in
krun_start_enter until it faults): what is tested is the host side of starting,
waiting, killing and cleaning up, not the guest.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from a3s_box.drivers.base import BoxLaunch, VmHandle, VmState
from a3s_box.drivers.krun.driver import KrunDriver, pid_is_supervisor, spawn_supervisor
from a3s_box.drivers.krun.library import Krun
from a3s_box.drivers.krun.rootfs import copy_root, install_guest_files
from a3s_box.drivers.krun.spec import KrunSpec, box_spec
from a3s_box.errors import DriverError, GuestError, HostUnsupported
from a3s_box.guest.protocol import BoxConfig
from a3s_box.home import Home


def processes_in(rundir: Path) -> list[int]:
    """Every process whose command line names this rundir (supervisor and VM child)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if str(rundir).encode() in cmd.split(b"\0") and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def wait_until(cond: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def vm(krun: Krun, sleeper: Path, busybox_root: Path, tmp_path: Path) -> Iterator[VmHandle]:
    rundir = tmp_path / "run"
    rundir.mkdir()
    copy_root("t.vm", busybox_root, rundir / "root")
    spec = box_spec("t.vm", 1, 128, str(rundir / "root"), str(rundir / "guest.sock"),
                    str(rundir / "console.log"))
    install_guest_files("t.vm", rundir / "root", sleeper, spec)
    handle, pgid = spawn_supervisor("t.vm", rundir, spec, "kvm")
    yield handle
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_a_configuration_error_is_the_recorded_exit(krun: Krun, tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    spec = box_spec("t.bad", 0, 128, str(tmp_path / "root"), "", str(tmp_path / "c.log"))
    (tmp_path / "launch.json").write_text(spec.to_json())
    proc = subprocess.run([sys.executable, "-m", "a3s_box.drivers.krun.supervisor",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    record = json.loads((tmp_path / "exit.json").read_text())
    assert record["reason"].startswith("box t.bad: vcpus 0: libkrun takes 1 to ")


def test_a_supervisor_killed_hard_shows_exited_and_leaves_no_socket(
        vm: VmHandle, test_home: Home) -> None:
    driver = KrunDriver(test_home)
    rundir = Path(vm.extra["rundir"])
    assert driver.observe(vm).state == VmState.RUNNING
    wait_until(lambda: len(processes_in(rundir)) == 2, "the VM child")
    # stands in for the socket libkrun creates once a guest's vsock is up
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(vm.channel)
    os.kill(vm.pid, signal.SIGKILL)
    wait_until(lambda: not processes_in(rundir), "the VM to die with its supervisor")
    seen = driver.observe(vm)
    assert seen.state == VmState.EXITED
    assert seen.exit_reason == "the supervisor is gone without a word (killed?)"
    assert not os.path.lexists(vm.channel)


def test_stop_of_a_guest_that_cannot_answer_kills_it_and_records_why(
        vm: VmHandle, test_home: Home) -> None:
    driver = KrunDriver(test_home)
    rundir = Path(vm.extra["rundir"])
    driver.stop(vm, timeout=0.5)
    assert not processes_in(rundir)
    seen = driver.observe(vm)
    assert (seen.state, seen.exit_reason) == (VmState.EXITED, "VMM killed by SIGKILL")
    assert not os.path.lexists(vm.channel) and not (rundir / "supervisor.pid").exists()
    driver.stop(vm, timeout=0.5)  # idempotent


def test_a_guest_that_never_answers_times_out_and_nothing_is_left(
        krun: Krun, sleeper: Path, busybox_root: Path, tmp_path: Path,
        test_home: Home) -> None:
    rundir = tmp_path / "box"
    launch = BoxLaunch("t.silent", rundir, 1, 128, BoxConfig(hostname="silent"),
                       rootfs_dir=busybox_root, security="relaxed")
    # check_host=False: boot even where the probe said no, the guest is silent anyway
    with pytest.raises(GuestError) as e:
        KrunDriver(test_home, init_binary=sleeper, check_host=False).start(launch, 1.5)
    assert str(e.value).startswith("box t.silent: the guest init did not answer on vsock "
                                   "in time (libkrun did not create the guest socket)")
    assert not processes_in(rundir)
    assert not (rundir / "guest.sock").exists() and not (rundir / "supervisor.pid").exists()
    assert (rundir / "root" / "bin" / "busybox").is_file()  # the box's copy stays


def test_a_vanished_root_folder_is_named_and_nothing_starts(
        tmp_path: Path, test_home: Home, sleeper: Path) -> None:
    launch = BoxLaunch("t.gone", tmp_path / "box", 1, 128, BoxConfig(hostname="gone"),
                       rootfs_dir=tmp_path / "unpacked", security="relaxed")
    with pytest.raises(DriverError) as e:
        KrunDriver(test_home, init_binary=sleeper, check_host=False).start(launch, 5.0)
    assert str(e.value) == (f"box t.gone: root folder {tmp_path}/unpacked is gone (pull the "
                            "image again)")
    assert not (tmp_path / "box" / "launch.json").exists()
    assert not (tmp_path / "box" / "root").exists()


def test_a_box_without_a_root_folder_is_refused(tmp_path: Path, test_home: Home) -> None:
    launch = BoxLaunch("t.disk", tmp_path / "box", 1, 128, BoxConfig(hostname="d"), security="relaxed")
    with pytest.raises(DriverError, match="box t.disk: libkrun boots from the image's "
                                          "unpacked root folder"):
        KrunDriver(test_home, check_host=False).start(launch, 5.0)


def test_pid_check_refuses_other_processes(tmp_path: Path) -> None:
    assert not pid_is_supervisor(os.getpid(), str(tmp_path))
    assert not pid_is_supervisor(2**22 + 1, str(tmp_path))


def test_spec_survives_the_supervisor_round_trip(vm: VmHandle) -> None:
    rundir = Path(vm.extra["rundir"])
    spec = KrunSpec.from_json((rundir / "launch.json").read_text())
    assert spec.socket == vm.channel and spec.box_id == "t.vm"
    assert json.loads((rundir / "root" / ".krun_config.json").read_text())["Cmd"] == ["/init"]


def test_a_strict_box_is_refused_until_the_supervisor_is_confined(tmp_path: Path, test_home: Home) -> None:
    launch = BoxLaunch("t.strict", tmp_path / "box", 1, 128, BoxConfig(hostname="s"),
                       rootfs_dir=tmp_path)
    with pytest.raises(HostUnsupported, match="security: strict needs a confined VMM"):
        KrunDriver(test_home, check_host=False).start(launch, 5.0)
    assert not (tmp_path / "box").exists()
