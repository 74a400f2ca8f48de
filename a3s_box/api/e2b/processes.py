"""envd's Process service (process.Process, Connect RPC): commands in a sandbox's box,
run as guest exec sessions in its agent namespace. The table of running processes is this
server's: a process started elsewhere (`box exec`) is not listed. Output fans out to every
stream attached to a process (its Start, and any Connect), each a bounded queue: a stream
that stops reading loses its own output, never the others' nor the process."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from protobuf import Oneof

from a3s_box.api.e2b.envd.process import process_connect
from a3s_box.api.e2b.envd.process import process_pb as pb
from a3s_box.api.e2b.gate import Opener, Target, connect_error
from a3s_box.errors import BoxError
from a3s_box.guest.client import Session
from a3s_box.guest.protocol import ExecRequest, ExitKind, ExitStatus, Namespace

QUEUE_EVENTS = 1024  # per attached stream; past it, that stream's output is dropped
START_WAIT = 30.0  # seconds for the guest to report a pid


class Listener:
    """One attached stream: events cross from the guest reader thread to its loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[pb.ProcessEvent | None] = asyncio.Queue(QUEUE_EVENTS)

    def push(self, ev: pb.ProcessEvent | None) -> None:
        def put() -> None:
            if ev is None:
                while self.queue.full():  # the end must arrive: drop output for it
                    self.queue.get_nowait()
            if not self.queue.full():
                self.queue.put_nowait(ev)
        self.loop.call_soon_threadsafe(put)


@dataclass
class Proc:
    pid: int
    tag: str | None
    config: pb.ProcessConfig
    session: Session
    tty: bool
    listeners: list[Listener] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def emit(self, ev: pb.ProcessEvent | None) -> None:
        with self.lock:
            for li in self.listeners:
                li.push(ev)

    def attach(self, li: Listener) -> None:
        with self.lock:
            self.listeners.append(li)

    def detach(self, li: Listener) -> None:
        with self.lock:
            if li in self.listeners:
                self.listeners.remove(li)


