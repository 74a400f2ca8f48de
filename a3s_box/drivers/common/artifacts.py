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
from a3s_box.drivers.common.kernel import GuestModule, Kernel, cached_kernel, ensure_kernel, provisioned_stamp
from a3s_box.errors import BoxError
from a3s_box.guest.build import build_guest_init, cached_guest_init
from a3s_box.home import Home


@dataclass(frozen=True)
class GuestArtifacts:
    kernel: Path
    initramfs: Path
    kernel_release: str
    init_binary: Path
    pci_hotplug: bool = True  # the kernel probes hot-plugged virtio PCI devices (Kernel.pci_hotplug)


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


def _stamp(home: Home, init_binary: Path, files: tuple[Path, ...] = ()) -> object | None:
    kernel = provisioned_stamp(home.cache)
    if kernel is None:
        return None
    try:
        return (kernel, init_binary, tuple((st.st_ino, st.st_size, st.st_mtime_ns)
                                           for f in files for st in (os.stat(f),)))
    except OSError:
        return None


# per process: a box start asks twice, and reading and hashing the modules and the init
# to name the initramfs cost 2 ms each time
_known: dict[Path, tuple[object, GuestArtifacts]] = {}


def ensure_guest_artifacts(home: Home, progress: bool = False, complete: bool = False) -> GuestArtifacts:
    """Provision (once) and return the guest kernel, init and initramfs. Idempotent;
    after the first run it needs no network and only reads the cache. Kept per process
    while the provisioned kernel, the init's sources and the files stand. COMPLETE
    (`box setup`): a kernel provisioned without a module wanted since is provisioned anew."""
    home.ensure()
    kept = _known.get(home.cache)
    if not progress and not complete and kept is not None:
        art = kept[1]  # the init's path names its sources' hash
        stamp = _stamp(home, cached_guest_init(home.cache), (art.kernel, art.initramfs, art.init_binary))
        if stamp is not None and stamp == kept[0]:
            return art
    say = _say if progress else (lambda _m: None)
    kernel = ensure_kernel(home.cache, say, complete)
    init_binary = build_guest_init(home.cache)
    try:
        initramfs = build_initramfs(home.cache, init_binary, kernel)
    except OSError as e:
        raise BoxError(f"guest initramfs: cannot write into {home.cache}: {e}") from e
    if progress:
        say(f"guest init {init_binary}")
        say(f"initramfs {initramfs}")
    art = GuestArtifacts(kernel.vmlinuz, initramfs, kernel.release, init_binary, kernel.pci_hotplug)
    stamp = _stamp(home, init_binary, (art.kernel, art.initramfs, art.init_binary))
    if stamp is not None:
        _known[home.cache] = (stamp, art)
    return art


def existing_guest_artifacts(home: Home) -> tuple[Kernel | None, Path | None]:
    """What is already provisioned, without building or downloading anything (doctor)."""
    try:
        kernel = cached_kernel(home.cache)
    except BoxError:
        kernel = None

    init = cached_guest_init(home.cache)
    return kernel, (init if init.is_file() else None)
