"""A VM plugged into a network namespace that someone else made and addressed: a
Kubernetes pod's, set up by the CRI plugin with whatever CNI plugin the cluster runs.

As Kata Containers does by default ("tcfilter"): a tap device is made in the namespace
beside the CNI's interface (eth0), and tc mirred redirects every frame between the two;
the VM's NIC takes eth0's MAC, and the guest takes eth0's address, gateway and MTU. The
CNI plugin, the bridge, NetworkPolicy and hostPort rules (portmap) then see the pod as
if the VM were the pod: nothing of the plugin needs to know about VMs.

Threat: the guest is hostile and gets raw frames on the pod's interface, as any pod does
on its own veth; whatever the cluster filters by IP (NetworkPolicy) still applies on the
node. The supervisor opens the tap (root, in the pod's namespace) and hands QEMU that one
descriptor: the confined QEMU can use this tap and open no other.

    PodInterface, parse_interface()   sans-IO: `ip -j` answers -> what the guest takes
    plug(), unplug()                  the tap and the redirects, in the namespace
    open_tap()                        the tap's descriptor, for QEMU
"""
from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import json
import os
import shutil
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

CLONE_NEWNET = 0x40000000
POD_INTERFACE = "eth0"  # CNI_IFNAME as the CRI plugin gives it
TAP = "a3stap0"
# QEMU gets the tap as this descriptor (-netdev tap,fd=TAP_FD): the shim opens it as root,
# so the jail needs no /dev/net/tun (0600 on some hosts) and QEMU no right to any other tap
TAP_FD = 200
_TUNSETIFF, _IFF_TAP, _IFF_NO_PI = 0x400454CA, 0x0002, 0x1000


class PodNetError(RuntimeError):
    """The namespace cannot be plugged into (the message names it and why)."""


@dataclass(frozen=True)
class PodInterface:
    address: str
    prefix: int
    gateway: str  # "" when the namespace has no default route
    mtu: int
    mac: str

    def guest_arg(self) -> str:
        """The guest init's a3s.net: ADDR/PREFIX,GATEWAY,DNS,MTU; DNS "-" (the pod's
        resolv.conf is the CRI plugin's, bound into each container)."""
        return f"a3s.net={self.address}/{self.prefix},{self.gateway or self.address},-,{self.mtu}"


def parse_interface(where: str, addrs: Any, routes: Any, links: Any) -> PodInterface:
    """The pod's IPv4 address, default gateway, MTU and MAC from `ip -j -4 addr show dev
    eth0`, `ip -j -4 route show` and `ip -j link show dev eth0` (pure)."""
    try:
        (link,) = links
        mtu, mac = int(link["mtu"]), str(link["address"])
        inet = [a for entry in addrs for a in entry.get("addr_info", []) if a.get("family") == "inet"]
        default = [r for r in routes if r.get("dst") == "default" and r.get("gateway")]
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise PodNetError(f"{where}: {POD_INTERFACE}: unexpected answer from ip ({e})") from None
    if not inet:
        raise PodNetError(f"{where}: {POD_INTERFACE} has no IPv4 address (did the CNI plugin run?)")
    try:
        address = str(ipaddress.IPv4Address(inet[0]["local"]))
        prefix = int(inet[0]["prefixlen"])
        gateway = str(ipaddress.IPv4Address(default[0]["gateway"])) if default else ""
        mac_bytes = bytes.fromhex(mac.replace(":", ""))
    except (KeyError, ValueError) as e:
        raise PodNetError(f"{where}: {POD_INTERFACE}: {e}") from None
    if not 1 <= prefix <= 32 or not 68 <= mtu <= 65535 or len(mac_bytes) != 6:
        raise PodNetError(f"{where}: {POD_INTERFACE}: prefix {prefix}, MTU {mtu}, MAC {mac}")
    return PodInterface(address, prefix, gateway, mtu, mac.lower())


class _Inside:
    """Commands run in the namespace at PATH: a thread that joined it forks them."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise PodNetError(f"pod network namespace {path}: {e.strerror}") from e
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="podnet", initializer=self._join)

    def _join(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(self._fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")

    def run(self, *argv: str, check: bool = True) -> str:
        def go() -> subprocess.CompletedProcess[str]:
            return subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
        try:
            r = self._thread.submit(go).result()
        except OSError as e:
            raise PodNetError(f"pod network namespace {self.path}: {argv[0]}: {e}") from e
        if check and r.returncode != 0:
            raise PodNetError(f"pod network namespace {self.path}: {' '.join(argv)}: {r.stderr.strip()}")
        return r.stdout

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        os.close(self._fd)


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def plug(path: str) -> PodInterface:
    """Make the tap (root's alone) in the namespace at PATH and redirect every frame
    between it and eth0; what the guest must take."""
    ip, tc = _tool("ip"), _tool("tc")
    inside = _Inside(path)
    try:
        iface = parse_interface(path, json.loads(inside.run(ip, "-j", "-4", "addr", "show", "dev", POD_INTERFACE)),
                                json.loads(inside.run(ip, "-j", "-4", "route", "show")),
                                json.loads(inside.run(ip, "-j", "link", "show", "dev", POD_INTERFACE)))
        inside.run(ip, "link", "del", TAP, check=False)  # a previous VM's, if it died mid-way
        inside.run(tc, "qdisc", "del", "dev", POD_INTERFACE, "ingress", check=False)
        inside.run(ip, "tuntap", "add", "dev", TAP, "mode", "tap")
        inside.run(ip, "link", "set", "dev", TAP, "mtu", str(iface.mtu), "up")
        for a, b in ((POD_INTERFACE, TAP), (TAP, POD_INTERFACE)):
            inside.run(tc, "qdisc", "add", "dev", a, "ingress")
            inside.run(tc, "filter", "add", "dev", a, "parent", "ffff:", "protocol", "all", "u32", "match", "u32",
                       "0", "0", "action", "mirred", "egress", "redirect", "dev", b)
        return iface
    except PodNetError:
        unplug_inside(inside)
        raise
    finally:
        inside.close()


def unplug_inside(inside: _Inside) -> None:
    inside.run(_tool("tc"), "qdisc", "del", "dev", POD_INTERFACE, "ingress", check=False)
    inside.run(_tool("ip"), "link", "del", TAP, check=False)


def unplug(path: str) -> None:
    """Undo plug() (the namespace may be gone already: then there is nothing to undo)."""
    try:
        inside = _Inside(path)
    except PodNetError:
        return
    try:
        unplug_inside(inside)
    finally:
        inside.close()


def open_tap(netns_fd: int) -> int:
    """The pod's tap, opened inside the namespace NETNS_FD (by a thread that joins it)."""
    def go() -> int:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(netns_fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", TAP.encode(), _IFF_TAP | _IFF_NO_PI))
        except OSError:
            os.close(fd)
            raise
        return fd
    with ThreadPoolExecutor(1, thread_name_prefix="podtap") as one:
        try:
            return one.submit(go).result()
        except OSError as e:
            raise PodNetError(f"the pod's tap {TAP}: {e}") from e
