"""Host side of the guest protocol: one connection, many concurrent sessions.

`GuestClient` owns a byte stream to the guest init (a shim's unix socket, a vsock, or a
local `--serve-stdio` process) and one reader thread that routes each frame to whoever
waits for its stream. Writes are serialised by a lock, so any thread may call any
method. Every failure is a `GuestError` naming the box: a timeout, the connection
closing, or the guest breaking the protocol.
"""
from __future__ import annotations

import itertools
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from a3s_box.errors import GuestError
from a3s_box.guest import protocol as p
from a3s_box.guest.protocol import (BoxConfig, ExecRequest, ExitKind, ExitStatus, Frame,
                                    GuestStatus, MsgType, Namespace)

OutputHandler = Callable[[bytes], None]
_CHUNK = 256 * 1024  # below MAX_PAYLOAD, large enough to keep the frame overhead small
_CLOSED = Frame(-1, 0)  # queued to every waiter when the connection ends


MAX_OUTPUT = 64 << 20  # bytes of each stream `run` collects
MAX_GET = 256 << 20  # bytes one `get` takes (the API's file limit)


class _Capped:
    """Output chunks up to a total; past it, only the fact that there was more."""

    def __init__(self, cap: int) -> None:
        self.cap, self.size, self.over = cap, 0, False
        self._parts: list[bytes] = []
        self.on_over: Callable[[], None] = lambda: None

    def append(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.cap and not self.over:
            self.over, self._parts = True, []
            self.on_over()
        elif not self.over:
            self._parts.append(data)

    def value(self) -> bytes:
        return b"".join(self._parts)


@dataclass(frozen=True)
class CompletedExec:
    exit: ExitStatus
    stdout: bytes
    stderr: bytes


class Session:
    """One process started in the guest. Output goes to handlers if set, else it is
    queued for iteration (`for fd, data in session`: fd 1 stdout, 2 stderr)."""

    def __init__(self, client: "GuestClient", stream: int, req: ExecRequest) -> None:
        self._client = client
        self.stream = stream
        self.request = req
        self.pid: int | None = None
        self._lock = threading.Lock()
        self._handlers: tuple[OutputHandler, OutputHandler] | None = None
        self._queued: queue.Queue[tuple[int, bytes] | None] = queue.Queue()
        self._done = threading.Event()
        self._started = threading.Event()  # STARTED came (pid is known), or the session ended
        self._exit: ExitStatus | None = None
        self._error: str | None = None
        self._on_done: list[Callable[[], None]] = []

    # --- host -> guest ---------------------------------------------------
    def write(self, data: bytes) -> None:
        for i in range(0, len(data), _CHUNK):
            self._client._send(p.encode(MsgType.STDIN, self.stream, data[i:i + _CHUNK]))

    def close_stdin(self) -> None:
        self._client._send(p.encode(MsgType.STDIN, self.stream, b""))

    def signal(self, signo: int) -> None:
        self._client._send(p.signal_frame(self.stream, signo))

    def resize(self, rows: int, cols: int) -> None:
        self._client._send(p.resize_frame(self.stream, rows, cols))

    # --- guest -> host ---------------------------------------------------
    def set_handlers(self, on_stdout: OutputHandler, on_stderr: OutputHandler) -> None:
        """Send output to these from now on, after what was queued so far."""
        with self._lock:
            while True:
                try:
                    item = self._queued.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    (on_stdout if item[0] == 1 else on_stderr)(item[1])
            self._handlers = (on_stdout, on_stderr)

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        while (item := self._queued.get()) is not None:
            yield item

    def wait(self, timeout: float | None = None) -> ExitStatus:
        if not self._done.wait(timeout):
            raise GuestError(self._client.box, f"session {self.stream} "
                             f"({' '.join(self.request.argv)}): no exit after {timeout}s")
        if self._error is not None:
            raise GuestError(self._client.box, self._error)
        assert self._exit is not None
        return self._exit

    @property
    def done(self) -> bool:
        """The session is over: its process exited, or the guest or the connection dropped it."""
        return self._done.is_set()

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        """Call FN once the session is over (then `wait(0)` answers at once): on the
        client's reader thread, after the last output, or now if it is over already. FN
        must not block; what it raises is dropped (the reader thread must live on)."""
        with self._lock:
            if not self._done.is_set():
                self._on_done.append(fn)
                return
        _call_quietly(fn)

    def wait_started(self, timeout: float) -> int | None:
        """The guest pid once the process started (None: it ended, or failed to start)."""
        self._started.wait(timeout)
        return self.pid

    def _output(self, fd: int, data: bytes) -> None:
        with self._lock:
            if self._handlers is not None:
                self._handlers[fd - 1](data)
            else:
                self._queued.put((fd, data))

    def _finish(self, exit_: ExitStatus | None, error: str | None) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._exit, self._error = exit_, error
            self._queued.put(None)
            self._done.set()
            self._started.set()
            callbacks, self._on_done = self._on_done, []
        for fn in callbacks:
            _call_quietly(fn)

    def _on_frame(self, f: Frame) -> bool:
        """Handle one frame; True when the session is over."""
        try:
            if f.type == MsgType.STARTED:
                self.pid = p.Reader(f.payload).u32()
                self._started.set()
            elif f.type == MsgType.STDOUT:
                self._output(1, f.payload)
            elif f.type == MsgType.STDERR:
                self._output(2, f.payload)
            elif f.type == MsgType.EXIT:
                self._finish(ExitStatus.decode(f.payload), None)
                return True
            elif f.type == MsgType.ERROR:
                res = p.Result.decode(f.payload)
                self._finish(None, f"session {self.stream}: guest dropped it: {res.message}")
                return True
            elif f is _CLOSED:
                self._finish(None, self._client._closed_reason())
                return True
        except (p.ProtocolError, ValueError) as e:
            self._finish(None, f"session {self.stream}: bad frame from guest: {e}")
            return True
        return False


def _call_quietly(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - a caller's bug must not stop the reader thread
        pass


class GuestClient:
    def __init__(self, sock: socket.socket, box: str = "") -> None:
        self.box = box
        self._sock = sock
        self._wlock = threading.Lock()
        self._lock = threading.Lock()
        self._ctl_lock = threading.Lock()  # one stream-0 request at a time
        self._ids = itertools.count(1)
        self._sessions: dict[int, Session] = {}
        self._waiters: dict[int, queue.Queue[Frame]] = {}
        self._closed: str | None = None
        self._reader = threading.Thread(target=self._read_loop, name=f"guest-{box}", daemon=True)
        self._reader.start()

    # --- plumbing --------------------------------------------------------
    def _closed_reason(self) -> str:
        return self._closed or "connection closed"

    def _send(self, data: bytes) -> None:
        with self._wlock:
            if self._closed is not None:
                raise GuestError(self.box, self._closed)
            try:
                self._sock.sendall(data)
            except OSError as e:
                raise GuestError(self.box, f"connection to guest lost: {e}") from e

    def _open(self, stream: int | None = None) -> tuple[int, "queue.Queue[Frame]"]:
        with self._lock:
            sid = next(self._ids) if stream is None else stream
            q: queue.Queue[Frame] = queue.Queue()
            self._waiters[sid] = q
            if self._closed is not None:
                q.put(_CLOSED)
            return sid, q

    def _forget(self, sid: int) -> None:
        with self._lock:
            self._waiters.pop(sid, None)

    def _next(self, q: "queue.Queue[Frame]", timeout: float, what: str, overall: float | None = None) -> Frame:
        """The next frame for Q within TIMEOUT (what is left of OVERALL, for a call with
        a deadline of its own)."""
        try:
            f = q.get(timeout=timeout)
        except queue.Empty:
            if overall is not None:
                raise GuestError(self.box, f"{what}: not done after {overall}s") from None
            raise GuestError(self.box, f"{what}: no answer from guest after {timeout}s") from None
        if f is _CLOSED:
            raise GuestError(self.box, f"{what}: {self._closed_reason()}")
        if f.type == MsgType.ERROR:
            res = p.Result.decode(f.payload)
            raise GuestError(self.box, f"{what}: guest refused: {res.message}")
        return f

    def _read_loop(self) -> None:
        fr = p.FrameReader()
        reason = "connection closed by guest"
        try:
            while True:
                data = self._sock.recv(1 << 16)
                if not data:
                    break
                for f in fr.feed(data):
                    self._route(f)
                if fr.errors:
                    reason = f"protocol violation from guest: {fr.errors[0]}"
                    break
        except OSError as e:
            reason = f"connection to guest lost: {e}"
        with self._lock:
            if self._closed is None:
                self._closed = reason
            sessions = list(self._sessions.values())
            waiters = list(self._waiters.values())
        for s in sessions:
            s._on_frame(_CLOSED)
        for q in waiters:
            q.put(_CLOSED)

    def _route(self, f: Frame) -> None:
        with self._lock:
            s = self._sessions.get(f.stream) if f.stream else None
            q = self._waiters.get(f.stream)
        if s is not None:
            if s._on_frame(f):
                with self._lock:
                    self._sessions.pop(f.stream, None)
        elif q is not None:
            q.put(f)
        # else: a late frame for a stream nobody waits for any more

    # --- connection-level requests ------------------------------------------
    def hello(self, timeout: float) -> dict[str, str]:
        """Exchange HELLO; the guest's info (`kernel`, `hostname`, `transport`, `version`)."""
        with self._ctl_lock:
            _, q = self._open(0)
            try:
                self._send(p.hello())
                f = self._next(q, timeout, "hello")
            finally:
                self._forget(0)
        try:
            r = p.Reader(f.payload)
            version, info = r.u16(), p.parse_kv(r.str())
        except p.ProtocolError as e:
            raise GuestError(self.box, f"hello: bad answer from guest: {e}") from e
        if f.type != MsgType.HELLO or version != p.VERSION:
            raise GuestError(self.box, f"hello: guest speaks protocol {version}, "
                             f"this host speaks {p.VERSION}")
        return {**info, "version": str(version)}

    def _ctl_request(self, frame: bytes, timeout: float, what: str) -> p.Result:
        with self._ctl_lock:
            _, q = self._open(0)
            try:
                self._send(frame)
                while True:
                    f = self._next(q, timeout, what)
                    if f.type == MsgType.RESULT:
                        return p.Result.decode(f.payload)
            finally:
                self._forget(0)

    def configure(self, cfg: BoxConfig, timeout: float) -> None:
        res = self._ctl_request(p.encode(MsgType.CONFIG, 0, cfg.encode()), timeout, "configure")
        if res.errno:
            raise GuestError(self.box, f"configure: {res.message or os.strerror(res.errno)}")

    def seed(self, timeout: float = 10.0) -> str:
        """Hand the guest fresh entropy and the time (its CRNG is reseeded at once); the
        fresh random bytes it answers with, in hex."""
        res = self._ctl_request(p.seed_frame(os.urandom(64), time.time_ns()), timeout, "seed")
        if res.errno:
            raise GuestError(self.box, f"seed: {res.message or os.strerror(res.errno)}")
        return res.message.removeprefix("random=")

    def prepare(self, agent_isolation: int, path: str = "", warm: tuple[str, ...] = (),
                targets: tuple[str, ...] = (), timeout: float = 30.0) -> p.Prepared:
        """Make the agent's namespaces (and cgroup folders) now, for a snapshot template:
        a clone whose agent isolates as AGENT_ISOLATION (Isolate flags) adopts them at
        CONFIG instead of making its own. The guest makes the folders TARGETS (where its
        clones mount volumes), reads the commands WARM (found in PATH) and what they load
        into its page cache, then settles for the snapshot."""
        res = self._ctl_request(p.prepare_frame(agent_isolation, path, warm, targets), timeout, "prepare")
        if res.errno:
            raise GuestError(self.box, f"prepare: {res.message or os.strerror(res.errno)}")
        return p.Prepared.parse(res.message)

    def trust(self, ca_pem: bytes, cert: str, bundle: str, store: str, timeout: float = 30.0) -> None:
        """Install a CA before configure: alone at CERT, in a bundle with the guest's trust
        STORE at BUNDLE, and appended to STORE where the guest has one (done in the guest:
        the store does not cross the channel)."""
        res = self._ctl_request(p.trust_frame(ca_pem, cert, bundle, store), timeout, "trust")
        if res.errno:
            raise GuestError(self.box, f"installing the box's CA: {res.message or os.strerror(res.errno)}")

    def net(self, spec: str, timeout: float = 30.0) -> None:
        """Configure the guest's eth0 as the kernel argument a3s.net=SPEC would at boot
        (a snapshot clone's NIC, hot-plugged after the restore; the guest waits for it)."""
        res = self._ctl_request(p.net_frame(spec), timeout, "net")
        if res.errno:
            raise GuestError(self.box, f"network: {res.message or os.strerror(res.errno)}")

    def mount(self, fstype: str, source: str, target: str, read_only: bool = False,
              data: str = "", timeout: float = 30.0, wait: bool = False) -> None:
        """Mount a volume in the guest's root (before configure: the agent's namespaces
        copy what is mounted then). WAIT: its source is being hot-plugged; the guest
        waits for it to appear."""
        res = self._ctl_request(p.mount_frame(fstype, source, target, read_only, data, wait), timeout,
                                f"mount {target}")
        if res.errno:
            raise GuestError(self.box, f"volume on {target}: {res.message or os.strerror(res.errno)}")

    def ping(self, timeout: float = 5.0) -> float:
        """Round trip of one PING, in seconds."""
        sid, q = self._open()
        try:
            token = sid.to_bytes(4, "big") + os.urandom(4)
            t = time.monotonic()
            self._send(p.encode(MsgType.PING, sid, token))
            deadline = t + timeout
            while True:  # a PONG with another token answers someone else's PING: skip it
                f = self._next(q, max(0.0, deadline - time.monotonic()), "ping")
                if f.type == MsgType.PONG and f.payload == token:
                    return time.monotonic() - t
        finally:
            self._forget(sid)

    def status(self, timeout: float = 5.0) -> GuestStatus:
        sid, q = self._open()
        try:
            self._send(p.encode(MsgType.STATUS, sid))
            f = self._next(q, timeout, "status")
            try:
                return GuestStatus.decode(f.payload)
            except (p.ProtocolError, ValueError) as e:
                raise GuestError(self.box, f"status: bad answer from guest: {e}") from e
        finally:
            self._forget(sid)

    def shutdown(self, reboot: bool = False, timeout: float = 10.0) -> None:
        """Ask the guest to stop everything and power off; returns once it agreed."""
        res = self._ctl_request(p.shutdown_frame(reboot), timeout, "shutdown")
        if res.errno:
            raise GuestError(self.box, f"shutdown: {res.message}")

    # --- sessions -------------------------------------------------------------
    def start(self, req: ExecRequest, on_stdout: OutputHandler | None = None,
              on_stderr: OutputHandler | None = None) -> Session:
        with self._lock:
            sid = next(self._ids)
            s = Session(self, sid, req)
            if on_stdout is not None or on_stderr is not None:
                s._handlers = (on_stdout or (lambda _b: None), on_stderr or (lambda _b: None))
            self._sessions[sid] = s
            if self._closed is not None:
                s._on_frame(_CLOSED)
        self._send(p.exec_frame(sid, req))
        return s

    def run(self, argv: list[str] | tuple[str, ...], ns: Namespace = Namespace.AGENT,
            env: dict[str, str] | None = None, workdir: str = "", stdin: bytes | None = None,
            timeout: float | None = 60.0, max_output: int = MAX_OUTPUT) -> CompletedExec:
        """Run a command to completion, collecting its output: at most MAX_OUTPUT bytes
        of each stream (more ends the command and fails the call; stream it instead)."""
        out = _Capped(max_output)
        err = _Capped(max_output)
        req = ExecRequest(argv=tuple(argv), ns=ns, workdir=workdir, stdin=stdin is not None,
                          env=tuple(f"{k}={v}" for k, v in (env or {}).items()))
        s = self.start(req, out.append, err.append)
        out.on_over = err.on_over = lambda: s.signal(9)  # no reason to let it run on
        if stdin is not None:
            s.write(stdin)
            s.close_stdin()
        try:
            status = s.wait(timeout)
        except GuestError:
            if not s._done.is_set():
                s.signal(9)  # do not leave a runaway command behind our timeout
            raise
        for name, stream in (("stdout", out), ("stderr", err)):
            if stream.over:
                raise GuestError(self.box, f"{' '.join(argv)[:80]}: {name} over {max_output >> 20} MiB "
                                           "(stream long output with `box exec` or the WebSocket exec)")
        return CompletedExec(status, out.value(), err.value())

    # --- files -----------------------------------------------------------------
    def put(self, path: str, data: bytes, mode: int = 0o644, ns: Namespace = Namespace.ROOT,
            timeout: float = 60.0) -> None:
        """Write a file in the guest, atomically (it appears whole or not at all)."""
        sid, q = self._open()
        try:
            self._send(p.put_frame(sid, path, mode, ns))
            for i in range(0, len(data), _CHUNK):
                self._send(p.encode(MsgType.DATA, sid, data[i:i + _CHUNK]))
            self._send(p.encode(MsgType.DATA, sid, b""))
            while True:
                f = self._next(q, timeout, f"put {path}")
                if f.type == MsgType.RESULT:
                    res = p.Result.decode(f.payload)
                    if res.errno:
                        raise GuestError(self.box, f"put {path}: {res.message}")
                    return
        finally:
            self._forget(sid)

    def get(self, path: str, ns: Namespace = Namespace.ROOT, timeout: float = 60.0,
            max_bytes: int = MAX_GET) -> bytes:
        """A file of the guest, whole: at most MAX_BYTES, within TIMEOUT for the whole call
        (a guest that answers a small read with endless data fails it, nothing more)."""
        sid, q = self._open()
        parts: list[bytes] = []
        size = 0
        deadline = time.monotonic() + timeout
        try:
            self._send(p.get_frame(sid, path, ns))
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GuestError(self.box, f"get {path}: not done after {timeout}s")
                f = self._next(q, left, f"get {path}", timeout)
                if f.type == MsgType.DATA:
                    size += len(f.payload)
                    if size > max_bytes:
                        raise GuestError(self.box, f"get {path}: the guest sent more than "
                                                   f"{max_bytes >> 20} MiB (the most one read takes)")
                    parts.append(f.payload)
                elif f.type == MsgType.RESULT:
                    res = p.Result.decode(f.payload)
                    if res.errno:
                        raise GuestError(self.box, f"get {path}: {res.message}")
                    return b"".join(parts)
        finally:
            self._forget(sid)

    def close(self) -> None:
        with self._lock:
            if self._closed is None:
                self._closed = "connection closed by host"
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=5)

    def __enter__(self) -> "GuestClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["CompletedExec", "ExitKind", "GuestClient", "Session"]
