"""One microVM per pod: booted for the pod sandbox (the pause container's Create), or
for a lone container (`ctr run`, no sandbox). Its root disk is built from the first
container's rootfs; every further container of the pod gets its rootfs through one
virtio-fs share of the pod: the shim mounts the snapshotter's mounts below the share
on the host, and mount propagation carries them into virtiofsd's namespace (the share
is a shared mount; virtiofsd's own view is its slave), so a container created after
boot appears in the guest at GUEST_POD/<id>/rootfs. Kata Containers shares rootfs
the same way.

Side effects (mounts, disks, the VM) live here and in task.py; routing in service.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from a3s_box.drivers.base import BoxLaunch, BoxVolume, VmHandle
from a3s_box.guest.client import GuestClient
from a3s_box.guest.protocol import BoxConfig
from a3s_box.home import Home
from a3s_box.k8s.service import FAILED_PRECONDITION, ShimError
from a3s_box.network import podnet

GUEST_POD = "/run/a3s/pod"  # where the pod's share is mounted in the guest
DEFAULT_MEMORY_MIB = 256


def _run(argv: list[str], what: str, timeout: float = 120) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise ShimError(FAILED_PRECONDITION, f"{what}: {(r.stderr or r.stdout).strip()}")


def mount_all(mounts: list[Any], target: Path) -> bool:
    """The snapshotter's mounts on TARGET; whether anything was mounted."""
    target.mkdir(parents=True, exist_ok=True)
    for m in mounts:
        opts = ",".join(m.options)
        _run(["mount", "-t", m.type, *(["-o", opts] if opts else []), m.source, str(target)],
             f"mount rootfs ({m.type}) on {target}")
    return bool(mounts)


