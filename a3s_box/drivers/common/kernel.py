"""The guest kernel: a vmlinuz plus the few modules the guest needs, in load order.

Either the user's own (`A3S_BOX_KERNEL` = a vmlinuz, `A3S_BOX_KERNEL_MODULES` = its
/lib/modules/<release> folder, optional when the drivers are built in), or Debian's
cloud kernel fetched with `apt-get download` and unpacked with `dpkg-deb -x` into
home.cache/kernels/<release>/. A cached kernel is used as is, with no network.

    kernels/<release>/vmlinuz
    kernels/<release>/modules/<name>.ko     only the needed ones, decompressed
    kernels/<release>/modules/load          their names in load order
    kernels/current                         the release to use (written last)
"""
from __future__ import annotations

import fcntl
import gzip
import lzma
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from a3s_box.drivers.common.modinfo import ModuleError, canonical, load_order, parse_modinfo
from a3s_box.errors import BoxError

# virtio-mmio transport, the console port, the root disk; vsock for libkrun-style boots
# and virtio_net / virtiofs for boxes with a network or bind volumes (their probe costs
# nothing without a device); virtio_pci for the shares hot-plugged into a snapshot clone
# (drivers/qemu/snapshot.py)
WANTED_MODULES = ("virtio_mmio", "virtio_console", "virtio_blk", "vsock",
                  "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport", "virtio_net",
                  "virtiofs", "virtio_pci")
# A kernel provisioned before virtio_pci was wanted still serves (a host offline after an
# upgrade keeps its boxes); without it nothing is hot-plugged, and such boxes boot cold
HOTPLUG_MODULE = "virtio_pci"
ENV_KERNEL = "A3S_BOX_KERNEL"
ENV_MODULES = "A3S_BOX_KERNEL_MODULES"
_META_PACKAGE = {"x86_64": "linux-image-cloud-amd64", "aarch64": "linux-image-cloud-arm64"}

Progress = Callable[[str], None]


class KernelError(BoxError):
    """The guest kernel could not be found, fetched or unpacked."""

    def __init__(self, message: str) -> None:
        super().__init__(f"guest kernel: {message}")


@dataclass(frozen=True)
class GuestModule:
    name: str
    data: bytes  # uncompressed .ko


@dataclass(frozen=True)
class Kernel:
    vmlinuz: Path
    release: str
    modules: tuple[GuestModule, ...]  # in load order
    pci_hotplug: bool = True  # it can probe a hot-plugged virtio PCI device (drivers/qemu/snapshot.py)


# --- modules ------------------------------------------------------------------


def _read_ko(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(raw)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(raw)
    if path.name.endswith(".ko"):
        return raw
    raise KernelError(f"{path}: unsupported module compression (use .ko, .ko.xz or .ko.gz)")


def _module_name(path: Path) -> str:
    return canonical(path.name.split(".ko", 1)[0])


def collect_modules(modules_dir: Path, wanted: tuple[str, ...] = WANTED_MODULES) -> list[GuestModule]:
    """The wanted modules of a /lib/modules/<release> tree and their dependencies, in
    load order. A wanted module the kernel does not ship as a module is assumed built in."""
    files: dict[str, Path] = {}
    for p in sorted(modules_dir.rglob("*.ko*")):
        files.setdefault(_module_name(p), p)
    infos: dict[str, tuple[tuple[str, ...], bytes]] = {}
    todo = [canonical(w) for w in wanted if canonical(w) in files]
    while todo:
        name = todo.pop()
        if name in infos:
            continue
        try:
            data = _read_ko(files[name])
        except (OSError, lzma.LZMAError, EOFError) as e:
            raise KernelError(f"{files[name]}: {e}") from e
        info = parse_modinfo(data, str(files[name]))
        infos[name] = (info.depends, data)
        for dep in info.depends:
            if dep not in files:
                raise KernelError(f"module {name} needs {dep}, which {modules_dir} lacks")
            todo.append(dep)
    order = load_order({n: d for n, (d, _) in infos.items()}, infos)
    return [GuestModule(n, infos[n][1]) for n in order]


# --- the cache -----------------------------------------------------------------


def kernels_dir(cache: Path) -> Path:
    return cache / "kernels"


def provisioned_stamp(cache: Path) -> tuple[int, int, int] | None:
    """What changes when `box setup` provisions another kernel (its "current" file is
    replaced); None for the user's own kernel, whose modules could change unseen."""
    if os.environ.get(ENV_KERNEL):
        return None
    try:
        st = os.stat(kernels_dir(cache) / "current")
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def cached_kernel(cache: Path, complete: bool = False) -> Kernel | None:
    """The kernel `box setup` provisioned (or the user's, from the environment), if any;
    COMPLETE: only one with every wanted module (else one without HOTPLUG_MODULE serves)."""
    if os.environ.get(ENV_KERNEL):
        return _user_kernel()
    current = kernels_dir(cache) / "current"
    try:
        release = current.read_text().strip()
    except OSError:
        return None
    root = kernels_dir(cache) / release
    try:
        names = (root / "modules" / "load").read_text().split()
        mods = tuple(GuestModule(n.removesuffix(".ko"), (root / "modules" / n).read_bytes())
                     for n in names)
    except OSError:
        return None
    have = {m.name for m in mods}
    needed = {canonical(w) for w in WANTED_MODULES if complete or w != HOTPLUG_MODULE}
    if not needed <= have:
        return None  # provisioned before a module was wanted: provision again
    vmlinuz = root / "vmlinuz"
    return Kernel(vmlinuz, release, mods, canonical(HOTPLUG_MODULE) in have) if vmlinuz.is_file() else None


def _user_kernel() -> Kernel:
    vmlinuz = Path(os.environ[ENV_KERNEL]).expanduser()
    if not vmlinuz.is_file():
        raise KernelError(f"{ENV_KERNEL}={vmlinuz}: no such file")
    mods_env = os.environ.get(ENV_MODULES)
    if not mods_env:
        return Kernel(vmlinuz, "custom", ())  # drivers built in
    mods = Path(mods_env).expanduser()
    if not mods.is_dir():
        raise KernelError(f"{ENV_MODULES}={mods}: no such folder")
    try:
        return Kernel(vmlinuz, mods.name, tuple(collect_modules(mods)))
    except ModuleError as e:
        raise KernelError(f"{ENV_MODULES}={mods}: {e}") from e


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # one provisioning at a time; others then reuse it
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_kernel(cache: Path, progress: Progress, complete: bool = False) -> Kernel:
    """The cached kernel, or one provisioned now. COMPLETE (`box setup`): a cached kernel
    without HOTPLUG_MODULE is provisioned again, and kept if that cannot be done."""
    found = cached_kernel(cache, complete)
    if found is not None:
        return found
    with _locked(kernels_dir(cache) / ".lock"):
        found = cached_kernel(cache, complete)
        if found is not None:
            return found
        older = cached_kernel(cache) if complete else None
        try:
            return _provision_debian(cache, progress)
        except KernelError as e:
            if older is None:
                raise
            progress(f"kept kernel {older.release} without {HOTPLUG_MODULE} (boxes with bind volumes and pods "
                     f"boot cold): {e}")
            return older


# --- Debian's cloud kernel ---------------------------------------------------------


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as e:
        raise KernelError(f"{argv[0]} is not available on this host: set {ENV_KERNEL} to a "
                          f"vmlinuz (and {ENV_MODULES} to its modules folder)") from e
    except (OSError, subprocess.TimeoutExpired) as e:
        raise KernelError(f"{' '.join(argv)}: {e}") from e
    if proc.returncode != 0:
        raise KernelError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-500:]}; or set "
                          f"{ENV_KERNEL} to your own vmlinuz")
    return proc.stdout


