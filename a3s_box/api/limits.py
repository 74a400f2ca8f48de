"""The caps on request bodies: what a client may make the server hold at once."""
from __future__ import annotations

MAX_BOXFILE = 1 << 20
MAX_FILE = 256 << 20
MAX_JSON = 8 << 20


def body_limit(path: str) -> int:
    """The most a request to PATH may declare in Content-Length."""
    if path.endswith("/files/tar"):
        return 1 << 62  # streamed, never held
    return MAX_FILE if path.endswith("/files") else MAX_JSON
