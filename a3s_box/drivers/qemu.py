"""The QEMU driver: one detached shim per box, which runs QEMU and serves guest.sock.

start() writes RUNDIR/launch.json, starts `python -m a3s_box.drivers.shim RUNDIR
--detach` in a new session, waits for guest.sock (the guest answered HELLO), and sends
CONFIG. Any failure, timeout or Ctrl-C on the way kills the shim's whole process group
(shim + QEMU) and removes its sockets, then raises naming the box with the end of
console.log. QEMU failures become DriverError, guest silence GuestError.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from a3s_box.drivers.artifacts import GuestArtifacts, ensure_guest_artifacts
from a3s_box.drivers.base import BoxLaunch, HostSupport, VmHandle, VmObservation
from a3s_box.drivers.probe import probe_accelerators
from a3s_box.drivers.boxnet import install_box_ca, prepare_network
from a3s_box.drivers.boxvol import mount_volumes, volume_devices
from a3s_box.drivers.qmp import Qmp, QmpError
from a3s_box.drivers.qemu_argv import QemuSpec, host_arch, qemu_argv, read_host_tsc_khz
from a3s_box.errors import BoxError, DriverError, GuestError, HostUnsupported
from a3s_box.drivers.supervision import (connect_unix, exit_reason, is_supervisor,
                                         observe_supervised, rundir_of, stop_supervised, tail,
                                         wait_gone)
from a3s_box.guest.client import GuestClient
from a3s_box.home import Home

CONSOLE = "console.log"
GUEST_SOCK = "guest.sock"
RUNTIME_FILES = ("guest.sock", "channel.sock", "qmp.sock", "shim.pid", "launch.json",
                 ".guest.sock.tmp", "network.json")


SHIM = "a3s_box.drivers.shim"


def console_tail(path: Path, lines: int = 15) -> str:
    return "\n".join("  | " + ln for ln in tail(path, lines)) or "(no console output)"


def _pid_is_shim(pid: int, rundir: str) -> bool:
    return is_supervisor(pid, rundir, SHIM)


def _wait_gone(pid: int, rundir: str, timeout: float) -> bool:
    return wait_gone(pid, rundir, SHIM, timeout)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# Measured: the Debian cloud kernel and our initramfs power off during boot below this.
QEMU_MIN_MEMORY_MIB = 80


class QemuDriver:
    name = "qemu"

    def __init__(self, home: Home, binary: str | None = None,
                 artifacts: GuestArtifacts | None = None) -> None:
        self.home = home
        self.artifacts = artifacts  # None: the provisioned ones (tests boot others)
        self.arch = host_arch()
        self.binary = binary or os.environ.get("A3S_BOX_QEMU") or self.arch.binary

    # --- host -----------------------------------------------------------------------
    def host_support(self) -> HostSupport:
        if shutil.which(self.binary) is None:
            return HostSupport(self.name, False, "",
                               f"{self.binary} not found: install qemu-system (box setup)")
        try:
            r = probe_accelerators(self.home, self.binary)
        except BoxError as e:
            return HostSupport(self.name, False, "", str(e))
        return HostSupport(self.name, True, r.accel, r.detail)

    def _accel(self) -> str:
        support = self.host_support()
        if not support.usable:
            raise HostUnsupported(self.name, support.detail)
        return support.accel

    # --- start ------------------------------------------------------------------------
    def start(self, launch: BoxLaunch, timeout: float) -> VmHandle:
        art = self.artifacts or ensure_guest_artifacts(self.home)
        accel = self._accel()
        rundir = launch.rundir
        rundir.mkdir(parents=True, exist_ok=True)
        _remove_runtime_files(rundir)
        (rundir / "exit.json").unlink(missing_ok=True)
        forwards = prepare_network(launch) if launch.network and launch.network.enabled else None
        shares, volume_disks, virtiofsd = volume_devices(launch)
        spec = QemuSpec(binary=self.binary, accel=accel, vcpus=launch.vcpus,
                        memory_mib=launch.memory_mib, kernel=art.kernel,
                        initramfs=art.initramfs, console_log=rundir / CONSOLE,
                        channel=rundir / "channel.sock", qmp=rundir / "qmp.sock",
                        disk=launch.disk, machine=self.arch.machine, console=self.arch.console,
                        tsc_khz=read_host_tsc_khz(), forwards=forwards, shares=shares,
                        volume_disks=volume_disks)
        tmp = rundir / ".launch.json"
        tmp.write_text(json.dumps({"box_id": launch.box_id, "argv": qemu_argv(spec),
                                   "channel": str(rundir / "channel.sock"),
                                   "guest_socket": str(rundir / GUEST_SOCK),
                                   "network": forwards is not None,
                                   "virtiofsd": virtiofsd}, indent=1))
        os.replace(tmp, rundir / "launch.json")
        with open(rundir / "shim.log", "ab") as log:
            log.write(f"--- start {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
            log.flush()
            try:
                starter = subprocess.Popen(
                    [sys.executable, "-m", "a3s_box.drivers.shim", str(rundir), "--detach"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                    close_fds=True)
            except OSError as e:
                raise DriverError(launch.box_id, f"cannot start the shim: {e}") from e
        pgid = starter.pid  # session leader; the shim and QEMU stay in its group
        handle: VmHandle | None = None
        try:
            starter.wait()
            pid = int((rundir / "shim.pid").read_text())
            handle = VmHandle(driver=self.name, box_id=launch.box_id, pid=pid,
                              channel=str(rundir / GUEST_SOCK),
                              console_log=str(rundir / CONSOLE), accel=accel,
                              extra={"pgid": str(pgid), "rundir": str(rundir),
                                     "qmp": str(rundir / "qmp.sock")})
            deadline = time.monotonic() + timeout
            try:
                self._wait_ready(handle, deadline)
            except DriverError as e:
                if launch.memory_mib < QEMU_MIN_MEMORY_MIB:
                    said = str(e).removeprefix(f"box {launch.box_id}: ")
                    raise DriverError(launch.box_id, f"{said}\nhint: the Debian guest kernel needs about "
                                      f"{QEMU_MIN_MEMORY_MIB}Mi to boot; this box has "
                                      f"{launch.memory_mib}Mi") from e
                raise
            with GuestClient(self.connect(handle, 5.0), box=launch.box_id) as client:
                client.hello(max(deadline - time.monotonic(), 1.0))
                client.seed()  # before anything random happens in the guest
                if launch.network is not None and launch.network.secrets:
                    install_box_ca(client, rundir)
                mount_volumes(client, launch)
                client.configure(launch.config, max(deadline - time.monotonic(), 1.0))
            return handle
        except BaseException as e:
            # Ctrl-C included: nothing of this VM may outlive a failed start
            _killpg(pgid, signal.SIGKILL)
            if handle is not None:
                _wait_gone(handle.pid, str(rundir), 5.0)
            _remove_runtime_files(rundir)
            if isinstance(e, (OSError, ValueError)):
                raise DriverError(launch.box_id, f"start failed: {e}\nconsole:\n"
                                  f"{console_tail(rundir / CONSOLE)}") from e
            raise

    def _wait_ready(self, handle: VmHandle, deadline: float) -> None:
        rundir = Path(handle.extra["rundir"])
        while not Path(handle.channel).exists():
            exit_file = rundir / "exit.json"
            if exit_file.exists() or not _pid_is_shim(handle.pid, str(rundir)):
                reason = exit_reason(rundir) or "the shim died (see shim.log)"
                raise DriverError(handle.box_id, f"VM stopped before the guest answered: "
                                  f"{reason}\nconsole:\n{console_tail(Path(handle.console_log))}")
            if time.monotonic() >= deadline:
                raise GuestError(handle.box_id, "the guest init did not answer in time; "
                                 f"console:\n{console_tail(Path(handle.console_log))}")
            time.sleep(0.02)

    # --- running VMs ----------------------------------------------------------------------
    def observe(self, handle: VmHandle) -> VmObservation:
        return observe_supervised(handle, SHIM, "shim")

    def connect(self, handle: VmHandle, timeout: float) -> socket.socket:
        return connect_unix(handle.box_id, handle.channel, timeout)

    def pause(self, handle: VmHandle) -> None:
        with Qmp(handle.extra["qmp"], handle.box_id) as q:
            q.command("stop")

    def resume(self, handle: VmHandle) -> None:
        with Qmp(handle.extra["qmp"], handle.box_id) as q:
            q.command("cont")

    def stop(self, handle: VmHandle, timeout: float) -> None:
        try:
            self.resume(handle)  # a paused guest cannot shut down cleanly
        except (QmpError, KeyError):
            pass
        stop_supervised(handle, SHIM, self.connect, timeout)
        # no killpg here: once its leader is long gone a process group id may be reused
        _remove_runtime_files(rundir_of(handle))


def _remove_runtime_files(rundir: Path) -> None:
    for name in RUNTIME_FILES:
        (rundir / name).unlink(missing_ok=True)
    for sock in rundir.glob("vfs*.sock*"):
        sock.unlink(missing_ok=True)
