"""One greeted guest connection per running box, kept by the API server and shared by
its requests (a GuestClient runs any number of sessions at once), so an exec over
HTTP does not pay for connecting and greeting the guest each time. A connection whose
box stopped or restarted is replaced on next use."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from a3s_box.guest.client import GuestClient

if TYPE_CHECKING:
    from a3s_box.orchestrator.host import Host
    from a3s_box.orchestrator.state import BoxRow


class Channels:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, tuple[str, GuestClient]] = {}
        self._opening: dict[str, threading.Lock] = {}  # one opener per box at a time

    def client(self, host: Host, row: BoxRow) -> GuestClient:
        """A connected client for ROW (a BoxRow of HOST), opened if need be. Concurrent
        requests share it: one of them opens it while the others wait for that one (two
        openers would each replace the other's, closing it under its requests)."""
        if row.status != "running":
            host.runtime.connect(row, 1.0).close()  # raises what state the box is in (paused, stopped...)
        ident = f"{(row.handle or {}).get('pid')}:{(row.handle or {}).get('channel')}"
        with self._lock:
            opening = self._opening.setdefault(row.id, threading.Lock())
        with opening:
            with self._lock:
                held = self._open.get(row.id)
                if held is not None and held[0] == ident and held[1]._closed is None:
                    return held[1]
            c = GuestClient(host.runtime.connect(row, 10.0), box=row.name)
            try:
                c.hello(10.0)
            except BaseException:
                c.close()
                raise
            with self._lock:
                old = self._open.get(row.id)
                self._open[row.id] = (ident, c)
            if old is not None:
                old[1].close()  # stale: its box restarted, or its connection ended
            return c

    def close(self) -> None:
        with self._lock:
            for _, c in self._open.values():
                c.close()
            self._open.clear()
