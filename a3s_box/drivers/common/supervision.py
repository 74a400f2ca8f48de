"""What every driver does with its per-box supervisor process (QEMU's shim, libkrun's
worker): recognise it, wait for it to go, signal it, read why it ended, reach the guest
through its socket, and ask the guest to power off.

Supervisors outlive the a3s-box that started them (as containerd's shims outlive a
containerd upgrade). The handshake: each supervisor writes RUNDIR/supervisor.json when it
starts, naming the protocol it speaks with the host (its run folder's files, its
socket, its signals) and its release. A host adopts the protocols in ADOPTABLE and calls
every other one outdated: the plan then stops that box's VM cleanly and boots it again
under this release, and says so. Supervisors of v0.1.0 wrote no record: protocol 1.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from dataclasses import dataclass

from a3s_box.atomic import write_text_atomic
from a3s_box.drivers.base import VmHandle, VmObservation, VmState
from a3s_box.errors import BoxError, GuestError
from a3s_box.guest.client import GuestClient
from a3s_box.version import __version__

# 1: v0.1.0 (no record). 2: the record itself; exit.json names a helper (egress proxy,
# virtiofsd) whose death stopped the VM.
SUPERVISOR_PROTOCOL = 2
EXEC_RETRIES = 200  # 5 ms apart: how long an exec may leave /proc/PID/cmdline empty
ADOPTABLE = frozenset({1, 2})
RECORD = "supervisor.json"


@dataclass(frozen=True)
class SupervisorRecord:
    protocol: int  # 0: a record this release cannot read
    release: str


def write_supervisor_record(rundir: Path) -> None:
    """What the supervisor starting now speaks (written before it serves anything)."""
    write_text_atomic(rundir / RECORD, json.dumps({"protocol": SUPERVISOR_PROTOCOL, "release": __version__,
                                                   "pid": os.getpid()}, sort_keys=True) + "\n")


def read_supervisor_record(rundir: Path) -> SupervisorRecord:
    try:
        data = json.loads((rundir / RECORD).read_text())
    except FileNotFoundError:
        return SupervisorRecord(1, "0.1.0 or older")
    except (OSError, ValueError):
        return SupervisorRecord(0, "unknown")
    protocol = data.get("protocol") if isinstance(data, dict) else None
    if not isinstance(protocol, int) or isinstance(protocol, bool):
        return SupervisorRecord(0, "unknown")
    return SupervisorRecord(protocol, str(data.get("release") or "unknown"))


def tail(path: Path, lines: int = 15) -> list[str]:
    """The last non-empty lines of a log, for error messages."""
    try:
        text = path.read_bytes()[-8192:].decode("utf-8", "replace")
    except OSError:
        return []
    return [ln.rstrip("\r") for ln in text.splitlines() if ln.strip()][-lines:]


def is_supervisor(pid: int, rundir: str, module: str | tuple[str, ...]) -> bool:
    """Alive, not a zombie, and really this box's supervisor (pids get reused). MODULE:
    the supervisor's module, or several (this release's, then older releases')."""
    return supervisor_module(pid, rundir, (module,) if isinstance(module, str) else module) is not None


def supervisor_module(pid: int, rundir: str, modules: tuple[str, ...]) -> str | None:
    """Which of MODULES runs as PID for RUNDIR (None: none, or gone)."""
    if sys.platform != "linux":
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return modules[0]
    for _ in range(EXEC_RETRIES):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = _cmdline(pid)
        except OSError:
            return None
        if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
            return None
        if cmdline != [b""]:
            break
        # empty while the process execs (a shim becoming its C loop): not an answer yet
        time.sleep(0.005)
    for m in modules:
        # forked off the fork server: titled "MODULE RUNDIR"; started by `python -m`:
        # MODULE and RUNDIR among its arguments
        if cmdline[0] == f"{m} {rundir}".encode() or (m.encode() in cmdline and rundir.encode() in cmdline):
            return m
    return None


