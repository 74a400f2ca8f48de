"""Reading a box's log across its rotated files (oldest first), as `box logs` does.

Lines written by a3s-box's log writer begin with a timestamp (writer.stamp); older logs
and the network log's JSON lines do not, and are shown as they are.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from a3s_box.logs.writer import STAMP_LEN, rotated

MAX_ROTATED = 1000


def log_files(path: Path) -> list[Path]:
    """PATH's rotated files and PATH itself, oldest first."""
    older = []
    for i in range(1, MAX_ROTATED):
        p = rotated(path, i)
        if not p.exists():
            break
        older.append(p)
    return [*reversed(older), *([path] if path.exists() else [])]


def split_stamp(line: bytes) -> tuple[float | None, bytes]:
    """(when the line began, its text) for a stamped line; (None, line) otherwise."""
    head = line[:STAMP_LEN]
    if len(head) == STAMP_LEN and head[4:5] == b"-" and head[10:11] == b"T" and head[-2:] == b"Z ":
        try:
            t = datetime.strptime(head[:-2].decode(), "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc)
        except ValueError:
            return None, line
        return t.timestamp(), line[STAMP_LEN:]
    return None, line


def read_lines(path: Path) -> list[bytes]:
    lines: list[bytes] = []
    for p in log_files(path):
        try:
            lines += p.read_bytes().splitlines(keepends=True)
        except OSError:
            continue
    return lines


def select(lines: list[bytes], tail: int | None = None, since: float | None = None,
           timestamps: bool = False) -> bytes:
    """Pure: the lines to show: those begun at or after SINCE, the last TAIL of them,
    without their stamps unless TIMESTAMPS."""
    picked = []
    for line in lines:
        t, text = split_stamp(line)
        if since is not None and t is not None and t < since:
            continue
        picked.append(line if timestamps else text)
    if tail is not None:
        picked = picked[-tail:] if tail > 0 else []
    return b"".join(picked)


def follow(path: Path, alive: Callable[[], bool], timestamps: bool = False,
           poll: float = 0.2) -> Iterator[bytes]:
    """What is written to PATH from now on, through rotations, while ALIVE(); whole
    lines (so a stamp is never cut in two), the last partial line when it ends."""
    f = _open(path)
    if f is not None:
        f.seek(0, os.SEEK_END)
    pending = b""
    while True:
        chunk = f.read() if f is not None else b""
        if chunk:
            pending += chunk
            cut = pending.rfind(b"\n") + 1
            if cut:
                yield _strip(pending[:cut], timestamps)
                pending = pending[cut:]
            continue
        try:
            current: os.stat_result | None = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and (f is None or os.fstat(f.fileno()).st_ino != current.st_ino):
            if f is not None:  # rotated: the rest of the old file first, then the new one
                pending += f.read()
                f.close()
            f = _open(path)
            continue
        if not alive():
            break
        time.sleep(poll)
    if pending:
        yield _strip(pending, timestamps)
    if f is not None:
        f.close()


def _open(path: Path) -> BinaryIO | None:
    try:
        return open(path, "rb")
    except OSError:
        return None


def _strip(chunk: bytes, timestamps: bool) -> bytes:
    if timestamps:
        return chunk
    return b"".join(split_stamp(line)[1] for line in chunk.splitlines(keepends=True))
