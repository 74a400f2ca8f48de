"""The one list of VM drivers: name -> how to make one, what it can do, whether this host runs it.

Everything that names, lists or picks a driver reads this table: the Boxfile's
`driver:` field and the schema (`NAMES`), `box doctor`, the CLI's `--driver`, the plan
(which resolves `auto` with `choose`), the containerd shim and the image builder (which
ask `driver_with` for the capability they need). A new driver is one entry here plus
its own package under a3s_box/drivers/; no other module imports a driver's package
(an import-linter contract says so).
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from a3s_box.drivers.base import Driver, HostSupport, SnapshotStore
from a3s_box.errors import HostUnsupported
from a3s_box.home import Home

AUTO = "auto"


class Capability(str, enum.Enum):
    """What a box may need of its driver beyond booting a VM."""

    NETWORK = "network"  # an egress policy enforced by the host's proxy (mode public/allowlist)
    VOLUMES = "volumes"  # bind folders (virtio-fs), named disks, tmpfs
    SNAPSHOTS = "snapshots"  # boxes start as clones of a saved template
    FORK = "fork"  # a new box from a running one's memory and disk
    CONFINEMENT = "confinement"  # the VMM jailed as a3s_box.jail says (security: strict)


def _qemu(home: Home) -> Driver:
    from a3s_box.drivers.qemu.driver import QemuDriver

    return QemuDriver(home)


def _krun(home: Home) -> Driver:
    from a3s_box.drivers.krun import KrunDriver

    return KrunDriver(home)


def _qemu_support(home: Home) -> HostSupport:
    return _qemu(home).host_support()


def _qemu_snapshots(home: Home) -> SnapshotStore:
    from a3s_box.drivers.qemu.snapshot import TemplateStore

    return TemplateStore(home.cache)


def _krun_support(home: Home) -> HostSupport:
    from a3s_box.drivers.krun import host_support

    return host_support(home)  # a cached probe boot: the first call may boot a guest


@dataclass(frozen=True)
class DriverEntry:
    name: str
    summary: str  # one line for `box doctor` and the Boxfile reference
    capabilities: frozenset[Capability]
    make: Callable[[Home], Driver]
    support: Callable[[Home], HostSupport]  # cached probes; never downloads
    rank: int  # `auto` tries lower ranks first: the lighter VMM where it can do the job
    snapshots: Callable[[Home], SnapshotStore] | None = None  # with Capability.SNAPSHOTS

    def can(self, needs: Collection[Capability]) -> bool:
        return set(needs) <= self.capabilities


REGISTRY: Mapping[str, DriverEntry] = {e.name: e for e in (
    DriverEntry("qemu", "QEMU microVMs (a jailed VMM, snapshot clones, virtio-fs)",
                frozenset(Capability), _qemu, _qemu_support, rank=1, snapshots=_qemu_snapshots),
    DriverEntry("libkrun", "libkrun microVMs (a library VMM, one supervisor per box)",
                frozenset(), _krun, _krun_support, rank=0),
)}
NAMES: tuple[str, ...] = tuple(REGISTRY)


def entry(name: str) -> DriverEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise HostUnsupported(name, f"unknown driver (known: {AUTO}, {', '.join(NAMES)})") from None


def candidates(needs: Collection[Capability]) -> tuple[str, ...]:
    """The drivers able to run a box that NEEDS these, in `auto`'s order (pure)."""
    return tuple(e.name for e in sorted(REGISTRY.values(), key=lambda e: e.rank) if e.can(needs))


def choose(declared: str, needs: Collection[Capability], preferred: str | None,
           usable: Mapping[str, bool]) -> str:
    """The driver a box runs on (pure: USABLE says which drivers this host runs).

    A named driver is taken as it is (a missing capability then fails that box's create
    with its own message). `auto` takes PREFERRED (--driver / $A3S_BOX_DRIVER) when given,
    else the first candidate the host runs, else the last candidate (whose create then
    says why this host cannot run it)."""
    if declared != AUTO:
        return declared
    if preferred and preferred != AUTO:
        return preferred
    able = candidates(needs)
    if not able:
        raise HostUnsupported(AUTO, "no driver can do " + _named(needs))
    return next((n for n in able if usable.get(n)), able[-1])


def _named(needs: Collection[Capability]) -> str:
    return ", ".join(sorted(str(getattr(c, "value", c)) for c in needs))


def probe_usable(names: Collection[str], home: Home) -> dict[str, bool]:
    """Whether this host runs each of NAMES (cached probes), for `choose`."""
    return {n: entry(n).support(home).usable for n in names}


def snapshot_stores(home: Home) -> dict[str, SnapshotStore]:
    """Each driver's snapshot store, by driver name (drivers that keep snapshots)."""
    return {n: e.snapshots(home) for n, e in REGISTRY.items() if e.snapshots is not None}


def get_driver(name: str, home: Home) -> Driver:
    """The driver NAME (`auto`: the first one the host runs, for a box that needs nothing)."""
    if name == AUTO:
        able = candidates(())
        name = choose(AUTO, (), None, {n: entry(n).support(home).usable for n in able[:-1]})
    return entry(name).make(home)


def driver_with(needs: Collection[Capability], home: Home) -> Driver:
    """A driver this host runs that can do NEEDS (the image builder's, a pod's)."""
    able = candidates(needs)
    if not able:
        raise HostUnsupported(AUTO, "no driver can do " + _named(needs))
    for name in able[:-1]:
        if entry(name).support(home).usable:
            return entry(name).make(home)
    return entry(able[-1]).make(home)
