"""A new qcow2 overlay over a backing file: the one place a3s-box runs `qemu-img create -b`
(a box's disk over its image, a clone's over its template's, a fork's next layer, a pod's
over its image).

The overlay is written under a temporary name beside DEST and renamed into place: a crash
or a full disk never leaves half a disk at DEST. Failures are OverlayError (a full disk:
OSError ENOSPC, which callers turn into their disk-full message); each caller says whose
disk it was in its own error type.
"""
from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

from a3s_box.errors import BoxError


class OverlayError(BoxError):
    """qemu-img could not make an overlay (the message is its own, shortened)."""


def create_overlay(backing: Path, dest: Path, backing_format: str, size: int | None = None,
                   unsafe: bool = False) -> Path:
    """A qcow2 at DEST over BACKING (BACKING_FORMAT: raw or qcow2), of SIZE bytes (None:
    the backing file's); UNSAFE: BACKING is not opened (it is in use by a running VM)."""
    # unique per call: threads of one process make overlays of one template at once
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", *(["-u"] if unsafe else []), "-F", backing_format,
            "-b", str(backing.absolute()), str(tmp), *([str(size)] if size is not None else [])]
    try:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except FileNotFoundError as e:
            raise OverlayError("qemu-img is not installed (Debian: qemu-utils)") from e
        if r.returncode != 0:
            out = (r.stderr or r.stdout).strip()
            if os.strerror(errno.ENOSPC) in out:  # as the tool says it in English
                raise OSError(errno.ENOSPC, f"qemu-img create: {out[-200:]}", str(dest))
            raise OverlayError(f"qemu-img create: {out[-400:]}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
