"""The per-box network log: one JSON line per decision (`box logs --network BOX`).

Writing never blocks or fails the proxy: a line that cannot be written (a full disk)
is dropped and counted, and the count is written with the next line that fits. The
file is capped and rotated like every per-box log (a3s_box.logs).
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from a3s_box.logs.writer import LogLimits, RotatingFile


def network_dir(rundir: Path) -> Path:
    """The network proxy's own folder in a box's: the proxy runs without root (the egress
    daemon as its own uid, the per-box helper of older boxes as the box's)."""
    return rundir / "net"


def network_log_path(rundir: Path) -> Path:
    """Where a box's network log is (in the box's folder itself for boxes started by an
    a3s-box from before the helper dropped root)."""
    new = network_dir(rundir) / "network.log"
    return new if new.exists() or not (rundir / "network.log").exists() else rundir / "network.log"


class NetworkLog:
    def __init__(self, path: Path | None, box: str, limits: LogLimits = LogLimits(),
                 activity: Path | int | None = None) -> None:
        self.path = path
        self.activity = activity if activity is not None else (path.parent / "activity" if path else None)
        self.box = box
        self.dropped = 0
        self.file = RotatingFile(path, limits, mode=0o600) if path is not None else None
        self.lines: list[dict[str, Any]] = []  # kept only without a file (tests)
        self._lock = threading.Lock()  # HTTP flows write from threads of their own (exchange.py)
        self.closed = False

    def write(self, **fields: Any) -> None:
        with self._lock:
            if not self.closed:
                self._write(fields)

    def _write(self, fields: dict[str, Any]) -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
                  "box": self.box, **{k: v for k, v in fields.items() if v not in (None, "")}}
        if self.dropped:
            record["dropped_before"] = self.dropped
        if self.file is None:
            self.lines.append(record)
            return
        if self.activity is not None:  # network traffic is activity (a leased box's idle_timeout)
            try:
                os.utime(self.activity)
            except OSError:
                pass
        before = self.file.dropped_writes
        self.file.write((json.dumps(record, sort_keys=True) + "\n").encode())
        self.dropped = self.dropped + 1 if self.file.dropped_writes > before else 0

    def close(self) -> None:
        """Writes nothing more, ever: the egress daemon closes the box's folder and
        activity descriptors right after, and a late line from a flow's thread must not
        reach a file that a reused descriptor number now names."""
        with self._lock:
            self.closed = True
            if self.file is not None:
                self.file.close()


def read_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    from a3s_box.logs.reader import log_files

    text = "".join(p.read_text(errors="replace") for p in log_files(path))
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