def versioned_package(apt_cache_depends: str, meta: str) -> str:
    """`linux-image-6.1.0-NN-cloud-amd64` out of `apt-cache depends <meta>` output."""
    for line in apt_cache_depends.splitlines():
        key, _, value = line.strip().partition(":")
        value = value.strip()
        if key == "Depends" and value.startswith("linux-image-") and value != meta:
            return value
    raise KernelError(f"apt-cache depends {meta}: no versioned linux-image package listed")


def _provision_debian(cache: Path, progress: Progress) -> Kernel:
    meta = _META_PACKAGE.get(platform.machine())
    if meta is None:
        raise KernelError(f"no Debian cloud kernel known for {platform.machine()}: "
                          f"set {ENV_KERNEL}")
    package = versioned_package(_run(["apt-cache", "depends", meta]), meta)
    kdir = kernels_dir(cache)
    kdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=kdir))
    try:
        progress(f"downloading {package} (apt-get download)")
        _run(["apt-get", "download", "-q", package], cwd=tmp)
        debs = sorted(tmp.glob("*.deb"))
        if not debs:
            raise KernelError(f"apt-get download {package} left no .deb")
        progress(f"unpacking {debs[0].name}")
        _run(["dpkg-deb", "-x", str(debs[0]), str(tmp / "x")])
        releases = sorted(p.name for p in (tmp / "x/lib/modules").iterdir())
        if len(releases) != 1:
            raise KernelError(f"{debs[0].name}: expected one /lib/modules/<release>, "
                              f"found {releases}")
        release = releases[0]
        vmlinuz = tmp / "x/boot" / f"vmlinuz-{release}"
        mods = collect_modules(tmp / "x/lib/modules" / release)
        stage = tmp / release
        (stage / "modules").mkdir(parents=True)
        shutil.copyfile(vmlinuz, stage / "vmlinuz")
        for m in mods:
            (stage / "modules" / f"{m.name}.ko").write_bytes(m.data)
        (stage / "modules" / "load").write_text("".join(f"{m.name}.ko\n" for m in mods))
        final = kdir / release
        if final.exists():
            shutil.rmtree(final)  # a leftover without `current` pointing at it: incomplete
        stage.rename(final)
        pointer = tmp / "current"
        pointer.write_text(release + "\n")
        pointer.rename(kdir / "current")  # the commit point: only now is setup "done"
        progress(f"kernel {release}: {len(mods)} modules ({', '.join(m.name for m in mods)})")
        return Kernel(final / "vmlinuz", release, tuple(mods))
    except (OSError, ModuleError) as e:
        raise KernelError(f"cannot provision {package}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
