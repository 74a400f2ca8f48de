"""The libkrun driver (cffi, ABI mode): a library VMM, one supervisor process per box.

    library.py     find and load libkrun; per-symbol lookup; -errno -> DriverError
    spec.py        what one VM is made of (launch.json) and how its exit is named (pure)
    configure.py   a KrunSpec applied to a libkrun context, up to krun_start_enter
    supervisor.py  `python -m a3s_box.drivers.krun.supervisor RUNDIR`: configure, enter
    rootfs.py      the box's own copy of the image's root folder, our init inside
    probe.py       can libkrun run a guest here? (cached probe boot)
    driver.py      KrunDriver, behind the same Driver interface as QEMU
"""
from __future__ import annotations

from a3s_box.drivers.krun.driver import KrunDriver
from a3s_box.drivers.krun.probe import host_support

__all__ = ["KrunDriver", "host_support"]
