"""Bootable roots: a read-only ext4 base per image, a thin qcow2 overlay per box.

The base is built once with `mkfs.ext4 -d` (no mount, no loop device) into a sparse
file with free space for the guest's writes, then renamed into place. A box disk is
a qcow2 overlay backed by the base: milliseconds and a few hundred KiB per box.
"""
from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from a3s_box.disks.overlay import OverlayError
from a3s_box.disks.overlay import create_overlay as disk_overlay
from a3s_box.errors import ImageError
from a3s_box.units import GiB, round_up_mib


def disk_usage(path: Path) -> int:
    """Bytes a folder's content needs (file sizes + a block per inode, roughly)."""
    total = 0
    for dirpath, dirs, files in os.walk(path):
        for n in dirs + files:
            st = os.lstat(os.path.join(dirpath, n))
            total += st.st_size + 4096
    return total


def base_size(content: int) -> int:
    """Room to spare: the guest writes into its overlay, which grows into this fs's free space."""
    return round_up_mib(max(GiB, 2 * content))


def _run(argv: list[str], ref: str, what: str) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise ImageError(ref, f"{what}: {argv[0]} is not installed") from e
    except subprocess.CalledProcessError as e:
        out = (e.stderr or e.stdout).strip()
        if os.strerror(errno.ENOSPC) in out:  # as the tool says it in English (else: quoted as it is)
            raise OSError(errno.ENOSPC, f"{what}: {out[-200:]}", argv[-1]) from e
        raise ImageError(ref, f"{what} failed: {out[-400:]}") from e


def build_ext4(src: Path, dest: Path, ref: str, room: Callable[[int], None] = lambda n: None) -> Path:
    """ROOM(bytes) is asked first for what the base will take (it raises if there is none)."""
    content = disk_usage(src)
    room(content)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.truncate(base_size(content))  # sparse
        _run(["mkfs.ext4", "-q", "-F", "-d", str(src), "-L", "a3sroot", "-E", "root_owner=0:0",
              str(tmp)], ref, "building the root filesystem")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def create_overlay(base: Path, dest: Path, ref: str) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        return disk_overlay(base, dest, "raw")
    except OverlayError as e:
        raise ImageError(ref, f"creating the box disk failed: {e}") from e
