"""One containerd task (a container) in its pod's microVM (pod.py): its process a
session of the guest init, stdio wired to the FIFOs containerd gives; `ctr task exec`
processes are further sessions in the same namespaces.

Side effects live here and in pod.py; the ttrpc routing is service.py's.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from a3s_box.guest.client import GuestClient, Session
from a3s_box.guest.protocol import ExecRequest, Namespace
from a3s_box.home import Home
from a3s_box.k8s.events import Publisher
from a3s_box.k8s.pod import Pod
from a3s_box.k8s.security import SecurityContextError, mount_flags, process_flags, seccomp_filter
from a3s_box.k8s.service import FAILED_PRECONDITION, NOT_FOUND, ShimError

CONTAINER_HELPER = "/.a3s/container"
GUEST_CGROUPS = "/sys/fs/cgroup/a3s"


def pb() -> Any:
    from a3s_box.k8s.proto import shim_pb2

    return shim_pb2  # the guest init's: a pod member's process


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
    security: list[str] = field(default_factory=list)  # /.a3s/container flags of its process
    session: Session | None = None
    pid: int = 0
    exit_status: int | None = None
    exited_at: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)


def _process_of(spec: dict[str, Any]) -> tuple[list[str], list[str], str]:
    p = spec.get("process") or {}
    return [str(a) for a in p.get("args") or []], [str(e) for e in p.get("env") or []], str(p.get("cwd") or "/")


# spec mounts the guest provides itself (its /proc, /dev, /sys), never from the host
_GUEST_OWN = ("/proc", "/dev", "/sys")


def _host_binds(spec: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, destination, read-only) of the spec's bind mounts of host paths."""
    out = []
    for m in spec.get("mounts") or []:
        dest, source, opts = str(m.get("destination") or ""), str(m.get("source") or ""), m.get("options") or []
        bind = m.get("type") == "bind" or "bind" in opts or "rbind" in opts
        if not bind or not dest.startswith("/") or not source.startswith("/") or not os.path.exists(source):
            continue
        if any(dest == g or dest.startswith(g + "/") for g in _GUEST_OWN):
            continue
        out.append((source, dest, "ro" in opts))
    return out


def _limits(spec: dict[str, Any]) -> list[str]:
    """The OCI spec's memory, pids and CPU limits as /.a3s/container flags."""
    res = (spec.get("linux") or {}).get("resources") or {}
    flags = []
    mem = (res.get("memory") or {}).get("limit")
    if mem and int(mem) > 0:
        flags += ["-m", str(int(mem))]
    pids = (res.get("pids") or {}).get("limit")
    if pids and int(pids) > 0:
        flags += ["-p", str(int(pids))]
    cpu = res.get("cpu") or {}
    if cpu.get("quota") and int(cpu["quota"]) > 0:
        flags += ["-q", f"{int(cpu['quota'])}:{int(cpu.get('period') or 100000)}"]
    return flags


def cgroup_name(container_id: str) -> str:
    return "c-" + hashlib.sha256(container_id.encode()).hexdigest()[:20]


