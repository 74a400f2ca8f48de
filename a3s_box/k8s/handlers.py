"""The task service's methods: protobuf in, protobuf out, each a call on a Task."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from a3s_box.k8s.annotations import pod_of, read_annotations
from a3s_box.k8s.events import Publisher
from a3s_box.k8s.paths import RUN_DIR, shim_home, vm_rundir
from a3s_box.k8s.service import INVALID_ARGUMENT, NOT_FOUND, Handler, ShimError


def task_handlers(stop: threading.Event, publisher: Publisher | None = None) -> dict[str, Handler]:
    from a3s_box.k8s.proto import shim_pb2 as pb
    from a3s_box.k8s.task import Task

    home = shim_home()
    tasks: dict[str, Task] = {}
    P: Any = pb

    def parse(kind: str, payload: bytes) -> Any:
        msg = getattr(P, kind)()
        msg.ParseFromString(payload)
        return msg

    def task(id_: str) -> Task:
        t = tasks.get(id_)
        if t is None:
            raise ShimError(NOT_FOUND, f"no task {id_}")
        return t

    def ts(t: float) -> Any:
        from google.protobuf.timestamp_pb2 import Timestamp

        stamp = Timestamp()
        stamp.FromNanoseconds(int(t * 1e9))
        return stamp

    def publish(topic: str, kind: str, **fields: Any) -> None:
        if publisher is not None:
            publisher.send(topic, kind, getattr(P, kind)(**fields))

    def create(b: bytes) -> bytes:
        r = parse("CreateTaskRequest", b)
        bundle = Path(r.bundle)
        pod_id = pod_of(read_annotations(bundle), r.id)
        owner = tasks.get(pod_id) if pod_id != r.id else None
        if pod_id != r.id and (owner is None or not owner.owns_pod):
            raise ShimError(NOT_FOUND, f"container {r.id}: its pod sandbox {pod_id} has no VM in this shim")
        t = Task(home, r.id, bundle, vm_rundir(RUN_DIR, pod_id), publisher, owner.pod if owner else None)
        tasks[r.id] = t
        try:
            pid = t.create(list(r.rootfs), r.terminal, r.stdin, r.stdout, r.stderr)
        except BaseException:
            tasks.pop(r.id, None)
            t.close()
            raise
        publish("/tasks/create", "TaskCreate", container_id=r.id, bundle=r.bundle, rootfs=list(r.rootfs),
                io=P.TaskIO(stdin=r.stdin, stdout=r.stdout, stderr=r.stderr, terminal=r.terminal), pid=pid)
        return bytes(P.CreateTaskResponse(pid=pid).SerializeToString())

    def start(b: bytes) -> bytes:
        r = parse("TaskRef", b)
        pid = task(r.id).start(r.exec_id)
        if r.exec_id:
            publish("/tasks/exec-started", "TaskExecStarted", container_id=r.id, exec_id=r.exec_id, pid=pid)
        else:
            publish("/tasks/start", "TaskStart", container_id=r.id, pid=pid)
        return bytes(P.PidReply(pid=pid).SerializeToString())

    def wait(b: bytes) -> bytes:
        r = parse("TaskRef", b)
        p = task(r.id).wait(r.exec_id)
        return bytes(P.WaitResponse(exit_status=p.exit_status or 0, exited_at=ts(p.exited_at)).SerializeToString())

    def state(b: bytes) -> bytes:
        r = parse("TaskRef", b)
        t = task(r.id)
        p = t._proc(r.exec_id)
        status = P.STOPPED if p.done.is_set() else P.RUNNING if p.session is not None else P.CREATED
        reply = P.StateResponse(id=r.id, bundle=str(t.bundle), pid=p.pid, status=status, stdin=p.stdin,
                                stdout=p.stdout, stderr=p.stderr, terminal=p.terminal,
                                exit_status=p.exit_status or 0, exec_id=r.exec_id)
        if p.done.is_set():
            reply.exited_at.CopyFrom(ts(p.exited_at))
        return bytes(reply.SerializeToString())

    def kill(b: bytes) -> bytes:
        r = parse("KillRequest", b)
        task(r.id).kill(r.signal, r.exec_id)
        return b""

    def delete(b: bytes) -> bytes:
        r = parse("TaskRef", b)
        t = task(r.id)
        if not r.exec_id and t.owns_pod:  # the pod goes: its members first
            for member in [m for m in tasks.values() if m.pod is t.pod and m is not t]:
                member.close()
                tasks.pop(member.id, None)
        p = t.delete(r.exec_id)
        if not r.exec_id:
            tasks.pop(r.id, None)
            publish("/tasks/delete", "TaskDelete", container_id=r.id, pid=p.pid, exit_status=p.exit_status or 0,
                    exited_at=ts(p.exited_at or 0.0), id=r.id)
        return bytes(P.DeleteResponse(pid=p.pid, exit_status=p.exit_status or 0,
                                      exited_at=ts(p.exited_at or 0.0)).SerializeToString())

    def exec_(b: bytes) -> bytes:
        r = parse("ExecProcessRequest", b)
        task(r.id).add_exec(r.exec_id, bytes(r.spec.value), r.terminal, r.stdin, r.stdout, r.stderr)
        publish("/tasks/exec-added", "TaskExecAdded", container_id=r.id, exec_id=r.exec_id)
        return b""

    def pids(b: bytes) -> bytes:
        r = parse("PidsRequest", b)
        return bytes(P.PidsResponse(processes=[P.ProcessInfo(pid=pid) for pid in task(r.id).pids()])
                     .SerializeToString())

    def stats(b: bytes) -> bytes:
        from google.protobuf.any_pb2 import Any as AnyMsg

        r = parse("StatsRequest", b)
        s = task(r.id).stats()
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

    def update(b: bytes) -> bytes:
        import json

        r = parse("UpdateTaskRequest", b)
        try:
            resources = json.loads(bytes(r.resources.value) or b"{}")
        except ValueError as e:
            raise ShimError(INVALID_ARGUMENT, f"task {r.id}: resources are not OCI LinuxResources JSON ({e})") \
                from e
        task(r.id).update(resources if isinstance(resources, dict) else {})
        return b""

    def resize(b: bytes) -> bytes:
        r = parse("ResizePtyRequest", b)
        task(r.id).resize(r.exec_id, r.width, r.height)
        return b""

    def close_io(b: bytes) -> bytes:
        return b""  # stdin ends with its FIFO's writer

    def connect(b: bytes) -> bytes:
        r = parse("ConnectRequest", b)
        t = tasks.get(r.id)
        pid = t.procs[""].pid if t is not None and "" in t.procs else 0
        return bytes(P.ConnectResponse(shim_pid=os.getpid(), task_pid=pid, version="a3s-box").SerializeToString())

    def shutdown(b: bytes) -> bytes:
        if not tasks:
            if publisher is not None:
                publisher.flush()
            stop.set()
        return b""

    return {"Create": create, "Start": start, "Wait": wait, "State": state, "Kill": kill, "Delete": delete,
            "Exec": exec_, "ResizePty": resize, "CloseIO": close_io, "Connect": connect, "Shutdown": shutdown,
            "Pids": pids, "Stats": stats, "Update": update}
