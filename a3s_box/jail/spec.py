"""What one confined process may see and be. Pure: built by the driver, carried to the
shim in launch.json, applied by `enter` in the child before exec."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Host paths every confined VMM needs read-only: its binaries and libraries.
SYSTEM_DIRS = ("/usr",)
SYSTEM_FILES = ("/etc/ld.so.cache",)
# Merged-/usr links (Debian 12, Ubuntu): recreated as links; bound read-only where real.
SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
# Read by QEMU under KVM (CPU topology, KVM module parameters); never written.
SYS_READ = ("/sys/devices/system/cpu", "/sys/module/kvm", "/sys/module/kvm_intel",
            "/sys/module/kvm_amd", "/sys/kernel/mm/transparent_hugepage")


@dataclass(frozen=True)
class Bind:
    path: str  # the same path inside the jail as on the host
    writable: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "writable": self.writable}


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpu_quota_us: int  # per CPU_PERIOD_US
    pids: int


CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class JailSpec:
    """One confined process: its ids, what it sees, its network, its cgroup."""

    name: str  # the box (or template) it serves: its cgroup and hostname
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    binds: tuple[Bind, ...] = ()
    network: str = "none"  # "none": an empty network namespace; "inherit": the one it is given
    limits: Limits | None = None  # None: no cgroup (security: relaxed where there is none)
    root: str = ""  # an empty host folder to mount the jail's root on (private to the jail)
    # without root: uid and gid are ids of the box's user namespace (a3s_box/subids.py),
    # which the VMM joins first; it keeps the user's supplementary groups when it needs
    # /dev/kvm (which none of those ids could open), else it has none
    userns: bool = False
    keep_groups: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "uid": self.uid, "gid": self.gid, "groups": list(self.groups),
                "binds": [b.to_json() for b in self.binds], "network": self.network,
                "limits": self.limits.__dict__ if self.limits else None, "root": self.root,
                "userns": self.userns, "keep_groups": self.keep_groups}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "JailSpec":
        lim = data.get("limits")
        return cls(name=str(data["name"]), uid=int(data["uid"]), gid=int(data["gid"]),
                   groups=tuple(int(g) for g in data.get("groups") or ()),
                   binds=tuple(Bind(str(b["path"]), bool(b["writable"])) for b in data.get("binds") or ()),
                   network=str(data.get("network") or "none"),
                   limits=Limits(int(lim["memory_bytes"]), int(lim["cpu_quota_us"]), int(lim["pids"]))
                   if lim else None, root=str(data.get("root") or ""),
                   userns=bool(data.get("userns")), keep_groups=bool(data.get("keep_groups")))


def merge_binds(binds: list[Bind]) -> tuple[Bind, ...]:
    """One bind per path (writable wins), sorted so parents come before children."""
    out: dict[str, Bind] = {}
    for b in binds:
        prev = out.get(b.path)
        out[b.path] = Bind(b.path, b.writable or (prev.writable if prev else False))
    return tuple(sorted(out.values(), key=lambda b: (b.path.count("/"), b.path)))


# Measured (bench/boot.py, docs/security.md): what a VMM uses beyond its guest's RAM.
# Under TCG the translated-code cache dominates (bounded by drivers.qemu.argv's
# TCG_CODE_CACHE_MIB, 128 of these 256 MiB); the helpers (egress proxy, virtiofsd)
# share the box's cgroup.
VMM_OVERHEAD_TCG = 256 << 20
VMM_OVERHEAD_KVM = 96 << 20
HELPER_OVERHEAD = 96 << 20
VMM_PIDS = 512


def box_limits(memory_mib: int, vcpus: int, accel: str, helpers: int) -> Limits:
    """The box's cgroup: its RAM plus the VMM's measured overhead, its vCPUs' worth of
    CPU time (plus a fifth of a CPU for QEMU's own threads), and room for threads."""
    overhead = VMM_OVERHEAD_KVM if accel == "kvm" else VMM_OVERHEAD_TCG
    return Limits(memory_bytes=(memory_mib << 20) + overhead + helpers * HELPER_OVERHEAD,
                  cpu_quota_us=vcpus * CPU_PERIOD_US + CPU_PERIOD_US // 5, pids=VMM_PIDS)