class Task:
    """A container: the pod's first (its VM's root is this container's rootfs, its
    process runs in the guest's agent namespaces) or a member of a pod whose VM runs
    already (its rootfs through the pod's share, its processes under /.a3s/container
    with namespaces and a cgroup of their own)."""

    def __init__(self, home: Home, container_id: str, bundle: Path, rundir: Path,
                 publisher: Publisher | None = None, pod: Pod | None = None) -> None:
        self.home = home
        self.publisher = publisher
        self.id = container_id
        self.bundle = bundle
        try:
            self.spec: dict[str, Any] = json.loads((bundle / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise ShimError(FAILED_PRECONDITION, f"task {container_id}: the bundle {bundle} has no readable "
                            f"config.json ({e})") from e
        self.owns_pod = pod is None
        self.pod = pod if pod is not None else Pod(home, container_id, bundle, rundir)
        self.guest_root = ""  # a member's rootfs in the guest
        self.binds: list[str] = []  # a member's /.a3s/container -b flags
        self.seccomp: list[str] = []  # -S FILE: its filter, in the guest (for its execs too)
        self.procs: dict[str, Proc] = {}
        self.lock = threading.Lock()

    @property
    def client(self) -> GuestClient | None:
        return self.pod.client

    # --- create / start -----------------------------------------------------------
    def create(self, mounts: list[Any], terminal: bool, stdin: str, stdout: str, stderr: str) -> int:
        argv, env, cwd = _process_of(self.spec)
        try:  # before anything is mounted or booted: a spec we cannot honour starts nothing
            security = process_flags(self.spec.get("process") or {})
            if not self.owns_pod:
                security += mount_flags(self.spec)
            program = seccomp_filter(self.spec, f"/run/a3s-seccomp-{cgroup_name(self.id)}.bpf")
        except SecurityContextError as e:
            raise ShimError(FAILED_PRECONDITION, f"container {self.id}: {e}") from e
        if self.owns_pod:
            pid = self.pod.boot(self.spec, mounts)
        else:
            self.guest_root = self.pod.add_rootfs(self.id, mounts, self.bundle / "rootfs")
            binds = _host_binds(self.spec)
            env = self.pod.secret_env(self.id, env)  # placeholders; the values to the proxy
            if any(e.partition("=")[0] in self.pod.placeholders for e in env):
                binds += [(host, dest, True) for host, dest in self.pod.trust_files(self.id, self.pod.member_rootfs(self.id))]
            for i, (source, dest, ro) in enumerate(binds):
                guest = self.pod.add_bind(self.id, i, source, ro)
                self.binds += ["-b", f"{guest}:{dest}{':ro' if ro else ''}"]
            assert self.pod.handle is not None
            pid = self.pod.handle.pid
        self.procs[""] = Proc(argv, env, cwd, terminal, stdin, stdout, stderr, security)
        if program is not None:
            assert self.client is not None
            # the first container's helper runs in the agent's namespaces, a member's in the VM's
            self.client.put(program.guest_path, program.program, 0o600,
                            ns=Namespace.AGENT if self.owns_pod else Namespace.ROOT)
            self.seccomp = ["-S", program.guest_path]
        return pid

    def _request(self, proc: Proc, exec_id: str) -> ExecRequest:
        """Every process of a container starts under the helper, which applies its
        security context (its user, capabilities, seccomp...) right before exec."""
        security = [*proc.security, *self.seccomp]
        if self.owns_pod:  # the VM's root is this container's: its namespaces are the agent's
            head, ns = ["-P", "-w", proc.cwd], Namespace.AGENT
        elif exec_id:  # into the running container's namespaces and cgroup
            head, ns = ["-j", cgroup_name(self.id), "-w", proc.cwd], Namespace.ROOT
        else:
            hostname = str(self.spec.get("hostname") or "")
            head = ["-r", self.guest_root, "-w", proc.cwd, "-c", cgroup_name(self.id), *_limits(self.spec),
                    *self.binds, *(["-h", hostname] if hostname else [])]
            ns = Namespace.ROOT
        argv = (CONTAINER_HELPER, *head, *security, "--", *proc.argv)
        return ExecRequest(argv=argv, ns=ns, env=tuple(proc.env), workdir="/", tty=proc.terminal,
                           stdin=bool(proc.stdin))

    def add_exec(self, exec_id: str, spec_json: bytes, terminal: bool, stdin: str, stdout: str, stderr: str) -> None:
        p = json.loads(spec_json or b"{}")
        try:  # an exec's own process spec: containerd gives it the container's user and capabilities
            security = process_flags(p)
        except SecurityContextError as e:
            raise ShimError(FAILED_PRECONDITION, f"container {self.id}: exec {exec_id}: {e}") from e
        env = self.pod.secret_env(self.id, [str(e) for e in p.get("env") or []])
        self.procs[exec_id] = Proc([str(a) for a in p.get("args") or []], env,
                                   str(p.get("cwd") or "/"), terminal, stdin, stdout, stderr, security)

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
        proc.session = self.client.start(self._request(proc, exec_id), writer(out), writer(err))
        if proc.stdin:
            threading.Thread(target=self._pump_stdin, args=(proc,), daemon=True).start()

        def reap() -> None:
            assert proc.session is not None
            st = proc.session.wait(None)
            proc.exit_status, proc.exited_at = st.code, time.time()
            for fd in {out, err}:
                if fd >= 0:
                    os.close(fd)
            if self.publisher is not None and not exec_id and self._oom_killed():
                self.publisher.send("/tasks/oom", "TaskOOM", pb().TaskOOM(container_id=self.id))
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

    def _oom_killed(self) -> bool:
        """Whether the kernel's OOM killer hit this container's cgroup (the helper
        leaves a note in the guest). The pod's first container has the VM's limit."""
        if self.owns_pod or self.client is None:
            return False
        try:
            return bool(self.client.get(f"/run/a3s-oom/{cgroup_name(self.id)}", timeout=10).strip())
        except Exception:  # noqa: BLE001 - no note: no OOM kill
            return False

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
        """A member: its mounts undone. The pod's first: the whole pod (VM, mounts, disks)."""
        if self.owns_pod:
            self.pod.close()
        else:
            self.pod.remove(self.id)

    # --- Pids, Stats, Update ----------------------------------------------------------
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.pid and not p.done.is_set()]

    def _cgroup_dir(self) -> str:
        # the pod's first container: the guest's agent cgroup (its limits are the VM's)
        return f"{GUEST_CGROUPS}/agent" if self.owns_pod else f"{GUEST_CGROUPS}/{cgroup_name(self.id)}"

    def stats(self) -> dict[str, dict[str, int]]:
        """The container's cgroup v2 figures from the guest: cpu.stat, memory.*, pids.*."""
        if self.client is None:
            raise ShimError(FAILED_PRECONDITION, f"task {self.id} has no VM")
        out: dict[str, dict[str, int]] = {}
        for name in ("cpu.stat", "memory.stat", "memory.events"):
            out[name] = _flat_keyed(self._read(name))
        for name in ("memory.current", "memory.max", "pids.current", "pids.max"):
            text = self._read(name).strip()
            out[name] = {"value": int(text) if text.isdigit() else 0}
        return out

    def _read(self, name: str) -> str:
        assert self.client is not None
        try:
            return self.client.get(f"{self._cgroup_dir()}/{name}", timeout=10).decode(errors="replace")
        except Exception:  # noqa: BLE001 - a controller the guest lacks: no figures for it
            return ""

    def update(self, resources: dict[str, Any]) -> None:
        """New OCI LinuxResources for a member container: written into its cgroup."""
        if self.owns_pod:
            return  # the pod's first container lives within the VM's own size
        assert self.client is not None
        writes = []
        mem = (resources.get("memory") or {}).get("limit")
        if mem and int(mem) > 0:
            writes.append(("memory.max", str(int(mem))))
        pids = (resources.get("pids") or {}).get("limit")
        if pids and int(pids) > 0:
            writes.append(("pids.max", str(int(pids))))
        cpu = resources.get("cpu") or {}
        if cpu.get("quota") and int(cpu["quota"]) > 0:
            writes.append(("cpu.max", f"{int(cpu['quota'])} {int(cpu.get('period') or 100000)}"))
        if not writes:
            return
        argv = [CONTAINER_HELPER, "-s", cgroup_name(self.id), *(x for w in writes for x in w)]
        r = self.client.run(argv, ns=Namespace.ROOT, timeout=10)
        if r.exit.code != 0:
            raise ShimError(FAILED_PRECONDITION, f"task {self.id}: update: "
                            f"{r.stderr.decode(errors='replace').strip()}")


def _flat_keyed(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out
