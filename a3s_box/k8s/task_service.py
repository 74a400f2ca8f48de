"""The task service containerd speaks to a shim (containerd.task.v2.Task): one method
per RPC, protobuf in, protobuf out, each a call on a Task of this daemon's pod.
`handlers()` is the table service.py's Dispatcher routes ttrpc requests by.

It owns the daemon's tasks by container id (the pod sandbox's task owns the VM, the
others are its members) and the events they publish. Only the daemon (shim.py's
serve) imports it: it loads Task, the VM side and protobuf, which `shim start` must
not pay for. It never imports shim.py (an import-linter contract keeps it so).
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from google.protobuf.any_pb2 import Any as AnyMsg

from a3s_box.home import Home
from a3s_box.k8s.annotations import pod_of, read_annotations
from a3s_box.k8s.events import Publisher, timestamp
from a3s_box.k8s.paths import RUN_DIR, shim_home, vm_rundir
from a3s_box.k8s.proto import shim_pb2
from a3s_box.k8s.service import INVALID_ARGUMENT, NOT_FOUND, Handler, ShimError
from a3s_box.k8s.task import Task

P: Any = shim_pb2  # generated without stubs: mypy sees none of its messages


class TaskService:
    def __init__(self, stop: threading.Event, publisher: Publisher | None = None, *,
                 home: Home | None = None, run_dir: Path = RUN_DIR) -> None:
        self.stop = stop  # set by Shutdown: the daemon stops serving
        self.publisher = publisher  # None: no events (containerd gave no publish binary)
        self.home = shim_home() if home is None else home
        self.run_dir = run_dir  # each pod's VM sockets go below it
        self.tasks: dict[str, Task] = {}

    def handlers(self) -> dict[str, Handler]:
        """The ttrpc methods answered, by name; the Dispatcher answers any other UNIMPLEMENTED."""
        return {"Create": self.create, "Start": self.start, "Wait": self.wait, "State": self.state,
                "Kill": self.kill, "Delete": self.delete, "Exec": self.exec, "ResizePty": self.resize_pty,
                "CloseIO": self.close_io, "Connect": self.connect, "Shutdown": self.shutdown,
                "Pids": self.pids, "Stats": self.stats, "Update": self.update}

    def _parse(self, kind: str, payload: bytes) -> Any:
        msg = getattr(P, kind)()
        msg.ParseFromString(payload)
        return msg

    def _task(self, id_: str) -> Task:
        t = self.tasks.get(id_)
        if t is None:
            raise ShimError(NOT_FOUND, f"no task {id_}")
        return t

    def _publish(self, topic: str, kind: str, **fields: Any) -> None:
        if self.publisher is not None:
            self.publisher.send(topic, kind, getattr(P, kind)(**fields))

    def create(self, b: bytes) -> bytes:
        r = self._parse("CreateTaskRequest", b)
        bundle = Path(r.bundle)
        pod_id = pod_of(read_annotations(bundle), r.id)
        owner = self.tasks.get(pod_id) if pod_id != r.id else None
        if pod_id != r.id and (owner is None or not owner.owns_pod):
            raise ShimError(NOT_FOUND, f"container {r.id}: its pod sandbox {pod_id} has no VM in this shim")
        t = Task(self.home, r.id, bundle, vm_rundir(self.run_dir, pod_id), self.publisher,
                 owner.pod if owner else None)
        self.tasks[r.id] = t
        try:
            pid = t.create(list(r.rootfs), r.terminal, r.stdin, r.stdout, r.stderr)
        except BaseException:
            self.tasks.pop(r.id, None)
            t.close()
            raise
        self._publish("/tasks/create", "TaskCreate", container_id=r.id, bundle=r.bundle, rootfs=list(r.rootfs),
                      io=P.TaskIO(stdin=r.stdin, stdout=r.stdout, stderr=r.stderr, terminal=r.terminal),
                      pid=pid)
        return bytes(P.CreateTaskResponse(pid=pid).SerializeToString())

    def start(self, b: bytes) -> bytes:
        r = self._parse("TaskRef", b)
        pid = self._task(r.id).start(r.exec_id)
        if r.exec_id:
            self._publish("/tasks/exec-started", "TaskExecStarted", container_id=r.id, exec_id=r.exec_id, pid=pid)
        else:
            self._publish("/tasks/start", "TaskStart", container_id=r.id, pid=pid)
        return bytes(P.PidReply(pid=pid).SerializeToString())

    def wait(self, b: bytes) -> bytes:
        r = self._parse("TaskRef", b)
        p = self._task(r.id).wait(r.exec_id)
        return bytes(P.WaitResponse(exit_status=p.exit_status or 0, exited_at=timestamp(p.exited_at))
                     .SerializeToString())

    def state(self, b: bytes) -> bytes:
        r = self._parse("TaskRef", b)
        t = self._task(r.id)
        p = t._proc(r.exec_id)
        status = P.STOPPED if p.done.is_set() else P.RUNNING if p.session is not None else P.CREATED
        reply = P.StateResponse(id=r.id, bundle=str(t.bundle), pid=p.pid, status=status, stdin=p.stdin,
                                stdout=p.stdout, stderr=p.stderr, terminal=p.terminal,
                                exit_status=p.exit_status or 0, exec_id=r.exec_id)
        if p.done.is_set():
            reply.exited_at.CopyFrom(timestamp(p.exited_at))
        return bytes(reply.SerializeToString())

    def kill(self, b: bytes) -> bytes:
        r = self._parse("KillRequest", b)
        self._task(r.id).kill(r.signal, r.exec_id)
        return b""

    def delete(self, b: bytes) -> bytes:
        r = self._parse("TaskRef", b)
        t = self._task(r.id)
        if not r.exec_id and t.owns_pod:  # the pod goes: its members first
            for member in [m for m in self.tasks.values() if m.pod is t.pod and m is not t]:
                member.close()
                self.tasks.pop(member.id, None)
        p = t.delete(r.exec_id)
        if not r.exec_id:
            self.tasks.pop(r.id, None)
            self._publish("/tasks/delete", "TaskDelete", container_id=r.id, pid=p.pid,
                          exit_status=p.exit_status or 0, exited_at=timestamp(p.exited_at or 0.0), id=r.id)
        return bytes(P.DeleteResponse(pid=p.pid, exit_status=p.exit_status or 0,
                                      exited_at=timestamp(p.exited_at or 0.0)).SerializeToString())

    def exec(self, b: bytes) -> bytes:
        r = self._parse("ExecProcessRequest", b)
        self._task(r.id).add_exec(r.exec_id, bytes(r.spec.value), r.terminal, r.stdin, r.stdout, r.stderr)
        self._publish("/tasks/exec-added", "TaskExecAdded", container_id=r.id, exec_id=r.exec_id)
        return b""

    def pids(self, b: bytes) -> bytes:
        r = self._parse("PidsRequest", b)
        return bytes(P.PidsResponse(processes=[P.ProcessInfo(pid=pid) for pid in self._task(r.id).pids()])
                     .SerializeToString())

    def stats(self, b: bytes) -> bytes:
        r = self._parse("StatsRequest", b)
        s = self._task(r.id).stats()
        cpu, mem, events = s["cpu.stat"], s["memory.stat"], s["memory.events"]
        limit = s["memory.max"]["value"]
        metrics = P.CgroupMetrics(
            pids=P.CgroupPidsStat(current=s["pids.current"]["value"], limit=s["pids.max"]["value"]),
            cpu=P.CgroupCpuStat(**{k: cpu.get(k, 0) for k in ("usage_usec", "user_usec", "system_usec",
                                                              "nr_periods", "nr_throttled", "throttled_usec")}),
            memory=P.CgroupMemoryStat(anon=mem.get("anon", 0), file=mem.get("file", 0),
                                      inactive_file=mem.get("inactive_file", 0),
                                      active_file=mem.get("active_file", 0),
                                      usage=s["memory.current"]["value"], usage_limit=limit),
            memory_events=P.CgroupMemoryEvents(**{k: events.get(k, 0) for k in ("low", "high", "max", "oom",
                                                                                "oom_kill")}))
        # the CRI plugin reads cgroup v2 metrics by this type name (containerd/cgroups)
        wrapped = AnyMsg(type_url="io.containerd.cgroups.v2.Metrics", value=metrics.SerializeToString())
        return bytes(P.StatsResponse(stats=wrapped).SerializeToString())

    def update(self, b: bytes) -> bytes:
        r = self._parse("UpdateTaskRequest", b)
        try:
            resources = json.loads(bytes(r.resources.value) or b"{}")
        except ValueError as e:
            raise ShimError(INVALID_ARGUMENT, f"task {r.id}: resources are not OCI LinuxResources JSON ({e})") \
                from e
        self._task(r.id).update(resources if isinstance(resources, dict) else {})
        return b""

    def resize_pty(self, b: bytes) -> bytes:
        r = self._parse("ResizePtyRequest", b)
        self._task(r.id).resize(r.exec_id, r.width, r.height)
        return b""

    def close_io(self, b: bytes) -> bytes:
        return b""  # stdin ends with its FIFO's writer

    def connect(self, b: bytes) -> bytes:
        r = self._parse("ConnectRequest", b)
        t = self.tasks.get(r.id)
        pid = t.procs[""].pid if t is not None and "" in t.procs else 0
        return bytes(P.ConnectResponse(shim_pid=os.getpid(), task_pid=pid, version="a3s-box").SerializeToString())

    def shutdown(self, b: bytes) -> bytes:
        if not self.tasks:  # containerd asks after each Delete: the daemon stays while the pod has tasks
            if self.publisher is not None:
                self.publisher.flush()
            self.stop.set()
        return b""
