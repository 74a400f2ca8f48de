"""One microVM per pod: booted for the pod sandbox (the pause container's Create), or
for a lone container (`ctr run`, no sandbox). Its root disk is built from the first
container's rootfs; every further container of the pod gets its rootfs through one
virtio-fs share of the pod: the shim mounts the snapshotter's mounts below the share
on the host, and mount propagation carries them into virtiofsd's namespace (the share
is a shared mount; virtiofsd's own view is its slave), so a container created after
boot appears in the guest at GUEST_POD/<id>/rootfs. Kata Containers shares rootfs
the same way.

The VM starts from a snapshot template of its image and size when its root disk is an
image's layers alone (k8s/rootdisk.py); the template has neither the share nor the NIC,
which are hot-plugged into each clone (drivers/qemu/snapshot.py), the pod's address given
to the guest by NET.

Side effects (mounts, disks, the VM) live here and in task.py; routing in service.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from a3s_box.drivers.base import BoxLaunch, BoxVolume, VmHandle
from a3s_box.guest.client import GuestClient
from a3s_box.guest.protocol import BoxConfig
from a3s_box.home import Home
from a3s_box.k8s.annotations import pod_boot
from a3s_box.k8s.egress import NETWORK_ANNOTATION, PodEgress, PodEgressError, pod_egress
from a3s_box.k8s.rootdisk import root_disk
from a3s_box.k8s.service import FAILED_PRECONDITION, ShimError
from a3s_box.network import podnet
from a3s_box.network.ca import ensure_ca
from a3s_box.network.registration import BoxNetwork, EgressError, register_box
from a3s_box.network.trust import GUEST_CA_BUNDLE, GUEST_CA_CERT, TRUST_STORES, ca_environment

GUEST_POD = "/run/a3s/pod"  # where the pod's share is mounted in the guest
DEFAULT_MEMORY_MIB = 256
# an image's trust store, where distributions keep it (Debian/Alpine, Fedora, others)


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
        self.egress: PodEgress | None = None  # its allow-list and secret variables (annotations)
        self.network: BoxNetwork | None = None  # then: its registration with the egress proxy
        self.placeholders: dict[str, str] = {}  # secret variable -> its placeholder in the pod
        self.secret_values: dict[str, str] = {}  # secret variable -> the value the proxy puts in

    def boot(self, spec: dict[str, Any], mounts: list[Any]) -> int:
        from a3s_box.drivers.registry import Capability, driver_with

        annotations = {str(k): str(v) for k, v in (spec.get("annotations") or {}).items()}
        try:  # before anything is mounted or booted: annotations it cannot honour start nothing
            self.egress = pod_egress(annotations)
            boot = pod_boot(annotations)
        except (PodEgressError, ValueError) as e:
            raise ShimError(FAILED_PRECONDITION, f"pod {self.id}: {e}") from e
        if self.egress is not None and pod_netns(spec) is None:
            raise ShimError(FAILED_PRECONDITION, f"pod {self.id}: annotation {NETWORK_ANNOTATION} needs the pod's "
                            "own network (not hostNetwork)")
        self._mounted_root = mount_all(mounts, self.rootfs)
        self.state_dir.mkdir(exist_ok=True)
        disk, image = root_disk(self.home.cache, self.state_dir, mounts, self.rootfs)
        self.share.mkdir(exist_ok=True)
        # a mount of its own, shared: what is mounted below it later propagates into
        # virtiofsd's namespace (a slave of it)
        _run(["mount", "--bind", str(self.share), str(self.share)], "pod share")
        _run(["mount", "--make-shared", str(self.share)], "pod share")
        share = BoxVolume(kind="bind", target=GUEST_POD, source=str(self.share))
        pod_memory = int(os.environ.get("A3S_BOX_POD_MEMORY_MIB", "0") or 0)
        self.netns = pod_netns(spec)
        box_id = f"k8s.{self.id}"[:60]
        if self.egress is not None:
            self._register_egress(box_id)
        # from a snapshot template of its image and size where its rootfs is the image's
        # layers alone (k8s/rootdisk.py); the pod's share and NIC are hot-plugged into it
        boot = boot if image else "cold"
        launch = BoxLaunch(box_id=box_id, rundir=self.rundir, vcpus=vcpus(spec),
                           memory_mib=memory_mib(spec, max(DEFAULT_MEMORY_MIB, pod_memory)), disk=disk,
                           config=BoxConfig(hostname=str(spec.get("hostname") or self.id[:63])),
                           volumes=(share,), boot=boot, image=f"pod-root:{image}" if image else "",
                           pod_network=self.netns, pod_egress=self.egress is not None)
        driver = driver_with({Capability.VOLUMES}, self.home)  # the pod share is a bind volume
        self.handle = driver.start(launch, 180.0)
        # for `shim delete`: containerd's cleanup when this daemon died with the VM up
        (self.state_dir / "handle.json").write_text(json.dumps(self.handle.to_json()))
        self.client = GuestClient(driver.connect(self.handle, 10.0), box=self.id)
        self.client.hello(10.0)
        return self.handle.pid

    # --- egress: the allow-list and the secrets ----------------------------------------
    def _register_egress(self, box_id: str) -> None:
        """The pod's flows served by the host's egress proxy under its policy, from
        listeners in its namespace that plug(routed=True) redirects every new flow to;
        registered before the VM exists, so none of its flows finds nobody there."""
        assert self.egress is not None and self.netns is not None
        ca_dir = self.state_dir / "ca"
        ca_dir.mkdir(mode=0o700, exist_ok=True)
        ensure_ca(ca_dir, box_id)
        self.rundir.mkdir(parents=True, exist_ok=True)
        conf = {"box_id": box_id, "policy": self.egress.policy.to_json(), "secrets": {}, "forwards": [],
                "ca_dir": str(ca_dir)}
        try:
            self.network = register_box(self.home.root, self.rundir, conf, namespace=podnet.PodNamespace(self.netns),
                                        on_failure=self._egress_failed)
        except (EgressError, podnet.PodNetError) as e:
            raise ShimError(FAILED_PRECONDITION, f"pod {self.id}: egress: {e}") from e
        self.placeholders = self.egress.placeholders()

    def _egress_failed(self, reason: str) -> None:
        # flows wait unserved in the listeners' queues (fail closed); the pod is stopped
        if self.handle is not None:
            from a3s_box.drivers.registry import get_driver

            print(f"pod {self.id}: {reason}: stopping its VM", file=sys.stderr, flush=True)
            get_driver(self.handle.driver, self.home).stop(self.handle, 10.0)

    def secret_env(self, container_id: str, env: list[str]) -> list[str]:
        """ENV (NAME=VALUE items of a container's process or exec) with each secret
        variable's value replaced by the pod's placeholder, the value given to the proxy
        first (a value two containers disagree on is refused: the proxy has one per pod)."""
        if not self.placeholders:
            return env
        out, new = [], False
        for item in env:
            name, eq, value = item.partition("=")
            if not eq or name not in self.placeholders:
                out.append(item)
                continue
            if value != self.placeholders[name]:
                known = self.secret_values.get(name)
                if known is None:
                    self.secret_values[name] = value
                    new = True
                elif known != value:
                    raise ShimError(FAILED_PRECONDITION, f"container {container_id}: secret variable {name} has "
                                    "another value than in the pod's other containers (its proxy holds one)")
            out.append(f"{name}={self.placeholders[name]}")
        if new:
            assert self.egress is not None and self.network is not None
            secrets = {n: {"placeholder": self.placeholders[n], "value": v, "hosts": list(self.egress.secret_hosts[n])}
                       for n, v in sorted(self.secret_values.items())}
            try:
                self.network.update_secrets(secrets)
            except EgressError as e:
                raise ShimError(FAILED_PRECONDITION, f"container {container_id}: {e}") from e
        if any(i.partition("=")[0] in self.placeholders for i in env):
            # its TLS clients trust the pod's CA (the proxy intercepts the secrets' hosts)
            ca_env = ca_environment()
            out = [i for i in out if i.partition("=")[0] not in ca_env] + [f"{k}={v}" for k, v in ca_env.items()]
        return out

    def trust_files(self, container_id: str, rootfs: Path) -> list[tuple[str, str]]:
        """(host file, path in the container) of the pod's CA and of ROOTFS's trust
        store with the CA added, for a member container of a pod with secrets."""
        if not self.placeholders:
            return []
        ca = (self.state_dir / "ca" / "ca.pem").read_bytes()
        store = next((found for rel in TRUST_STORES if (found := read_inside(rootfs, rel)) is not None), b"")
        folder = self.state_dir / "trust" / _dir_name(container_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ca.pem").write_bytes(ca)
        (folder / "ca-bundle.pem").write_bytes(store.rstrip(b"\n") + b"\n" + ca)
        return [(str(folder / "ca-bundle.pem"), GUEST_CA_BUNDLE), (str(folder / "ca.pem"), GUEST_CA_CERT)]

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

    def member_rootfs(self, container_id: str) -> Path:
        return self.share / _dir_name(container_id) / "rootfs"

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
        if self.network is not None:
            self.network.close()
            self.network = None
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


def read_inside(root: Path, rel: str, limit: int = 8 << 20) -> bytes | None:
    """ROOT/REL's bytes if it is a regular file reached without following a link (an
    image's files are its author's: a link must not make the host read its own files
    into a container), of at most LIMIT bytes; None otherwise."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(root, flags | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        parts = rel.strip("/").split("/")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt = os.open(part, flags | (0 if last else os.O_DIRECTORY) | (os.O_NONBLOCK if last else 0), dir_fd=fd)
            os.close(fd)
            fd = nxt
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def _dir_name(container_id: str) -> str:
    # container ids are [A-Za-z0-9_.-]; a hash keeps any other from naming a path
    safe = all(c.isalnum() or c in "_.-" for c in container_id) and container_id not in ("", ".", "..")
    return container_id if safe and len(container_id) <= 64 else hashlib.sha256(container_id.encode()).hexdigest()[:32]