class ProcessTable:
    """The processes this server started, per box."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._boxes: dict[str, dict[int, Proc]] = {}

    def start(self, target: Target, req: pb.StartRequest, first: Listener) -> Proc:
        """Start REQ's command in TARGET's box with FIRST attached before any output flows
        (blocking: a worker thread)."""
        cfg = req.process or pb.ProcessConfig()
        if not cfg.cmd:
            raise BoxError("process: cmd is empty")
        tty = req.pty is not None
        size = req.pty.size if req.pty is not None and req.pty.size is not None else None
        env = {**target.rec.env, **dict(cfg.envs)}
        exe = ExecRequest(argv=(cfg.cmd, *cfg.args), ns=Namespace.AGENT, env=tuple(f"{k}={v}" for k, v in env.items()),
                          workdir=cfg.cwd or "", tty=tty, stdin=True,
                          rows=size.rows if size is not None and size.rows else 24,
                          cols=size.cols if size is not None and size.cols else 80)
        pending: list[Listener] = [first]
        holder: list[Proc] = []
        early: list[pb.ProcessEvent] = []
        hold = threading.Lock()

        def out(kind: str) -> object:
            def handler(data: bytes) -> None:
                ev = pb.ProcessEvent(event=Oneof("data", pb.ProcessEvent.DataEvent(
                    output=Oneof("pty" if tty else kind, data))))  # type: ignore[arg-type]
                with hold:
                    if not holder:  # before the pid: keep it for the stream, in order
                        early.append(ev)
                        return
                holder[0].emit(ev)
            return handler
        session = target.client.start(exe, out("stdout"), out("stderr"))  # type: ignore[arg-type]
        pid = session.wait_started(START_WAIT)
        if pid is None:  # ended before it started: the guest says why in its exit (or error)
            st = session.wait(1.0)
            raise BoxError(f"process {cfg.cmd}: did not start (errno {st.value})")
        if req.stdin is False:
            session.close_stdin()
        proc = Proc(pid, req.tag, cfg, session, tty, listeners=pending)
        first.push(_started(pid))
        with hold:
            for ev in early:
                first.push(ev)
            holder.append(proc)
        with self._lock:
            self._boxes.setdefault(target.row.id, {})[pid] = proc
        threading.Thread(target=self._reap, args=(target.row.id, proc), daemon=True,
                         name=f"e2b-proc-{pid}").start()
        return proc

    def _reap(self, box_id: str, proc: Proc) -> None:
        try:
            st: ExitStatus | None = proc.session.wait(None)
            error = None
        except BoxError as e:
            st, error = None, str(e)
        with self._lock:
            self._boxes.get(box_id, {}).pop(proc.pid, None)
        proc.emit(pb.ProcessEvent(event=Oneof("end", end_event(st, error))))  # type: ignore[arg-type]
        proc.emit(None)

    def find(self, box_id: str, sel: pb.ProcessSelector | None) -> Proc:
        with self._lock:
            procs = dict(self._boxes.get(box_id, {}))
        which = sel.selector if sel is not None else None
        if which is not None and which.field == "pid" and which.value in procs:
            return procs[int(which.value)]
        if which is not None and which.field == "tag":
            for p in procs.values():
                if p.tag == which.value:
                    return p
        raise ConnectError(Code.NOT_FOUND, f"process {which.value if which else '?'}: not found")

    def running(self, box_id: str) -> list[Proc]:
        with self._lock:
            return sorted(self._boxes.get(box_id, {}).values(), key=lambda p: p.pid)


def _started(pid: int) -> pb.ProcessEvent:
    return pb.ProcessEvent(event=Oneof("start", pb.ProcessEvent.StartEvent(pid=pid)))  # type: ignore[arg-type]


def end_event(st: ExitStatus | None, error: str | None) -> pb.ProcessEvent.EndEvent:
    if st is None:
        return pb.ProcessEvent.EndEvent(exit_code=-1, exited=False, status="error", error=error or "lost")
    if st.kind is ExitKind.EXITED:
        return pb.ProcessEvent.EndEvent(exit_code=st.code, exited=True, status=f"exit status {st.code}")
    if st.kind is ExitKind.SIGNALED:
        name = {9: "killed", 15: "terminated", 2: "interrupt", 1: "hangup"}.get(st.value, f"signal {st.value}")
        return pb.ProcessEvent.EndEvent(exit_code=-1, exited=False, status=f"signal: {name}")
    return pb.ProcessEvent.EndEvent(exit_code=-1, exited=False, status="error", error=f"did not start: errno {st.value}")


class ProcessService(process_connect.Process):
    """process.Process over a ProcessTable; OPEN admits each call (gate.py)."""

    def __init__(self, open_: Opener, table: ProcessTable) -> None:
        self.open, self.table = open_, table

    async def _target(self, ctx: RequestContext[object, object]) -> Target:
        headers = {k.lower(): v for k, v in ctx.request_headers.items()}
        try:
            return await asyncio.to_thread(self.open, headers)
        except BoxError as e:
            raise connect_error(e) from e

    async def _stream(self, proc: Proc, li: Listener, wrap: type[pb.StartResponse] | type[pb.ConnectResponse]
                      ) -> AsyncIterator[pb.StartResponse | pb.ConnectResponse]:
        try:
            while (ev := await li.queue.get()) is not None:
                yield wrap(event=ev)
        finally:
            proc.detach(li)  # the process runs on (as under envd): kill it to end it

    async def start(self, request: pb.StartRequest, ctx: RequestContext[pb.StartRequest, pb.StartResponse]
                    ) -> AsyncIterator[pb.StartResponse]:
        target = await self._target(ctx)  # type: ignore[arg-type]
        li = Listener(asyncio.get_running_loop())
        try:
            proc = await asyncio.to_thread(self.table.start, target, request, li)
        except BoxError as e:
            raise connect_error(e) from e
        async for r in self._stream(proc, li, pb.StartResponse):
            yield r  # type: ignore[misc]

    async def connect(self, request: pb.ConnectRequest, ctx: RequestContext[pb.ConnectRequest, pb.ConnectResponse]
                      ) -> AsyncIterator[pb.ConnectResponse]:
        target = await self._target(ctx)  # type: ignore[arg-type]
        proc = self.table.find(target.row.id, request.process)
        li = Listener(asyncio.get_running_loop())
        proc.attach(li)
        li.push(_started(proc.pid))
        async for r in self._stream(proc, li, pb.ConnectResponse):
            yield r  # type: ignore[misc]

    async def list(self, request: pb.ListRequest, ctx: RequestContext[pb.ListRequest, pb.ListResponse]
                   ) -> pb.ListResponse:
        target = await self._target(ctx)  # type: ignore[arg-type]
        return pb.ListResponse(processes=[pb.ProcessInfo(config=p.config, pid=p.pid, tag=p.tag)
                                          for p in self.table.running(target.row.id)])

    async def update(self, request: pb.UpdateRequest, ctx: RequestContext[pb.UpdateRequest, pb.UpdateResponse]
                     ) -> pb.UpdateResponse:
        target = await self._target(ctx)  # type: ignore[arg-type]
        proc = self.table.find(target.row.id, request.process)
        size = request.pty.size if request.pty is not None else None
        if size is not None and proc.tty:
            proc.session.resize(size.rows or 24, size.cols or 80)
        return pb.UpdateResponse()

    async def send_input(self, request: pb.SendInputRequest,
                         ctx: RequestContext[pb.SendInputRequest, pb.SendInputResponse]) -> pb.SendInputResponse:
        target = await self._target(ctx)  # type: ignore[arg-type]
        _write(self.table.find(target.row.id, request.process), request.input)
        return pb.SendInputResponse()

    async def stream_input(self, request: AsyncIterator[pb.StreamInputRequest],
                           ctx: RequestContext[pb.StreamInputRequest, pb.StreamInputResponse]
                           ) -> pb.StreamInputResponse:
        target = await self._target(ctx)  # type: ignore[arg-type]
        proc: Proc | None = None
        async for msg in request:
            ev = msg.event
            if ev is None:
                continue
            if ev.field == "start":
                proc = self.table.find(target.row.id, ev.value.process)
            elif ev.field == "data":
                if proc is None:
                    raise ConnectError(Code.FAILED_PRECONDITION, "stream input: no start event first")
                _write(proc, ev.value.input)
        return pb.StreamInputResponse()

    async def send_signal(self, request: pb.SendSignalRequest,
                          ctx: RequestContext[pb.SendSignalRequest, pb.SendSignalResponse]) -> pb.SendSignalResponse:
        target = await self._target(ctx)  # type: ignore[arg-type]
        proc = self.table.find(target.row.id, request.process)
        signo = {pb.Signal.SIGKILL: 9, pb.Signal.SIGTERM: 15}.get(request.signal)
        if signo is None:
            raise ConnectError(Code.INVALID_ARGUMENT, f"signal {request.signal}: not one envd sends")
        proc.session.signal(signo)
        return pb.SendSignalResponse()

    async def close_stdin(self, request: pb.CloseStdinRequest,
                          ctx: RequestContext[pb.CloseStdinRequest, pb.CloseStdinResponse]) -> pb.CloseStdinResponse:
        target = await self._target(ctx)  # type: ignore[arg-type]
        proc = self.table.find(target.row.id, request.process)
        if proc.tty:
            raise ConnectError(Code.FAILED_PRECONDITION, "close stdin: a PTY process takes Ctrl-D instead")
        proc.session.close_stdin()
        return pb.CloseStdinResponse()


def _write(proc: Proc, data: pb.ProcessInput | None) -> None:
    if data is None or data.input is None:
        return
    proc.session.write(bytes(data.input.value))