def _cmdline(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")


def wait_gone(pid: int, rundir: str, module: str | tuple[str, ...], timeout: float) -> bool:
    """Wait for the supervisor to end; False if it still runs after `timeout`."""
    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        fd = -1
    try:
        deadline = time.monotonic() + timeout
        while is_supervisor(pid, rundir, module):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if fd >= 0:
                select.select([fd], [], [], min(left, 0.2))  # zombies stay readable: re-check
            else:
                time.sleep(min(left, 0.02))
        return True
    finally:
        if fd >= 0:
            os.close(fd)


def send_signal(pid: int, sig: signal.Signals, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def exit_reason(rundir: Path) -> str:
    """What the supervisor wrote in exit.json when its VM ended ("" if nothing)."""
    return str(_exit_record(rundir).get("reason") or "")


def _exit_record(rundir: Path) -> dict[str, object]:
    try:
        data = json.loads((rundir / "exit.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def connect_unix(box_id: str, path: str, timeout: float) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except OSError as e:
        s.close()
        raise GuestError(box_id, f"cannot reach the guest at {path}: {e.strerror or e}") from e
    s.settimeout(None)
    return s


def ask_guest_to_power_off(handle: VmHandle, connect: Callable[[VmHandle, float], socket.socket],
                           timeout: float) -> None:
    """SHUTDOWN through the guest protocol; a guest that cannot answer is left to the
    caller's harder means."""
    try:
        with GuestClient(connect(handle, 2.0), box=handle.box_id) as c:
            c.hello(min(timeout, 5.0))
            c.shutdown(timeout=min(timeout, 5.0))
    except BoxError:
        pass


def rundir_of(handle: VmHandle) -> Path:
    return Path(handle.extra.get("rundir") or Path(handle.channel).parent)


def observe_supervised(handle: VmHandle, module: str | tuple[str, ...], what: str) -> VmObservation:
    """RUNNING while the supervisor lives (`outdated` says so when it is an older
    release's: MODULE's later names); else why it ended, as far as anyone knows."""
    rundir = rundir_of(handle)
    modules = (module,) if isinstance(module, str) else module
    running = supervisor_module(handle.pid, str(rundir), modules)
    if running is not None and running != modules[0]:
        return VmObservation(VmState.RUNNING, outdated=f"its VM runs under an older a3s-box's {what} "
                                                       f"({running})")
    if running is not None:
        said = read_supervisor_record(rundir)
        if said.protocol not in ADOPTABLE:
            return VmObservation(VmState.RUNNING, outdated=(
                f"its VM runs under a {what} of a3s-box {said.release} speaking protocol {said.protocol}; "
                f"this release adopts protocols {', '.join(map(str, sorted(ADOPTABLE)))}"))
        return VmObservation(VmState.RUNNING)
    record = _exit_record(rundir)
    if reason := str(record.get("reason") or ""):
        return VmObservation(VmState.EXITED, reason, clean=record.get("status") == 0)
    if rundir.exists():
        return VmObservation(VmState.EXITED, f"the {what} is gone without a word (killed?)")
    return VmObservation(VmState.MISSING)


def stop_supervised(handle: VmHandle, module: str | tuple[str, ...],
                    connect: Callable[[VmHandle, float], socket.socket], timeout: float) -> None:
    """Power off through the guest, then SIGTERM the supervisor (it ends the VM and
    reports), then SIGKILL (the VM follows by PDEATHSIG). Idempotent."""
    rundir = str(rundir_of(handle))
    if not is_supervisor(handle.pid, rundir, module):
        return
    deadline = time.monotonic() + timeout
    ask_guest_to_power_off(handle, connect, timeout)
    if wait_gone(handle.pid, rundir, module, max(deadline - time.monotonic(), 0.1)):
        return
    send_signal(handle.pid, signal.SIGTERM)
    if not wait_gone(handle.pid, rundir, module, 3.0):
        send_signal(handle.pid, signal.SIGKILL)
        wait_gone(handle.pid, rundir, module, 3.0)
