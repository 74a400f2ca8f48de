"""The per-box network log: one JSON line per decision (`box logs --network BOX`).

Writing never blocks or fails the proxy: a line that cannot be written (a full disk)
is dropped and counted, and the count is written with the next line that fits.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class NetworkLog:
    def __init__(self, path: Path | None, box: str) -> None:
        self.path = path
        self.box = box
        self.dropped = 0
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600) \
            if path is not None else -1
        self.lines: list[dict[str, Any]] = []  # kept only without a file (tests)

    def write(self, **fields: Any) -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
                  "box": self.box, **{k: v for k, v in fields.items() if v not in (None, "")}}
        if self.dropped:
            record["dropped_before"] = self.dropped
        if self.fd < 0:
            self.lines.append(record)
            return
        try:
            os.write(self.fd, (json.dumps(record, sort_keys=True) + "\n").encode())
            self.dropped = 0
        except OSError:
            self.dropped += 1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def read_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
