"""What a driver does for a box's volumes: the QEMU devices, the virtiofsd processes the
shim supervises (one per bind), and the MOUNTs sent to the guest before its agent starts.

Read-only binds are enforced on the host: each virtiofsd runs in a mount namespace of
its own where the shared folder is a read-only bind mount, so no request of the guest
(root there, remounting the share read-write) can write through it. virtiofsd's own
sandbox (pivot_root into the folder) keeps `..`, symlinks and other paths from
resolving anywhere outside it.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from a3s_box.drivers.base import BoxLaunch
from a3s_box.errors import HostUnsupported

VIRTIOFSD_PATHS = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd")


def find_virtiofsd() -> str | None:
    for p in VIRTIOFSD_PATHS:
        if Path(p).is_file():
            return p
    return shutil.which("virtiofsd")


def share_tag(index: int) -> str:
    return f"a3svol{index}"


def volume_devices(launch: BoxLaunch) -> tuple[tuple[tuple[Path, str], ...], tuple[Path, ...],
                                               list[dict[str, Any]]]:
    """(virtio-fs shares, volume disks, virtiofsd specs for the shim)."""
    shares, disks, daemons = [], [], []
    binds = [v for v in launch.volumes if v.kind == "bind"]
    binary = find_virtiofsd() if binds else None
    if binds and binary is None:
        raise HostUnsupported("qemu", f"box {launch.box_id}: bind volumes need virtiofsd "
                              "(Debian: qemu-system-common ships /usr/lib/qemu/virtiofsd)")
    for i, v in enumerate(binds):
        # in a folder of its own: virtiofsd makes it as the bind folder's owner
        sock = launch.rundir / f"vfs{i}" / "sock"
        shares.append((sock, share_tag(i)))
        daemons.append({"binary": binary, "socket": str(sock), "source": v.source,
                        "read_only": v.read_only, "target": v.target})
    for v in launch.volumes:
        if v.kind == "volume":
            disks.append(Path(v.source))
    return tuple(shares), tuple(disks), daemons


def mount_volumes(client: Any, launch: BoxLaunch, hotplugged: bool = False) -> None:
    """MOUNT each volume, in the Boxfile's order, before CONFIG. HOTPLUGGED: the shares
    were just hot-plugged (a snapshot clone's), and the guest waits for their tags."""
    bind_i = disk_i = 0
    for v in launch.volumes:
        if v.kind == "bind":
            client.mount("virtiofs", share_tag(bind_i), v.target, v.read_only, wait=hotplugged)
            bind_i += 1
        elif v.kind == "volume":
            # the root disk is /dev/vda; volume disks follow in the order QEMU got them
            client.mount("ext4", f"/dev/vd{chr(ord('b') + disk_i)}", v.target, v.read_only)
            disk_i += 1
        else:
            opts = "mode=1777" + (f",size={v.size}" if v.size else "")
            client.mount("tmpfs", "tmpfs", v.target, v.read_only, opts)
