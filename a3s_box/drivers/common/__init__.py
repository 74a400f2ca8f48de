"""What both drivers (QEMU and libkrun) share.

artifacts.py   the guest kernel, its modules and the initramfs, built once per home
kernel.py      finding and unpacking Debian's cloud kernel
modinfo.py     kernel module dependencies (pure)
cpio.py        writing the initramfs (pure)
supervision.py per-box supervisor processes: pid files, liveness, exit reasons
boxnet.py      starting a box's network helper (its network namespace and egress proxy)
"""
