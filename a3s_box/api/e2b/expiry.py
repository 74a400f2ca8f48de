"""Sandboxes end when their timeout passes, as on E2B: killed (the box deleted, or a pool
member released), or paused when made with autoPause (resumed by connect). A thread of
`box serve` looks once a second; what it does is in the audit log as "e2b-timeout"."""
from __future__ import annotations

import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from a3s_box import audit
from a3s_box.errors import BoxError
from a3s_box.orchestrator.state import BoxRow, SandboxRow, StateStore

PERIOD = 1.0


def due(sandboxes: Sequence[tuple[SandboxRow, BoxRow]], now: float) -> list[tuple[str, BoxRow]]:
    """What to do now: ("kill" | "pause", box) for each running sandbox past its end."""
    out = []
    for rec, row in sandboxes:
        if rec.end_at <= now and row.status == "running":
            out.append(("pause" if rec.on_timeout == "pause" else "kill", row))
    return out


class ExpiryThread:
    def __init__(self, home: Path, period: float = PERIOD) -> None:
        self.home, self.period = home, period
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store: StateStore | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="a3s-e2b-expiry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._store is not None:
            self._store.close()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.once()
            except (BoxError, sqlite3.Error, OSError) as e:  # a busy store, a box that would not stop: next second
                print(f"a3s-box: e2b timeout: {e}", file=sys.stderr, flush=True)

    def once(self, now: float | None = None) -> list[str]:
        """One look (its own connection, kept); a Host only when something is due."""
        from a3s_box.orchestrator.host import Host

        if self._store is None:
            self._store = StateStore(self.home / "state.db")
        pairs = []
        for rec in self._store.sandboxes():
            row = self._store.box(rec.box_id)
            if row is None:
                self._store.delete_sandbox(rec.box_id)
            else:
                pairs.append((rec, row))
        todo = due(pairs, time.time() if now is None else now)
        done: list[str] = []
        if not todo:
            return done
        with audit.acting_as("e2b-timeout"), Host(self.home) as h:
            for action, row in todo:
                if action == "pause":
                    h.pause(row.id)
                elif row.pool is not None and row.lease is not None:
                    h.release(row.id)
                else:
                    h.delete(row.id)
                done.append(f"{action} {row.name}")
        return done
