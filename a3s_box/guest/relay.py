"""A TCP connection to a port inside a box, for the E2B-style port URLs: the guest's
`/.a3s/fs connect PORT` relays an exec session's stdin to 127.0.0.1:PORT (or [::1]) in
the box and what comes back to the session's stdout.

    stream = open_port(client, "coder", 8080, on_data=..., on_end=...)
    stream.send(b"GET / HTTP/1.1\\r\\n...")    # may block while the guest takes it
    stream.close_send()                       # the box's server sees end of input
    ...                                       # on_data(bytes)..., then on_end(None | error)

What comes back goes to ON_DATA on the guest client's reader thread (an asyncio caller
hands it on with loop.call_soon_threadsafe; it must not block), or without ON_DATA is
queued for `recv()` and iteration. ON_END is called once, last, with None or the error
(a PortError: refused, reset; a GuestError: the guest's connection went). The guest sends
as fast as the box's server writes: `pause()` and `resume()` stop and restart the relay
(SIGSTOP/SIGCONT, so TCP pushes back on the server); the queue does it by itself past
HIGH_WATER bytes.

Threat: the box is hostile, and so is what answers on its port; its bytes are passed on
as they are, never parsed here. What the relay writes to stderr is capped and only ever
shown as the error's words.
"""
from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable, Iterator

from a3s_box.errors import BoxError, GuestError, PortError
from a3s_box.guest.client import GuestClient, Session
from a3s_box.guest.protocol import ExecRequest, ExitKind, Namespace

APPLETS = "/.a3s"  # the guest init's applets; a local guest's are in its state dir
HIGH_WATER = 1 << 20  # bytes queued for recv() before the relay is paused
LOW_WATER = 256 << 10  # ... and resumed
MAX_STDERR = 4 << 10

OnData = Callable[[bytes], None]
OnEnd = Callable[[BoxError | None], None]


class PortStream:
    """One connection to a port in a box. Every method may be called from any thread."""

    def __init__(self, box: str, port: int, on_data: OnData | None, on_end: OnEnd | None) -> None:
        self.box, self.port = box, port
        self._on_data, self._on_end = on_data, on_end
        self._q: queue.Queue[bytes | None] = queue.Queue()
        self._lock = threading.Lock()
        self._queued = 0  # bytes in _q
        self._paused = False
        self._closed = False
        self._stderr = bytearray()
        self._error: BoxError | None = None
        self._fault: Exception | None = None  # what on_data raised
        self._session: Session | None = None

    @property
    def session(self) -> Session:
        assert self._session is not None, "PortStream is made by open_port"
        return self._session

    # --- to the port ---------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if self.session.done:
            raise self._error or PortError(self.box, self.port, "the connection is closed")
        self.session.write(data)

    def close_send(self) -> None:
        """No more to send: the box's server reads end of input (its answer goes on)."""
        if not self.session.done:
            self.session.close_stdin()

    # --- from the port -------------------------------------------------------------
    def recv(self, timeout: float | None = None) -> bytes:
        """The next bytes from the port; b"" once it is over (then `wait()` says how).
        Only without ON_DATA. TimeoutError if nothing came within TIMEOUT."""
        if self._on_data is not None:
            raise RuntimeError("this PortStream hands its data to on_data")
        try:
            item = self._q.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"box {self.box}: port {self.port}: nothing within {timeout}s") from None
        if item is None:
            self._q.put(None)  # for the next caller too
            return b""
        with self._lock:
            self._queued -= len(item)
            wake = self._paused and self._queued <= LOW_WATER
        if wake:
            self.resume()
        return item

    def __iter__(self) -> Iterator[bytes]:
        """The bytes from the port until it is over; then raises the error if any."""
        while chunk := self.recv():
            yield chunk
        self.wait()

    def pause(self) -> None:
        """Stop the relay (the box's server is pushed back once buffers fill)."""
        self._signal(signal.SIGSTOP, paused=True)

    def resume(self) -> None:
        self._signal(signal.SIGCONT, paused=False)

    # --- the end -------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> None:
        """Until the connection is over; raises its error (PortError, GuestError)."""
        self.session.wait(timeout)
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Kill the relay: the connection to the port is dropped, not finished."""
        self._closed = True
        self._signal(signal.SIGKILL, paused=False)

    def __enter__(self) -> "PortStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- on the client's reader thread -----------------------------------------------
    def _signal(self, signo: int, paused: bool) -> None:
        with self._lock:
            self._paused = paused
        if self._session is None or self._session.done:
            return
        try:
            self._session.signal(signo)
        except GuestError:
            pass  # the connection is gone, and the relay with it

    def _out(self, data: bytes) -> None:
        if self._closed:
            return
        if self._on_data is not None:
            try:
                self._on_data(data)
            except Exception as e:  # noqa: BLE001 - the reader thread must live on: on_end says it
                self._fault = e
                self.close()
            return
        self._q.put(data)
        with self._lock:
            self._queued += len(data)
            full = not self._paused and self._queued > HIGH_WATER
        if full:
            self.pause()

    def _err(self, data: bytes) -> None:
        self._stderr += data[:MAX_STDERR - len(self._stderr)]

    def _ended(self) -> None:
        self._error = self._outcome()
        self._q.put(None)
        if self._on_end is not None:
            self._on_end(self._error)

    def _outcome(self) -> BoxError | None:
        try:
            status = self.session.wait(0)
        except GuestError as e:
            return e
        if self._fault is not None:
            return PortError(self.box, self.port, f"on_data failed: {self._fault!r}")
        if status.kind is ExitKind.EXITED and status.value == 0:
            return None
        if self._closed and status.kind is ExitKind.SIGNALED:
            return None  # close() killed it
        lines = self._stderr.decode("utf-8", errors="replace").strip().splitlines()
        if lines:  # "connect 8080: Connection refused"
            return PortError(self.box, self.port, lines[-1].rsplit(": ", 1)[-1][:300])
        if status.kind is ExitKind.NOT_STARTED:
            return PortError(self.box, self.port, f"the guest cannot run its relay: {status.message}")
        how = f"killed by signal {status.value}" if status.kind is ExitKind.SIGNALED else f"exit {status.value}"
        return PortError(self.box, self.port, f"the relay failed ({how})")


def open_port(client: GuestClient, box: str, port: int, ns: Namespace = Namespace.AGENT, *,
              on_data: OnData | None = None, on_end: OnEnd | None = None,
              applets: str = APPLETS) -> PortStream:
    """Connect to PORT on the loopback of BOX, as seen from namespace NS. Returns at once:
    a refused connection is its end (on_end, recv() then wait())."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port}: must be 1-65535")
    stream = PortStream(box, port, on_data, on_end)
    req = ExecRequest(argv=(f"{applets}/fs", "connect", str(port)), ns=ns, stdin=True)
    stream._session = client.start(req, stream._out, stream._err)
    if stream._closed:  # on_data raised before the session was known
        stream.close()
    elif stream._paused:  # the queue filled before the session was known
        stream.pause()
    stream._session.add_done_callback(stream._ended)
    return stream


__all__ = ["OnData", "OnEnd", "PortStream", "open_port"]
