"""VM drivers: `registry.py` is the one list of them and the one way the rest of
a3s-box gets one (`get_driver(name, home)`, `driver_with(capabilities, home)`).

    registry.py   name -> factory, capabilities, host support; `auto` resolved by `choose`
    base.py       the Driver protocol and its values (BoxLaunch, VmHandle, ...)
    qemu/         QEMU microVMs, one detached shim per box, snapshots, the KVM probe
    krun/         libkrun microVMs, one supervisor process per box
    common/       what both share: guest kernel + initramfs, supervision, the network helper
    doctor.py     what this host can run, one check at a time
"""
from __future__ import annotations

from a3s_box.drivers.registry import NAMES, Capability, driver_with, get_driver

__all__ = ["NAMES", "Capability", "driver_with", "get_driver"]
