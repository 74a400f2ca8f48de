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

    def client(self, host: Host, row: BoxRow) -> GuestClient:
        """A connected client for ROW (a BoxRow of HOST), opened if need be."""
        if row.status != "running":
            host.runtime.connect(row, 1.0).close()  # raises what state the box is in (paused, stopped...)
        ident = f"{(row.handle or {}).get('pid')}:{(row.handle or {}).get('channel')}"
        with self._lock:
            held = self._open.get(row.id)
            if held is not None and held[0] == ident and held[1]._closed is None:
                return held[1]
            if held is not None:
                held[1].close()
        c = GuestClient(host.runtime.connect(row, 10.0), box=row.name)
        try:
            c.hello(10.0)
        except BaseException:
            c.close()
            raise
        with self._lock:
            old = self._open.get(row.id)
            self._open[row.id] = (ident, c)
        if old is not None and old[1] is not c:
            old[1].close()
        return c

    def close(self) -> None:
        with self._lock:
            for _, c in self._open.values():
                c.close()
            self._open.clear()
