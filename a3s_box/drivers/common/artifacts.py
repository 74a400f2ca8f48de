"""Everything a guest boots from: the kernel and an initramfs holding the guest init.

The initramfs is a gzipped newc cpio with
    /init                  the guest init (a3s_box/guest/init, compiled with musl)
    /a3s/modules/*.ko      the kernel modules the guest needs
    /a3s/modules/load      their file names in load order, one per line
cached as home.cache/initramfs/<hash of init + modules>.cpio.gz, written to a
temporary file and renamed, so a half-written one is never used.
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from a3s_box.atomic import write_bytes_atomic
from a3s_box.drivers.common.cpio import Entry, gzip_newc
from a3s_box.drivers.common.kernel import GuestModule, Kernel, cached_kernel, ensure_kernel
from a3s_box.errors import BoxError
from a3s_box.guest.build import build_guest_init
from a3s_box.home import Home


@dataclass(frozen=True)
class GuestArtifacts:
    kernel: Path
    initramfs: Path
    kernel_release: str
    init_binary: Path


def initramfs_entries(init: bytes, modules: tuple[GuestModule, ...]) -> list[Entry]:
    """Pure: the initramfs members, parents first."""
    entries = [Entry.file("init", init, 0o755), Entry.dir("a3s"), Entry.dir("a3s/modules")]
    for m in modules:
        entries.append(Entry.file(f"a3s/modules/{m.name}.ko", m.data))
    if modules:
        load = "".join(f"{m.name}.ko\n" for m in modules).encode()
        entries.append(Entry.file("a3s/modules/load", load))
    return entries


def initramfs_key(init: bytes, modules: tuple[GuestModule, ...]) -> str:
    h = hashlib.sha256(b"a3s-initramfs-1\0" + init)
    for m in modules:
        h.update(b"\0" + m.name.encode() + b"\0" + hashlib.sha256(m.data).digest())
    return h.hexdigest()[:20]


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)  # 0644: every box's confined QEMU reads it


def build_initramfs(cache: Path, init_binary: Path, kernel: Kernel) -> Path:
    init = init_binary.read_bytes()
    path = cache / "initramfs" / f"{initramfs_key(init, kernel.modules)}.cpio.gz"
    if not path.is_file():
        _write_atomic(path, gzip_newc(initramfs_entries(init, kernel.modules)))
    elif path.stat().st_mode & 0o044 != 0o044:
        path.chmod(0o644)  # written private by an older a3s-box
    return path


def _say(msg: str) -> None:
    print(f"==> {msg}", file=sys.stderr, flush=True)


def ensure_guest_artifacts(home: Home, progress: bool = False) -> GuestArtifacts:
    """Provision (once) and return the guest kernel, init and initramfs. Idempotent;
    after the first run it needs no network and only reads the cache."""
    home.ensure()
    say = _say if progress else (lambda _m: None)
    kernel = ensure_kernel(home.cache, say)
    init_binary = build_guest_init(home.cache)
    try:
        initramfs = build_initramfs(home.cache, init_binary, kernel)
    except OSError as e:
        raise BoxError(f"guest initramfs: cannot write into {home.cache}: {e}") from e
    if progress:
        say(f"guest init {init_binary}")
        say(f"initramfs {initramfs}")
    return GuestArtifacts(kernel.vmlinuz, initramfs, kernel.release, init_binary)


def existing_guest_artifacts(home: Home) -> tuple[Kernel | None, Path | None]:
    """What is already provisioned, without building or downloading anything (doctor)."""
    try:
        kernel = cached_kernel(home.cache)
    except BoxError:
        kernel = None
    from a3s_box.guest.build import cached_guest_init

    init = cached_guest_init(home.cache)
    return kernel, (init if init.is_file() else None)
