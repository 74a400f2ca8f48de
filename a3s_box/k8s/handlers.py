"""The task service's methods: protobuf in, protobuf out, each a call on a Task."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from a3s_box.home import Home
from a3s_box.k8s.events import Publisher
from a3s_box.k8s.service import NOT_FOUND, Handler, ShimError


def vm_rundir(container_id: str) -> Path:
    import hashlib

    from a3s_box.k8s.shim import RUN_DIR

    return RUN_DIR / f"vm-{hashlib.sha256(container_id.encode()).hexdigest()[:16]}"


def task_handlers(stop: threading.Event, publisher: Publisher | None = None) -> dict[str, Handler]:
    from a3s_box.k8s.proto import shim_pb2 as pb
    from a3s_box.k8s.task import Task

    home = Home(Path(os.environ.get("A3S_BOX_HOME", "/var/lib/a3s-box")))
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

    def create(b: bytes) -> bytes:
        r = parse("CreateTaskRequest", b)
        t = Task(home, r.id, Path(r.bundle), vm_rundir(r.id), publisher)
        tasks[r.id] = t
        try:
            pid = t.create(list(r.rootfs), r.terminal, r.stdin, r.stdout, r.stderr)
        except BaseException:
            tasks.pop(r.id, None)
            t.close()
            raise
        return bytes(P.CreateTaskResponse(pid=pid).SerializeToString())

    def start(b: bytes) -> bytes:
        r = parse("TaskRef", b)
        return bytes(P.PidReply(pid=task(r.id).start(r.exec_id)).SerializeToString())

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
        p = t.delete(r.exec_id)
        if not r.exec_id:
            tasks.pop(r.id, None)
        return bytes(P.DeleteResponse(pid=p.pid, exit_status=p.exit_status or 0,
                                      exited_at=ts(p.exited_at or 0.0)).SerializeToString())

    def exec_(b: bytes) -> bytes:
        r = parse("ExecProcessRequest", b)
        task(r.id).add_exec(r.exec_id, bytes(r.spec.value), r.terminal, r.stdin, r.stdout, r.stderr)
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
            stop.set()
        return b""

    return {"Create": create, "Start": start, "Wait": wait, "State": state, "Kill": kill, "Delete": delete,
            "Exec": exec_, "ResizePty": resize, "CloseIO": close_io, "Connect": connect, "Shutdown": shutdown}
