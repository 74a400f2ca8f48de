"""Writing a box's log so that a guest printing in a loop cannot fill the host's disk,
and a full disk cannot stop the box.

RotatingFile keeps PATH under max_size bytes and at most max_files files (PATH, PATH.1,
... PATH.{max_files-1}, oldest last): a write that would take PATH past the cap renames
the files one step down (the oldest goes) and starts PATH afresh. A write that fails
(ENOSPC, EIO, ...) is dropped and counted; the next one that succeeds is preceded by a
line saying how much was lost. Nothing here raises on I/O: the caller is the VM's
supervisor, and the VM must go on.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_SIZE = 10 << 20  # kubelet's container log rotation
DEFAULT_MAX_FILES = 5


@dataclass(frozen=True)
class LogLimits:
    max_size: int = DEFAULT_MAX_SIZE
    max_files: int = DEFAULT_MAX_FILES

    def to_json(self) -> dict[str, int]:
        return {"max_size": self.max_size, "max_files": self.max_files}

    @classmethod
    def from_json(cls, data: object) -> "LogLimits":
        if not isinstance(data, dict):
            return cls()
        return cls(int(data.get("max_size", DEFAULT_MAX_SIZE)), int(data.get("max_files", DEFAULT_MAX_FILES)))


def rotated(path: Path, index: int) -> Path:
    return path if index == 0 else path.with_name(f"{path.name}.{index}")


class RotatingFile:
    def __init__(self, path: Path, limits: LogLimits = LogLimits(), mode: int = 0o640) -> None:
        self.path = path
        self.limits = limits
        self.mode = mode
        self.dropped_bytes = 0
        self.dropped_writes = 0
        self.fd = -1
        self.size = 0
        self._open()

    def _open(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, self.mode)
            self.size = os.fstat(self.fd).st_size
        except OSError:
            self.fd, self.size = -1, 0

    def _rotate(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            if self.limits.max_files <= 1:
                os.truncate(self.path, 0)
            else:
                for i in range(self.limits.max_files - 1, 0, -1):
                    src = rotated(self.path, i - 1)
                    if src.exists():
                        os.replace(src, rotated(self.path, i))
        except OSError:
            pass
        self._open()

    def write(self, data: bytes) -> None:
        if not data:
            return
        cap = self.limits.max_size
        if len(data) > cap:
            data = data[-cap:]  # one write never holds more than the cap
        if self.size and self.size + len(data) > cap:
            self._rotate()
        if self.fd < 0:
            self._open()
        if self.dropped_bytes:
            note = (f"a3s-box: {self.dropped_bytes} bytes of log in {self.dropped_writes} writes were "
                    f"dropped (the host could not write them)\n").encode()
            if self._put(note):
                self.dropped_bytes = self.dropped_writes = 0
            else:
                self._drop(data)
                return
        if not self._put(data):
            self._drop(data)

    def _put(self, data: bytes) -> bool:
        if self.fd < 0:
            return False
        try:
            n = os.write(self.fd, data)
        except OSError:
            return False
        self.size += n
        return n == len(data)

    def _drop(self, data: bytes) -> None:
        self.dropped_bytes += len(data)
        self.dropped_writes += 1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def stamp(now: float | None = None) -> bytes:
    t = time.time() if now is None else now
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1e6) % 1_000_000:06d}Z ").encode()


STAMP_LEN = len(stamp(0.0))


class TimestampedLines:
    """Pure: bytes in, bytes out with each line prefixed by the time it began (for
    `box logs --since` and `-t`)."""

    def __init__(self) -> None:
        self.at_line_start = True

    def feed(self, chunk: bytes, now: float | None = None) -> bytes:
        if not chunk:
            return b""
        prefix = stamp(now)
        out = bytearray()
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            end = len(chunk) if end < 0 else end + 1
            if self.at_line_start:
                out += prefix
            out += chunk[start:end]
            self.at_line_start = chunk[end - 1:end] == b"\n"
            start = end
        return bytes(out)
