"""A pod VM's root disk: the first container's rootfs as an ext4 image, under a qcow2
overlay the VM writes.

When containerd's snapshotter gives that rootfs as an overlay of committed layers over an
empty upper folder (what the overlayfs snapshotter does for a container just created),
the ext4 image is made once per set of layers and kept in HOME.cache/pod-roots/, shared
by every pod of that image: its name is the layers' identity (layer_identity), which is
also the image a snapshot template of such pods is keyed by. A committed layer never
changes; its folder's path, inode and change time name it (a snapshotter reset reuses
paths, not inodes and times). Anything else (a bind of a plain folder, a rootfs already
written to) is built per pod and starts its VM cold.

An image is built under a temporary name and linked into place, under a lock: a pod never
sees half an image, and two pods of one image never replace each other's (templates sit
on these files as backing files, so one must never change once made).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from a3s_box.disks.overlay import OverlayError, create_overlay
from a3s_box.k8s.service import FAILED_PRECONDITION, ShimError

MIN_SIZE_MIB = 256


def _run(argv: list[str], what: str, timeout: float = 300) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise ShimError(FAILED_PRECONDITION, f"{what}: {(r.stderr or r.stdout).strip()}")


def layer_identity(mounts: list[Any]) -> str:
    """The committed layers MOUNTS (the snapshotter's) lay an empty upper folder over, as a
    hex digest; "" when they are anything else."""
    if len(mounts) != 1 or mounts[0].type != "overlay":
        return ""
    opts = dict(o.partition("=")[::2] for o in mounts[0].options)
    lower, upper = opts.get("lowerdir", ""), opts.get("upperdir", "")
    if not lower or not upper:
        return ""
    try:
        with os.scandir(upper) as entries:
            if any(entries):
                return ""  # already written to: not the image's content alone
        ids = []
        for layer in lower.split(":"):
            st = os.stat(layer)
            ids.append(f"{layer}:{st.st_ino}:{st.st_ctime_ns}")
    except OSError:
        return ""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:32]


def build_image(rootfs: Path, dest: Path) -> None:
    """ROOTFS as an ext4 image at DEST (mkfs.ext4 -d), twice its size and 256 MiB more."""
    used = int(subprocess.run(["du", "-sb", str(rootfs)], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    size_mib = max(MIN_SIZE_MIB, (used >> 20) * 2 + MIN_SIZE_MIB)
    _run(["mkfs.ext4", "-q", "-F", "-d", str(rootfs), str(dest), f"{size_mib}M"], "rootfs disk")
    os.chmod(dest, 0o644)


def shared_image(cache: Path, identity: str, rootfs: Path) -> Path:
    """The ext4 image of IDENTITY's layers (mounted at ROOTFS), made once."""
    folder = cache / "pod-roots"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{identity}.ext4"
    if final.is_file():
        return final
    with open(folder / f".{identity}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_file():
            return final
        fd, name = tempfile.mkstemp(prefix=f".{identity}.", suffix=".tmp", dir=folder)
        os.close(fd)
        tmp = Path(name)
        try:
            build_image(rootfs, tmp)
            os.link(tmp, final)  # never over an existing one
        finally:
            tmp.unlink(missing_ok=True)
    return final


def root_disk(cache: Path, state_dir: Path, mounts: list[Any], rootfs: Path) -> tuple[Path, str]:
    """(the pod's qcow2 overlay in STATE_DIR, the image identity its snapshot template is
    keyed by: "" when it has none and boots cold)."""
    identity = layer_identity(mounts)
    if identity:
        base = shared_image(cache, identity, rootfs)
    else:
        base = state_dir / "rootfs.ext4"
        build_image(rootfs, base)
    try:
        return create_overlay(base, state_dir / "disk.qcow2", "raw"), identity
    except OverlayError as e:
        raise ShimError(FAILED_PRECONDITION, f"rootfs overlay: {e}") from e
