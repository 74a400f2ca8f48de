"""Named volumes: an ext4 disk per volume in the a3s-box home, kept across recreate and
delete until `box volume rm` (or `box delete --volumes`).

    store.py   create on first use, list, inspect, remove
"""
from a3s_box.volumes.store import VolumeError, VolumeInfo, VolumeStore

__all__ = ["VolumeError", "VolumeInfo", "VolumeStore"]