def unmount_tree(path: Path) -> None:
    """Everything mounted at or below PATH, deepest first."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    base = str(path)
    points = [f[4].replace("\\040", " ") for f in (line.split() for line in lines) if len(f) > 4]
    for point in sorted({p for p in points if p == base or p.startswith(base + "/")}, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=60)


def memory_mib(spec: dict[str, Any], default: int = DEFAULT_MEMORY_MIB) -> int:
    limit = (((spec.get("linux") or {}).get("resources") or {}).get("memory") or {}).get("limit")
    return max(default, int(limit) >> 20) if limit and int(limit) > 0 else default


def pod_netns(spec: dict[str, Any]) -> str | None:
    """The network namespace the CRI plugin made for the pod (and CNI addressed), from the
    sandbox's spec; None for a pod on the node's network (hostNetwork) or a lone container."""
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        if isinstance(ns, dict) and ns.get("type") == "network" and ns.get("path"):
            return str(ns["path"])
    return None


def vcpus(spec: dict[str, Any]) -> int:
    cpu = ((spec.get("linux") or {}).get("resources") or {}).get("cpu") or {}
    quota, period = cpu.get("quota"), cpu.get("period")
    if quota and period and int(quota) > 0:
        return max(1, -(-int(quota) // int(period)))
    return 1


class Pod:
    def __init__(self, home: Home, pod_id: str, bundle: Path, rundir: Path) -> None:
        self.home = home
        self.id = pod_id
        self.state_dir = bundle / "a3sbox"  # its disks and the share
        self.share = self.state_dir / "pod"
        self.rootfs = bundle / "rootfs"
        self.rundir = rundir
        self.handle: VmHandle | None = None
        self.client: GuestClient | None = None
        self._mounted_root = False
        self.members: set[str] = set()  # containers other than the first, by id
        self.netns: str | None = None  # the pod's network namespace (CNI's), the VM plugged into it

    def boot(self, spec: dict[str, Any], mounts: list[Any]) -> int:
        from a3s_box.drivers.registry import Capability, driver_with

        self._mounted_root = mount_all(mounts, self.rootfs)
        self.state_dir.mkdir(exist_ok=True)
        disk = self._disk_from(self.rootfs)
        self.share.mkdir(exist_ok=True)
        # a mount of its own, shared: what is mounted below it later propagates into
        # virtiofsd's namespace (a slave of it)
        _run(["mount", "--bind", str(self.share), str(self.share)], "pod share")
        _run(["mount", "--make-shared", str(self.share)], "pod share")
        share = BoxVolume(kind="bind", target=GUEST_POD, source=str(self.share))
        pod_memory = int(os.environ.get("A3S_BOX_POD_MEMORY_MIB", "0") or 0)
        self.netns = pod_netns(spec)
        launch = BoxLaunch(box_id=f"k8s.{self.id}"[:60], rundir=self.rundir, vcpus=vcpus(spec),
                           memory_mib=memory_mib(spec, max(DEFAULT_MEMORY_MIB, pod_memory)), disk=disk,
                           config=BoxConfig(hostname=str(spec.get("hostname") or self.id[:63])),
                           volumes=(share,), boot="cold", pod_network=self.netns)
        driver = driver_with({Capability.VOLUMES}, self.home)  # the pod share is a bind volume
        self.handle = driver.start(launch, 180.0)
        # for `shim delete`: containerd's cleanup when this daemon died with the VM up
        (self.state_dir / "handle.json").write_text(json.dumps(self.handle.to_json()))
        self.client = GuestClient(driver.connect(self.handle, 10.0), box=self.id)
        self.client.hello(10.0)
        return self.handle.pid

    def _disk_from(self, rootfs: Path) -> Path:
        """The rootfs as an ext4 image (mkfs.ext4 -d), under a qcow2 overlay the VM writes."""
        used = int(subprocess.run(["du", "-sb", str(rootfs)], capture_output=True, text=True,
                                  check=True).stdout.split()[0])
        raw = self.state_dir / "rootfs.ext4"
        size_mib = max(256, (used >> 20) * 2 + 256)
        _run(["mkfs.ext4", "-q", "-F", "-d", str(rootfs), str(raw), f"{size_mib}M"], "rootfs disk", 300)
        os.chmod(raw, 0o644)
        overlay = self.state_dir / "disk.qcow2"
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(raw), str(overlay)],
             "rootfs overlay")
        return overlay

    # --- further containers ---------------------------------------------------------
    def add_rootfs(self, container_id: str, mounts: list[Any], bundle_rootfs: Path) -> str:
        """Mount a member's rootfs below the share; its path in the guest."""
        if not mounts and not bundle_rootfs.is_dir():
            raise ShimError(FAILED_PRECONDITION, f"container {container_id}: no rootfs (no mounts, no "
                            f"{bundle_rootfs})")
        where = self.share / _dir_name(container_id) / "rootfs"
        self.members.add(container_id)
        if mounts:
            mount_all(mounts, where)
        else:  # a bundle whose rootfs is a plain folder already
            where.mkdir(parents=True, exist_ok=True)
            _run(["mount", "--rbind", str(bundle_rootfs), str(where)], f"container {container_id}: rootfs")
        return f"{GUEST_POD}/{_dir_name(container_id)}/rootfs"

    def add_bind(self, container_id: str, index: int, source: str, read_only: bool) -> str:
        """A host path the container's spec binds (a Kubernetes volume, resolv.conf...),
        made visible through the share; its path in the guest."""
        name = f"m{index}"
        where = self.share / _dir_name(container_id) / name
        if Path(source).is_dir():
            where.mkdir(parents=True, exist_ok=True)
        else:
            where.parent.mkdir(parents=True, exist_ok=True)
            where.touch()
        _run(["mount", "--rbind", source, str(where)], f"container {container_id}: bind {source}")
        if read_only:  # read-only on the host's side: no guest request writes through it
            _run(["mount", "-o", "remount,bind,ro", str(where)], f"container {container_id}: bind {source}")
        return f"{GUEST_POD}/{_dir_name(container_id)}/{name}"

    def remove(self, container_id: str) -> None:
        self.members.discard(container_id)
        where = self.share / _dir_name(container_id)
        unmount_tree(where)
        shutil.rmtree(where, ignore_errors=True)

    def close(self) -> None:
        """VM gone, every mount of the pod undone, its disks and sockets removed."""
        from a3s_box.drivers.registry import get_driver

        if self.client is not None:
            self.client.close()
            self.client = None
        if self.handle is not None:
            get_driver(self.handle.driver, self.home).stop(self.handle, 10.0)
            self.handle = None
        if self.netns is not None:
            podnet.unplug(self.netns)
            self.netns = None
        unmount_tree(self.share)
        if self._mounted_root:
            subprocess.run(["umount", "-l", str(self.rootfs)], capture_output=True, timeout=60)
            self._mounted_root = False
        shutil.rmtree(self.state_dir, ignore_errors=True)
        shutil.rmtree(self.rundir, ignore_errors=True)


def reap(home: Home, bundle: Path, container_id: str, pod_id: str) -> None:
    """What a dead shim daemon left of a container (containerd's `shim delete`): the
    pod's VM if the container was its first, the container's mounts, its state."""
    from a3s_box.drivers.registry import get_driver

    if pod_id == container_id:
        handle_file = bundle / "a3sbox" / "handle.json"
        if handle_file.exists():
            try:
                handle = VmHandle.from_json(json.loads(handle_file.read_text()))
                get_driver(handle.driver, home).stop(handle, 10.0)
            except (OSError, ValueError, KeyError):
                pass
        unmount_tree(bundle / "a3sbox")
        unmount_tree(bundle / "rootfs")
        shutil.rmtree(bundle / "a3sbox", ignore_errors=True)
    else:  # a member: its mounts below its sandbox's share
        where = bundle.parent / pod_id / "a3sbox" / "pod" / _dir_name(container_id)
        unmount_tree(where)
        shutil.rmtree(where, ignore_errors=True)


def _dir_name(container_id: str) -> str:
    # container ids are [A-Za-z0-9_.-]; a hash keeps any other from naming a path
    safe = all(c.isalnum() or c in "_.-" for c in container_id) and container_id not in ("", ".", "..")
    return container_id if safe and len(container_id) <= 64 else hashlib.sha256(container_id.encode()).hexdigest()[:32]
