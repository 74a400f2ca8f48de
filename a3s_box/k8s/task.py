"""One containerd task as an a3s-box microVM: the container's rootfs (the snapshotter's
mounts, mounted on the bundle's rootfs/ and made into an ext4 disk) becomes the VM's
root; the container's process runs in it as a session of the guest init, its stdio
wired to the FIFOs containerd gives; `ctr task exec` processes are further sessions.

Side effects live here (mounts, disks, VMs); the ttrpc routing is service.py's.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from a3s_box.drivers.base import BoxLaunch, VmHandle
from a3s_box.guest.client import GuestClient, Session
from a3s_box.guest.protocol import BoxConfig, ExecRequest, Namespace
from a3s_box.home import Home
from a3s_box.k8s.events import Publisher
from a3s_box.k8s.service import FAILED_PRECONDITION, NOT_FOUND, ShimError

DEFAULT_MEMORY_MIB = 256


@dataclass
class Proc:
    """The container's process or an exec'd one: a session in the guest."""

    argv: list[str]
    env: list[str]
    cwd: str
    terminal: bool
    stdin: str
    stdout: str
    stderr: str
    session: Session | None = None
    pid: int = 0
    exit_status: int | None = None
    exited_at: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)


def _process_of(spec: dict[str, Any]) -> tuple[list[str], list[str], str]:
    p = spec.get("process") or {}
    return [str(a) for a in p.get("args") or []], [str(e) for e in p.get("env") or []], str(p.get("cwd") or "/")


def _memory_mib(spec: dict[str, Any]) -> int:
    limit = (((spec.get("linux") or {}).get("resources") or {}).get("memory") or {}).get("limit")
    return max(DEFAULT_MEMORY_MIB, int(limit) >> 20) if limit else DEFAULT_MEMORY_MIB


def _vcpus(spec: dict[str, Any]) -> int:
    cpu = ((spec.get("linux") or {}).get("resources") or {}).get("cpu") or {}
    quota, period = cpu.get("quota"), cpu.get("period")
    if quota and period and int(quota) > 0:
        return max(1, -(-int(quota) // int(period)))
    return 1


class Task:
    def __init__(self, home: Home, container_id: str, bundle: Path, rundir: Path,
                 publisher: Publisher | None = None) -> None:
        self.home = home
        self.publisher = publisher
        self.id = container_id
        self.bundle = bundle
        self.state_dir = bundle / "a3sbox"  # its disks
        self.rundir = rundir  # the VM's sockets: a short path (sun_path holds 107 bytes)
        try:
            self.spec: dict[str, Any] = json.loads((bundle / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise ShimError(FAILED_PRECONDITION, f"task {container_id}: the bundle {bundle} has no readable "
                            f"config.json ({e})") from e
        self.procs: dict[str, Proc] = {}
        self.handle: VmHandle | None = None
        self.client: GuestClient | None = None
        self.mounted = False
        self.lock = threading.Lock()

    # --- create / start -----------------------------------------------------------
    def create(self, mounts: list[Any], terminal: bool, stdin: str, stdout: str, stderr: str) -> int:
        from a3s_box.drivers.qemu.driver import QemuDriver

        argv, env, cwd = _process_of(self.spec)
        self.procs[""] = Proc(argv, env, cwd, terminal, stdin, stdout, stderr)
        rootfs = self.bundle / "rootfs"
        rootfs.mkdir(exist_ok=True)
        for m in mounts:  # the snapshotter's mounts make the container's root
            opts = ",".join(m.options)
            r = subprocess.run(["mount", "-t", m.type, *(["-o", opts] if opts else []), m.source, str(rootfs)],
                               capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise ShimError(FAILED_PRECONDITION, f"mount rootfs ({m.type}): {r.stderr.strip()}")
            self.mounted = True
        self.state_dir.mkdir(exist_ok=True)
        disk = self._disk_from(rootfs)
        launch = BoxLaunch(box_id=f"k8s.{self.id}"[:60], rundir=self.rundir, vcpus=_vcpus(self.spec),
                           memory_mib=_memory_mib(self.spec), disk=disk,
                           config=BoxConfig(hostname=str(self.spec.get("hostname") or self.id[:63])),
                           boot="cold")
        self.handle = QemuDriver(self.home).start(launch, 180.0)
        self.client = GuestClient(QemuDriver(self.home).connect(self.handle, 10.0), box=self.id)
        self.client.hello(10.0)
        return self.handle.pid

    def _disk_from(self, rootfs: Path) -> Path:
        """The rootfs as an ext4 image (mkfs.ext4 -d), under a qcow2 overlay the VM writes."""
        used = int(subprocess.run(["du", "-sb", str(rootfs)], capture_output=True, text=True,
                                  check=True).stdout.split()[0])
        raw = self.state_dir / "rootfs.ext4"
        size_mib = max(256, (used >> 20) * 2 + 256)
        r = subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(rootfs), str(raw), f"{size_mib}M"],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise ShimError(FAILED_PRECONDITION, f"rootfs disk: {r.stderr.strip()}")
        os.chmod(raw, 0o644)
        overlay = self.state_dir / "disk.qcow2"
        r = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(raw), str(overlay)],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise ShimError(FAILED_PRECONDITION, f"rootfs overlay: {r.stderr.strip()}")
        return overlay

    def add_exec(self, exec_id: str, spec_json: bytes, terminal: bool, stdin: str, stdout: str, stderr: str) -> None:
        p = json.loads(spec_json or b"{}")
        self.procs[exec_id] = Proc([str(a) for a in p.get("args") or []], [str(e) for e in p.get("env") or []],
                                   str(p.get("cwd") or "/"), terminal, stdin, stdout, stderr)

    def start(self, exec_id: str = "") -> int:
        proc = self._proc(exec_id)
        if self.client is None:
            raise ShimError(FAILED_PRECONDITION, f"task {self.id} has no VM (create it first)")
        out = os.open(proc.stdout, os.O_WRONLY) if proc.stdout else -1
        err = os.open(proc.stderr, os.O_WRONLY) if proc.stderr else out

        def writer(fd: int) -> Any:
            def w(data: bytes) -> None:
                if fd >= 0:
                    try:
                        os.write(fd, data)
                    except OSError:
                        pass
            return w
        req = ExecRequest(argv=tuple(proc.argv), ns=Namespace.AGENT, env=tuple(proc.env), workdir=proc.cwd,
                          tty=proc.terminal, stdin=bool(proc.stdin))
        proc.session = self.client.start(req, writer(out), writer(err))
        if proc.stdin:
            threading.Thread(target=self._pump_stdin, args=(proc,), daemon=True).start()

        def reap() -> None:
            assert proc.session is not None
            st = proc.session.wait(None)
            proc.exit_status, proc.exited_at = st.code, time.time()
            for fd in {out, err}:
                if fd >= 0:
                    os.close(fd)
            proc.done.set()
            if self.publisher is not None:
                self.publisher.exit(self.id, exec_id or self.id, proc.pid, st.code, proc.exited_at)
        threading.Thread(target=reap, daemon=True).start()
        deadline = time.monotonic() + 10
        while proc.session.pid is None and not proc.done.is_set() and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.pid = proc.session.pid or 0
        return proc.pid

    def _pump_stdin(self, proc: Proc) -> None:
        assert proc.session is not None
        try:
            fd = os.open(proc.stdin, os.O_RDONLY)
        except OSError:
            return
        try:
            while data := os.read(fd, 1 << 16):
                proc.session.write(data)
        except OSError:
            pass
        finally:
            os.close(fd)
            try:
                proc.session.close_stdin()
            except Exception:  # noqa: BLE001 - the process may be gone already
                pass

    # --- running ------------------------------------------------------------------
    def _proc(self, exec_id: str) -> Proc:
        p = self.procs.get(exec_id)
        if p is None:
            raise ShimError(NOT_FOUND, f"task {self.id}: no process {exec_id or '(init)'}")
        return p

    def wait(self, exec_id: str = "") -> Proc:
        p = self._proc(exec_id)
        p.done.wait()
        return p

    def kill(self, signal: int, exec_id: str = "") -> None:
        p = self._proc(exec_id)
        if p.session is not None and not p.done.is_set():
            p.session.signal(signal)

    def resize(self, exec_id: str, width: int, height: int) -> None:
        p = self._proc(exec_id)
        if p.session is not None:
            p.session.resize(height, width)

    def delete(self, exec_id: str = "") -> Proc:
        p = self._proc(exec_id)
        if exec_id:
            self.procs.pop(exec_id, None)
            return p
        self.close()
        return p

    def close(self) -> None:
        """VM gone, rootfs unmounted, disks removed: nothing is left."""
        from a3s_box.drivers.qemu.driver import QemuDriver

        if self.client is not None:
            self.client.close()
            self.client = None
        if self.handle is not None:
            QemuDriver(self.home).stop(self.handle, 10.0)
            self.handle = None
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.bundle / "rootfs")], capture_output=True, timeout=60)
            self.mounted = False
        shutil.rmtree(self.state_dir, ignore_errors=True)
        shutil.rmtree(self.rundir, ignore_errors=True)
