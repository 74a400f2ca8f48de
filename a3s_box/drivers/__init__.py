"""VM drivers: `get_driver(name, home)` is the one way the rest of a3s-box gets one.

    base.py       the Driver protocol and its values (BoxLaunch, VmHandle, ...)
    qemu/         QEMU microVMs, one detached shim per box, snapshots, the KVM probe
    krun/         libkrun microVMs, one supervisor process per box
    common/       what both share: guest kernel + initramfs, supervision, the network helper
    doctor.py     what this host can run, one check at a time
"""
from __future__ import annotations

from a3s_box.drivers.base import Driver
from a3s_box.errors import HostUnsupported
from a3s_box.home import Home

DRIVERS = ("qemu", "libkrun")


def get_driver(name: str, home: Home) -> Driver:
    if name == "libkrun" or name == "auto":
        from a3s_box.drivers.krun import KrunDriver, host_support

        # "auto": libkrun only where its (cached) probe boot says it runs guests
        if name == "libkrun" or host_support(home).usable:
            return KrunDriver(home)
    if name in ("qemu", "auto"):
        from a3s_box.drivers.qemu.driver import QemuDriver

        return QemuDriver(home)
    raise HostUnsupported(name, f"unknown driver (known: auto, {', '.join(DRIVERS)})")
