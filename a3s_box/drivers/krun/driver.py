"""The libkrun driver: one detached supervisor per box (supervisor.py), guest protocol
over vsock (libkrun maps guest port 1024 to RUNDIR/guest.sock; each host connection is
its own guest connection, so unlike QEMU there is no multiplexing shim).

start() copies the image's root folder for the box (once), installs our guest init,
writes RUNDIR/launch.json, starts the supervisor, waits for libkrun to create the
socket and the guest to answer HELLO, and sends CONFIG. Any failure, timeout or Ctrl-C
kills the supervisor's process group and removes the socket; libkrun and supervisor
failures become DriverError, guest silence GuestError, each naming the box.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from a3s_box.drivers.base import BoxLaunch, HostSupport, VmHandle, VmObservation, VmState
from a3s_box.drivers.krun import probe
from a3s_box.drivers.krun.rootfs import copy_root, install_guest_files
from a3s_box.drivers.krun.spec import KrunSpec, box_spec
from a3s_box.errors import DriverError, GuestError, HostUnsupported
from a3s_box.drivers.common.environ import host_process_env
from a3s_box.drivers.common.supervision import (connect_unix, exit_reason, is_supervisor,
                                         observe_supervised, rundir_of, send_signal,
                                         stop_supervised, wait_gone)
from a3s_box.guest.client import GuestClient
from a3s_box.home import Home

GUEST_SOCK = "guest.sock"
CONSOLE = "console.log"
RUNTIME_FILES = (GUEST_SOCK, "supervisor.pid", "supervisor.json", "exit.json", "config-error.txt")
SUPERVISOR = "a3s_box.drivers.krun.supervisor"


def log_tail(rundir: Path, lines: int = 12) -> str:
    """The end of the guest console and of libkrun's log, for error messages."""
    out = []
    for name in (CONSOLE, "vmm.log", "supervisor.log"):
        try:
            text = (rundir / name).read_bytes()[-8192:].decode("utf-8", "replace")
        except OSError:
            continue
        tail = [ln.rstrip("\r") for ln in text.splitlines() if ln.strip()][-lines:]
        if tail:
            out.append(f"{name}:\n" + "\n".join("  | " + ln for ln in tail))
    return "\n".join(out) or "(no output from the VM)"


def pid_is_supervisor(pid: int, rundir: str) -> bool:
    return is_supervisor(pid, rundir, SUPERVISOR)


def read_exit(rundir: Path) -> str:
    return exit_reason(rundir)


def _signal(pid: int, sig: signal.Signals, group: bool = False) -> None:
    send_signal(pid, sig, group)


