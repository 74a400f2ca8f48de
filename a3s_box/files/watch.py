"""A folder of a box watched through the guest's `/.a3s/fs watch`: its events handed to
a callback as they come.

The guest writes a `ready` record once its watches are set, then one record per event;
`Watch.start` returns only after `ready`, so a change made after it returns is seen.
Events reach ON_EVENT on the guest client's reader thread: it must not block. Whatever
goes wrong after that (a malformed record, the folder removed, ON_EVENT raising) stops
the guest's process and is raised by `wait()`.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from a3s_box.errors import BoxError
from a3s_box.files import records
from a3s_box.files.errors import FilesError
from a3s_box.guest.protocol import ExecRequest

EventHandler = Callable[[str, str], None]  # (kind, name under the folder)
READY_TIMEOUT = 30.0
MAX_STDERR = 4 << 10


class Watch:
    def __init__(self, box: str, path: str, on_event: EventHandler) -> None:
        self.box, self.path = box, path
        self._on_event = on_event
        self._parser = records.RecordParser(records.EVENT_FIELDS)
        self._lock = threading.RLock()  # held while ON_EVENT runs: stop() waits for it
        self._changed = threading.Event()  # ready, or over
        self._ready = False
        self._stopped = False
        self._error: BaseException | None = None
        self._stderr = bytearray()
        self._session: Any = None

    @classmethod
    def start(cls, client: Any, req: ExecRequest, box: str, path: str, on_event: EventHandler,
              timeout: float = READY_TIMEOUT) -> "Watch":
        """Run REQ (an `fs watch`) and return once its watches are set."""
        w = cls(box, path, on_event)
        w._session = client.start(req, w._on_stdout, w._on_stderr)
        if w._error is not None:  # it went wrong before _fail could see the session
            w._kill()
        w._session.add_done_callback(w._changed.set)
        if not w._changed.wait(timeout):
            w.stop()
            raise FilesError(f"box {box}: {path}: not watched after {timeout}s")
        if not w._ready:  # it is over
            w.wait(0)  # raises what ended it
        return w

    def _fail(self, e: BaseException) -> None:
        if self._error is None:
            self._error = e
        self._kill()

    def _kill(self) -> None:
        if self._session is not None and not self._session.done:
            try:
                self._session.signal(signal.SIGKILL)
            except BoxError:
                pass  # the connection is gone, and the process with it

    def _on_stdout(self, data: bytes) -> None:  # on the client's reader thread
        with self._lock:
            if self._stopped or self._error is not None:
                return
            try:
                for fields in self._parser.feed(data):
                    if not self._ready:
                        if not records.is_ready(fields):
                            raise FilesError(f"the guest began with {fields[0][:20]!r}, not ready")
                        self._ready = True
                        self._changed.set()
                        continue
                    kind, name = records.event(fields)
                    self._on_event(kind, name)
                    if self._stopped:
                        return
            except Exception as e:  # noqa: BLE001 - ON_EVENT's too: wait() raises it
                self._fail(e)

    def _on_stderr(self, data: bytes) -> None:
        self._stderr += data[:MAX_STDERR - len(self._stderr)]

    @property
    def done(self) -> bool:
        """The guest's process is over (stopped, failed, or its folder is gone)."""
        return self._session is None or self._session.done

    def stop(self) -> None:
        """Kill the guest's process. Once this returns ON_EVENT is not called again (unless
        it is ON_EVENT that calls stop: the event under way finishes)."""
        with self._lock:
            self._stopped = True
        self._kill()

    def wait(self, timeout: float | None = None) -> None:
        """Until the watch ends; raises FilesError for any end but stop()."""
        status = self._session.wait(timeout)
        if self._error is not None:
            if isinstance(self._error, FilesError):
                raise FilesError(f"box {self.box}: {self.path}: {self._error}") from self._error
            raise self._error
        if self._stopped:
            return
        raise FilesError(f"box {self.box}: {self.path}: {records.failure(bytes(self._stderr), status)}")
