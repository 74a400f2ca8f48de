"""Disk image files a3s-box makes for boxes: qcow2 headers read without qemu-img
(backing chain, virtual size), the host's disk budget for them, and what a full disk
becomes (space.py: DiskFullError, said the same way for every write to the home)."""
