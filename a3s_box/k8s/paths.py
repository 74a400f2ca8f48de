"""Where the shim keeps things on the host: its run folder (A3S_BOX_SHIM_RUN) with each
pod's ttrpc socket and VM sockets, and its a3s-box home (A3S_BOX_HOME).

Both the `containerd-shim-a3sbox-v2` commands (shim.py) and the task service read
these; keeping them here lets the task service be imported without shim.py.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from a3s_box.home import Home

RUN_DIR = Path(os.environ.get("A3S_BOX_SHIM_RUN", "/run/a3sbox-shim"))


def socket_path(namespace: str, container_id: str) -> Path:
    # sun_path holds 107 bytes: name the socket by a hash of what identifies it
    digest = hashlib.sha256(f"{namespace}/{container_id}".encode()).hexdigest()[:24]
    return RUN_DIR / f"{digest}.sock"


def vm_rundir(run_dir: Path, pod_id: str) -> Path:
    # the VM's sockets: a short path (sun_path holds 107 bytes)
    return run_dir / f"vm-{hashlib.sha256(pod_id.encode()).hexdigest()[:16]}"


def shim_home() -> Home:
    """The shim's a3s-box home (a home of its own: `box setup` provisions its kernel)."""
    return Home(Path(os.environ.get("A3S_BOX_HOME", "/var/lib/a3s-box")))
