"""VM drivers: `get_driver(name, home)` is the one way the rest of a3s-box gets one.

    base.py       the Driver protocol and its values (BoxLaunch, VmHandle, ...)
    qemu.py       QEMU microVMs, one detached shim per box (shim.py, mux.py)
    probe.py      can KVM really run a guest here? (cached)
    artifacts.py  guest kernel + initramfs (kernel.py, modinfo.py, cpio.py)
"""
from __future__ import annotations

from a3s_box.drivers.base import Driver
from a3s_box.errors import HostUnsupported
from a3s_box.home import Home

DRIVERS = ("qemu",)  # libkrun goes here once it lands (and into "auto" below)


def get_driver(name: str, home: Home) -> Driver:
    if name in ("qemu", "auto"):
        # "auto" will prefer libkrun when its host_support() is usable; QEMU for now
        from a3s_box.drivers.qemu import QemuDriver

        return QemuDriver(home)
    if name == "libkrun":
        raise HostUnsupported("libkrun", "not yet supported: use driver: qemu")
    raise HostUnsupported(name, f"unknown driver (known: auto, {', '.join(DRIVERS)})")
