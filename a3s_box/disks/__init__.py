"""Disk image files a3s-box makes for boxes: qcow2 headers read without qemu-img
(backing chain, virtual size), and the host's disk budget for them."""
