"""A cgroup per box, below the cgroup a3s-box runs in (never elsewhere in the tree),
with the box's memory, CPU and process limits, on cgroup v1 or v2.

    v1   one hierarchy per controller (memory, cpu, pids), each mounted on its own; the
         box's cgroup is OWN/a3s-box/BOX in each, OWN being this process's path there
    v2   one hierarchy; the controllers must be delegated: enabled in OWN's
         subtree_control (the kernel refuses that while OWN holds processes, unless it
         is the root). The box's cgroup is OWN/a3s-box/BOX.

The shim creates it before the box's first process and removes it after the last;
each confined child joins it between fork and exec (cgroup.procs, "0" = itself).
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from a3s_box.jail.spec import CPU_PERIOD_US, Limits

CONTROLLERS = ("memory", "cpu", "pids")
GROUP = "a3s-box"


@dataclass(frozen=True)
class Hierarchy:
    controllers: tuple[str, ...]  # what it serves here (v2: all three)
    mount: Path
    own: str  # this process's cgroup in it, "/..."
    version: int


def parse_hierarchies(proc_cgroup: str, mountinfo: str) -> list[Hierarchy]:
    """Pure: the hierarchies serving memory, cpu and pids, from /proc/self/cgroup and
    /proc/self/mountinfo. v1 wins where a controller is bound to a v1 hierarchy."""
    own_v1: dict[str, str] = {}
    own_v2 = ""
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        if ctrls == "":
            own_v2 = path
        for c in ctrls.split(","):
            own_v1[c] = path
    v1_mounts: dict[str, Path] = {}
    v2_mount: Path | None = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        root, mnt, fstype, opts = fields[3], Path(fields[4]), rfields[0], rfields[2].split(",")
        if root != "/":
            continue  # a bind of a sub-tree (a container's view): paths would not match
        if fstype == "cgroup":
            for c in CONTROLLERS:
                if c in opts:
                    v1_mounts.setdefault(c, mnt)
        elif fstype == "cgroup2" and v2_mount is None:
            v2_mount = mnt
    out: list[Hierarchy] = []
    done: set[str] = set()
    for c in CONTROLLERS:
        if c in v1_mounts and c in own_v1:
            out.append(Hierarchy((c,), v1_mounts[c], own_v1[c], 1))
            done.add(c)
    rest = tuple(c for c in CONTROLLERS if c not in done)
    if rest and v2_mount is not None and own_v2:
        out.append(Hierarchy(rest, v2_mount, own_v2, 2))
    return out


def hierarchies() -> list[Hierarchy]:
    try:
        return parse_hierarchies(Path("/proc/self/cgroup").read_text(),
                                 Path("/proc/self/mountinfo").read_text())
    except OSError:
        return []


def _v2_available(h: Hierarchy) -> set[str]:
    own = h.mount / h.own.lstrip("/")
    try:
        return set((own / "cgroup.controllers").read_text().split())
    except OSError:
        return set()


def _enable(path: Path, controllers: tuple[str, ...]) -> None:
    have = set((path / "cgroup.subtree_control").read_text().split())
    missing = [c for c in controllers if c not in have]
    if missing:
        (path / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in missing))


class CgroupError(Exception):
    pass


def support() -> tuple[bool, str]:
    """Whether boxes get a cgroup each here, and why not (for doctor and strict)."""
    hs = hierarchies()
    served = {c for h in hs for c in h.controllers}
    missing = [c for c in CONTROLLERS if c not in served]
    if missing:
        return False, f"no cgroup hierarchy serves {', '.join(missing)}"
    where = []
    for h in hs:
        own = h.mount / h.own.lstrip("/")
        if h.version == 2:
            avail = _v2_available(h)
            lacking = [c for c in h.controllers if c not in avail]
            if lacking:
                return False, (f"cgroup v2: {', '.join(lacking)} not delegated to {h.own} (run a3s-box "
                               "in a cgroup with them, e.g. a systemd unit with Delegate=yes)")
            try:
                _enable(own, h.controllers)
            except OSError as e:
                if e.errno == errno.EBUSY:
                    return False, (f"cgroup v2: {h.own} holds processes, so it cannot enable "
                                   f"{', '.join(h.controllers)} for boxes below it (run a3s-box in a "
                                   "delegated cgroup of its own, e.g. systemd-run --scope -p Delegate=yes)")
                return False, f"cgroup v2: cannot enable controllers in {own}: {e.strerror}"
        if not os.access(own, os.W_OK):
            if h.version == 1 and os.geteuid() != 0:
                return False, (f"cgroup v1 here ({own} is root's): v1 cannot be delegated to a user, so limits "
                               "without root need a cgroup v2 host whose systemd delegates to the user "
                               "(Delegate=yes, the default for user sessions on Debian 12/13 and Ubuntu 24.04)")
            return False, f"cgroup v{h.version} {own} is not writable by this user"
        where.append(f"v{h.version} {'+'.join(h.controllers)} under {h.own}")
    return True, "; ".join(where)


@dataclass(frozen=True)
class BoxCgroup:
    name: str
    paths: tuple[tuple[Hierarchy, Path], ...]

    @classmethod
    def create(cls, name: str, limits: Limits) -> "BoxCgroup":
        ok, why = support()
        if not ok:
            raise CgroupError(why)
        paths: list[tuple[Hierarchy, Path]] = []
        for h in hierarchies():
            own = h.mount / h.own.lstrip("/")
            group = own / GROUP
            box = group / name
            try:
                group.mkdir(exist_ok=True)
                if h.version == 2:
                    _enable(group, h.controllers)
                box.mkdir(exist_ok=True)
                _write_limits(h, box, limits)
            except OSError as e:
                raise CgroupError(f"cgroup {box}: {e.strerror or e}") from e
            paths.append((h, box))
        return cls(name, tuple(paths))

    def procs_files(self) -> list[str]:
        return [str(p / "cgroup.procs") for _, p in self.paths]

    def remove(self) -> None:
        for _, p in self.paths:
            try:
                p.rmdir()
            except OSError:
                pass  # a process is left: the next create of this box reuses it

    def memory_limit(self) -> int:
        for h, p in self.paths:
            if "memory" in h.controllers:
                f = p / ("memory.max" if h.version == 2 else "memory.limit_in_bytes")
                return int(f.read_text().split()[0])
        return 0


def _write_limits(h: Hierarchy, box: Path, limits: Limits) -> None:
    if h.version == 2:
        (box / "memory.max").write_text(str(limits.memory_bytes))
        if (box / "memory.swap.max").exists():
            (box / "memory.swap.max").write_text("0")  # the limit is not a swap quota
        (box / "cpu.max").write_text(f"{limits.cpu_quota_us} {CPU_PERIOD_US}")
        (box / "pids.max").write_text(str(limits.pids))
        return
    if "memory" in h.controllers:
        (box / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
    if "cpu" in h.controllers:
        (box / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        (box / "cpu.cfs_quota_us").write_text(str(limits.cpu_quota_us))
    if "pids" in h.controllers:
        (box / "pids.max").write_text(str(limits.pids))


def join(procs_files: list[str]) -> None:
    """In a child before exec: move this process into the box's cgroup (all hierarchies)."""
    for f in procs_files:
        fd = os.open(f, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