def _wait_gone(pid: int, rundir: str, timeout: float) -> bool:
    return wait_gone(pid, rundir, SUPERVISOR, timeout)


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """Until no process of the group is left but zombies (or TIMEOUT passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive_in_group(p, pgid) for p in Path("/proc").iterdir() if p.name.isdigit()):
            return
        time.sleep(0.02)


def _alive_in_group(proc: Path, pgid: int) -> bool:
    try:
        fields = (proc / "stat").read_text().rpartition(")")[2].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X") and int(fields[2]) == pgid


def remove_runtime_files(rundir: Path) -> None:
    for name in RUNTIME_FILES:
        (rundir / name).unlink(missing_ok=True)


def spawn_supervisor(box_id: str, rundir: Path, spec: KrunSpec,
                     accel: str) -> tuple[VmHandle, int]:
    """Write launch.json, start the detached supervisor; its handle and process group.

    On failure nothing is left running: the caller owns the VM only once this returns."""
    tmp = rundir / ".launch.json"
    tmp.write_text(spec.to_json())
    os.replace(tmp, rundir / "launch.json")
    with open(rundir / "supervisor.log", "ab") as log:
        log.write(f"--- start {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        log.flush()
        try:
            starter = subprocess.Popen([sys.executable, "-m", SUPERVISOR, str(rundir),
                                        "--detach"], stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=log, start_new_session=True, close_fds=True,
                                       env=host_process_env())
        except OSError as e:
            raise DriverError(box_id, f"cannot start the supervisor: {e}") from e
    pgid = starter.pid  # session leader; the supervisor and the VM stay in its group
    try:
        if starter.wait() != 0:
            raise DriverError(box_id, f"the supervisor did not start\n{log_tail(rundir)}")
        pid = int((rundir / "supervisor.pid").read_text())
    except BaseException as e:
        _signal(pgid, signal.SIGKILL, group=True)
        if isinstance(e, (OSError, ValueError)):
            raise DriverError(box_id, f"the supervisor did not start: {e}") from e
        raise
    return VmHandle(driver="libkrun", box_id=box_id, pid=pid, channel=spec.socket,
                    console_log=spec.console, accel=accel,
                    extra={"rundir": str(rundir), "pgid": str(pgid)}), pgid


class KrunDriver:
    name = "libkrun"

    def __init__(self, home: Home, init_binary: Path | None = None,
                 check_host: bool = True) -> None:
        self.home = home
        self.init_binary = init_binary  # None: the cached build of our guest init
        # False skips the probe verdict (tests and benches that exercise a VMM which
        # cannot finish booting here: timeouts, kills); a real start always checks
        self.check_host = check_host

    def host_support(self) -> HostSupport:
        return probe.host_support(self.home)

    # --- start ---------------------------------------------------------------------
    def start(self, launch: BoxLaunch, timeout: float) -> VmHandle:
        accel = probe.host_accel()
        if self.check_host:
            support = self.host_support()
            if not support.usable:
                raise HostUnsupported(self.name, support.detail.removesuffix(" [cached]"))
        rundir = launch.rundir
        if launch.security == "strict":
            raise HostUnsupported(self.name, f"box {launch.box_id}: security: strict needs a confined VMM "
                                  "(a uid of its own, a cgroup, seccomp), and libkrun's supervisor is not "
                                  "confined yet: use driver: qemu, or security: relaxed")
        if launch.network is not None and launch.network.enabled:
            raise HostUnsupported(self.name, f"box {launch.box_id}: network mode "
                                  f"{launch.network.policy.mode} is not available with libkrun yet "
                                  "(its boxes have no network); use driver: qemu or driver: auto")
        if launch.volumes:
            raise HostUnsupported(self.name, f"box {launch.box_id}: volumes are not available "
                                  "with libkrun yet; use driver: qemu or driver: auto")
        if launch.rootfs_dir is None:
            raise DriverError(launch.box_id, "libkrun boots from the image's unpacked root "
                              "folder, and this box has none")
        rundir.mkdir(parents=True, exist_ok=True)
        remove_runtime_files(rundir)
        root = rundir / "root"
        copy_root(launch.box_id, launch.rootfs_dir, root)
        if self.init_binary is None:
            from a3s_box.guest.build import build_guest_init

            self.init_binary = build_guest_init(self.home.cache)
        spec = box_spec(launch.box_id, launch.vcpus, launch.memory_mib, str(root),
                        str(rundir / GUEST_SOCK), str(rundir / CONSOLE))
        install_guest_files(launch.box_id, root, self.init_binary, spec)
        handle, pgid = spawn_supervisor(launch.box_id, rundir, spec, accel)
        try:
            deadline = time.monotonic() + timeout
            client = self._wait_hello(handle, deadline)
            with client:
                client.seed()
                client.configure(launch.config, max(deadline - time.monotonic(), 1.0))
            return handle
        except BaseException as e:
            # Ctrl-C included: nothing of this VM may outlive a failed start
            _signal(pgid, signal.SIGKILL, group=True)
            _wait_gone(handle.pid, str(rundir), 5.0)
            _wait_group_gone(pgid, 5.0)  # the VM's other processes take a moment to die too
            (rundir / GUEST_SOCK).unlink(missing_ok=True)
            (rundir / "supervisor.pid").unlink(missing_ok=True)
            if isinstance(e, (OSError, ValueError)):
                raise DriverError(launch.box_id, f"start failed: {e}\n"
                                  f"{log_tail(rundir)}") from e
            raise

    def _wait_hello(self, handle: VmHandle, deadline: float) -> GuestClient:
        """A client that has exchanged HELLO. libkrun creates the socket only once the
        guest's vsock is up, and may accept before the guest listens: poll, retry."""
        rundir = Path(handle.extra["rundir"])
        last = "libkrun did not create the guest socket"
        while True:
            if not pid_is_supervisor(handle.pid, str(rundir)):
                reason = read_exit(rundir) or "the supervisor died (see supervisor.log)"
                raise DriverError(handle.box_id, f"VM stopped before the guest answered: "
                                  f"{reason}\n{log_tail(rundir)}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestError(handle.box_id, f"the guest init did not answer on vsock in "
                                 f"time ({last})\n{log_tail(rundir)}")
            if os.path.exists(handle.channel):
                try:
                    client = GuestClient(self.connect(handle, min(left, 2.0)),
                                         box=handle.box_id)
                except GuestError as e:
                    last = str(e)
                else:
                    try:
                        client.hello(min(left, 2.0))
                        return client
                    except GuestError as e:
                        client.close()
                        last = str(e)
            time.sleep(0.05)

    # --- running VMs ------------------------------------------------------------------
    def observe(self, handle: VmHandle) -> VmObservation:
        seen = observe_supervised(handle, SUPERVISOR, "supervisor")
        if seen.state is not VmState.RUNNING:
            # a dead VM's socket is garbage: a supervisor killed -9 could not remove it
            Path(handle.channel).unlink(missing_ok=True)
        return seen

    def connect(self, handle: VmHandle, timeout: float) -> socket.socket:
        return connect_unix(handle.box_id, handle.channel, timeout)

    def pause(self, handle: VmHandle) -> None:
        raise HostUnsupported(self.name, f"box {handle.box_id}: pause is not available with libkrun")

    def resume(self, handle: VmHandle) -> None:
        raise HostUnsupported(self.name, f"box {handle.box_id}: resume is not available with libkrun")

    def unpark(self, handle: VmHandle, launch: BoxLaunch, timeout: float) -> VmHandle:
        return handle  # libkrun cannot pause: its pool members are never parked

    def fork(self, source: VmHandle, source_launch: BoxLaunch, launch: BoxLaunch,
             timeout: float) -> VmHandle:
        raise HostUnsupported(self.name, f"box {source.box_id}: libkrun cannot snapshot a running VM, "
                              "so it cannot be forked (use driver: qemu)")

    def stop(self, handle: VmHandle, timeout: float) -> None:
        stop_supervised(handle, SUPERVISOR, self.connect, timeout)
        rundir = rundir_of(handle)
        (rundir / GUEST_SOCK).unlink(missing_ok=True)
        (rundir / "supervisor.pid").unlink(missing_ok=True)
