"""The audit log: every state-changing call, from the CLI or the HTTP API, as one JSON
line in HOME/audit.log (`box events`, and the API's event stream).

    {"time", "who", "what", "target", "result", ...}

who: "uid:N" for a local user, "token:ID" for an API client (set per request with
`acting_as`). Each line is one write(2) on an O_APPEND file, so lines from processes
writing at once never interleave and a crash never leaves half a line.
"""
from __future__ import annotations

import contextvars
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

AUDIT_LOG = "audit.log"
MAX_LINE = 4000  # below PIPE_BUF's multiple a single write keeps whole on local file systems

_actor: contextvars.ContextVar[str | None] = contextvars.ContextVar("a3s_box_actor", default=None)


@contextmanager
def acting_as(who: str) -> Iterator[None]:
    token = _actor.set(who)
    try:
        yield
    finally:
        _actor.reset(token)


def who() -> str:
    return _actor.get() or f"uid:{os.getuid()}"


def record(home: Path, what: str, target: str, result: str = "ok", **detail: Any) -> None:
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
             "who": who(), "what": what, "target": target, "result": result,
             **{k: v for k, v in detail.items() if v is not None}}
    line = json.dumps(entry, sort_keys=True, default=str)
    if len(line) > MAX_LINE:
        line = json.dumps({**{k: entry[k] for k in ("time", "who", "what", "target")},
                           "result": str(result)[:MAX_LINE // 2]}, sort_keys=True)
    try:
        fd = os.open(home / AUDIT_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # auditing never fails the operation it records


def read(home: Path, since_offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The entries from byte SINCE_OFFSET on, and the offset after the last whole line."""
    try:
        with open(home / AUDIT_LOG, "rb") as f:
            f.seek(since_offset)
            data = f.read()
    except FileNotFoundError:
        return [], 0
    end = data.rfind(b"\n") + 1
    out = []
    for line in data[:end].splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out, since_offset + end
