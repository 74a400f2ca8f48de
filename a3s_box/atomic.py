"""Write a file so that readers see the old content or the new, never a half-written one.

The temporary file is unique per call (not per process): threads of one `box apply`
write the same cache files at once."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_atomic(path: Path, text: str, *, durable: bool = False) -> None:
    write_bytes_atomic(path, text.encode(), durable=durable)


def write_bytes_atomic(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = False) -> None:
    """MODE 0644 by default: confined VMMs (other uids) read the guest's boot files.
    DURABLE: the content reaches the disk before the rename (records a crash must not lose)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
