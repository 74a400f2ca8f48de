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

A pod held to an egress allow-list (k8s/egress.py) is plugged *routed* instead: the
namespace becomes the VM's router, and its netfilter the boundary (routed_rules()):
    - the VM keeps the pod's IP; eth0 keeps it too, for ARP, but everything that comes
      in on eth0 for that IP is routed on to the tap (a policy rule ahead of the local
      table), so the pod IP, hostPort and probes reach the guest's kernel as before;
    - what the VM starts is never forwarded: every new TCP connection is REDIRECTed to
      the host's egress proxy (listening in the namespace, registered with the pod's
      policy and secrets as a Boxfile box's is), every UDP datagram to port 53 to its
      DNS; anything else new from the tap is dropped, and so is anything whose source is
      not the pod's IP (raw table: before REDIRECT, so the proxy answers no forged peer);
    - replies to connections that came in (conntrack) go back out through eth0.
The hostile side is the same guest: it may rewrite its routes, addresses and ARP as it
likes; every packet it sends still meets these rules in a namespace it cannot reach.

    PodInterface, parse_interface()   sans-IO: `ip -j` answers -> what the guest takes
    routed_rules()                    sans-IO: the routed mode's netfilter rules
    plug(), unplug()                  the tap and the redirects (or routes), in the namespace
    PodNamespace                      sockets made in the namespace (the proxy's listeners)
    open_tap()                        the tap's descriptor, for QEMU
"""
from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from a3s_box.network.netns import bound_socket

CLONE_NEWNET = 0x40000000
POD_INTERFACE = "eth0"  # CNI_IFNAME as the CRI plugin gives it
TAP = "a3stap0"
# QEMU gets the tap as this descriptor (-netdev tap,fd=TAP_FD): the shim opens it as root,
# so the jail needs no /dev/net/tun (0600 on some hosts) and QEMU no right to any other tap
TAP_FD = 200
TAP_ADDRESS = "169.254.77.1"  # routed: the tap's own (REDIRECT needs one); never the guest's
ROUTE_TABLE = 77  # routed: where what comes in on eth0 for the pod's IP finds the tap
PROXY_PORT, DNS_PORT = 15001, 53  # routed: the egress proxy's listeners in the namespace
_TUNSETIFF, _IFF_TAP, _IFF_NO_PI = 0x400454CA, 0x0002, 0x1000
T = TypeVar("T")


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

    @property
    def fd(self) -> int:
        return self._fd

    def call(self, fn: Callable[[], T]) -> T:
        try:
            return self._thread.submit(fn).result()
        except OSError as e:
            raise PodNetError(f"pod network namespace {self.path}: {e}") from e

    def run(self, *argv: str, check: bool = True, stdin: str = "") -> str:
        def go() -> subprocess.CompletedProcess[str]:
            return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=30)
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


def routed_rules(pod_ip: str) -> str:
    """The routed mode's netfilter rules for the pod at POD_IP, in iptables-restore
    --noflush form: chains of their own, hooked in first (pure)."""
    return "\n".join([
        "*raw",
        ":A3S-SPOOF - [0:0]",
        f"-I PREROUTING 1 -i {TAP} -j A3S-SPOOF",
        f"-A A3S-SPOOF ! -s {pod_ip}/32 -j DROP",
        "COMMIT",
        "*nat",
        ":A3S-EGRESS - [0:0]",
        f"-I PREROUTING 1 -i {TAP} -j A3S-EGRESS",
        f"-A A3S-EGRESS -p tcp -j REDIRECT --to-ports {PROXY_PORT}",
        f"-A A3S-EGRESS -p udp --dport 53 -j REDIRECT --to-ports {DNS_PORT}",
        "COMMIT",
        "*filter",
        ":A3S-FORWARD - [0:0]",
        ":A3S-INPUT - [0:0]",
        "-I FORWARD 1 -j A3S-FORWARD",
        f"-I INPUT 1 -i {TAP} -j A3S-INPUT",
        f"-A A3S-FORWARD -i {POD_INTERFACE} -o {TAP} -d {pod_ip}/32 -j ACCEPT",
        f"-A A3S-FORWARD -i {TAP} -o {POD_INTERFACE} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        f"-A A3S-FORWARD -i {TAP} -j DROP",
        f"-A A3S-FORWARD -o {TAP} -j DROP",
        "-A A3S-INPUT -m conntrack --ctstate DNAT -j ACCEPT",
        "-A A3S-INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A A3S-INPUT -j DROP",
        "COMMIT",
        "",
    ])


def plug(path: str, routed: bool = False) -> PodInterface:
    """Make the tap (root's alone) in the namespace at PATH and join it to eth0: frames
    redirected both ways, or (ROUTED) the namespace routing between them under
    routed_rules(). What the guest must take."""
    ip, tc = _tool("ip"), _tool("tc")
    inside = _Inside(path)
    try:
        iface = parse_interface(path, json.loads(inside.run(ip, "-j", "-4", "addr", "show", "dev", POD_INTERFACE)),
                                json.loads(inside.run(ip, "-j", "-4", "route", "show")),
                                json.loads(inside.run(ip, "-j", "link", "show", "dev", POD_INTERFACE)))
        if inside.call(_tap_exists):
            _undo(inside)  # a previous VM's, if it died mid-way (the tap goes last: see _undo)
        if not routed:
            inside.run(ip, "-batch", "-", stdin=f"tuntap add dev {TAP} mode tap\n"
                                                  f"link set dev {TAP} mtu {iface.mtu} up\n")
            inside.run(tc, "-batch", "-", stdin="".join(
                f"qdisc add dev {a} ingress\n"
                f"filter add dev {a} parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev {b}\n"
                for a, b in ((POD_INTERFACE, TAP), (TAP, POD_INTERFACE))))
            return iface
        if not _has_iptables():
            raise PodNetError(f"{path}: iptables-restore not found (apt install iptables): a pod with an "
                              "egress allow-list needs it")
        # the tap first (down: nothing passes it yet), so that it marks what may be left to
        # undo; then the rules: from the moment it is up, nothing of the VM's is forwarded
        inside.run(ip, "tuntap", "add", "dev", TAP, "mode", "tap")
        inside.run(_tool("iptables-restore"), "-w", "--noflush", stdin=routed_rules(iface.address))
        inside.run(_tool("sysctl"), "-q", "-w", "net.ipv4.ip_forward=1", f"net.ipv4.conf.{POD_INTERFACE}.proxy_arp=1",
                   "net.ipv4.conf.all.rp_filter=0", f"net.ipv4.conf.{POD_INTERFACE}.rp_filter=0")
        inside.run(ip, "-batch", "-", stdin="\n".join([
            f"link set dev {TAP} mtu {iface.mtu} up",  # no VM on it until QEMU starts
            f"addr add {TAP_ADDRESS}/32 dev {TAP}",
            f"route add {iface.address}/32 dev {TAP} table {ROUTE_TABLE}",
            # eth0's traffic to the pod's IP goes to the VM, not to this namespace ...
            f"rule add pref 10 iif {POD_INTERFACE} lookup {ROUTE_TABLE}",
            # ... and so do the proxy's replies (from the tap's address, after REDIRECT)
            f"rule add pref 11 from {TAP_ADDRESS} lookup {ROUTE_TABLE}",
            "rule add pref 100 lookup local",
            "rule del pref 0 lookup local",
            "",
        ]))
        # the VM's source is the pod's IP, local here too: accepted on the tap, and ARP
        # for the gateway and other pods answered for it
        inside.run(_tool("sysctl"), "-q", "-w", f"net.ipv4.conf.{TAP}.accept_local=1",
                   f"net.ipv4.conf.{TAP}.rp_filter=0", f"net.ipv4.conf.{TAP}.proxy_arp=1")
        # no IPv6 on the tap at all: nothing of the VM's is routed but through the rules
        # above (-e: a kernel without IPv6 has no such key, and no IPv6 to route)
        inside.run(_tool("sysctl"), "-q", "-e", "-w", f"net.ipv6.conf.{TAP}.disable_ipv6=1")
        return iface
    except PodNetError:
        _undo(inside)
        raise
    finally:
        inside.close()


_UNDO_RULES = "\n".join([
    "*raw", f"-D PREROUTING -i {TAP} -j A3S-SPOOF", "-F A3S-SPOOF", "-X A3S-SPOOF", "COMMIT",
    "*nat", f"-D PREROUTING -i {TAP} -j A3S-EGRESS", "-F A3S-EGRESS", "-X A3S-EGRESS", "COMMIT",
    "*filter", "-D FORWARD -j A3S-FORWARD", f"-D INPUT -i {TAP} -j A3S-INPUT",
    "-F A3S-FORWARD", "-X A3S-FORWARD", "-F A3S-INPUT", "-X A3S-INPUT", "COMMIT", ""])


def _tap_exists() -> bool:
    """In the namespace's thread: whether the tap is there (plug() makes it first and
    _undo() removes it last, so without it nothing of plug()'s is left)."""
    try:
        socket.if_nametoindex(TAP)
        return True
    except OSError:
        return False


def _undo(inside: _Inside) -> None:
    """Whatever plug() made in the namespace, in either mode; each step may have been
    made or not. The tap goes last: while it is there, something may be left to undo."""
    ip = _tool("ip")
    inside.run(_tool("tc"), "qdisc", "del", "dev", POD_INTERFACE, "ingress", check=False)
    if "lookup local" not in inside.run(ip, "rule", "show", "pref", "0", check=False):
        inside.run(ip, "-force", "-batch", "-", check=False, stdin=(
            "rule add pref 0 lookup local\nrule del pref 100 lookup local\n"
            f"rule del pref 10 lookup {ROUTE_TABLE}\nrule del pref 11 lookup {ROUTE_TABLE}\n"))
    saved = inside.run(_tool("iptables-save"), check=False) if _has_iptables() else ""
    for table in ("raw", "nat", "filter"):  # one table at a time: each may lack our chains
        section = saved.split(f"*{table}\n", 1)[1].split("COMMIT", 1)[0] if f"*{table}\n" in saved else ""
        if ":A3S-" in section:
            undo = _UNDO_RULES.split(f"*{table}\n", 1)[1].split("COMMIT", 1)[0]
            inside.run(_tool("iptables-restore"), "-w", "--noflush", check=False,
                       stdin=f"*{table}\n{undo}COMMIT\n")
    inside.run(ip, "link", "del", TAP, check=False)


def _has_iptables() -> bool:
    return shutil.which("iptables-restore") is not None or os.path.exists("/usr/sbin/iptables-restore")


def unplug(path: str) -> None:
    """Undo plug() (the namespace may be gone already: then there is nothing to undo)."""
    try:
        inside = _Inside(path)
    except PodNetError:
        return
    try:
        _undo(inside)
    finally:
        inside.close()


class PodNamespace:
    """Sockets made in the pod's namespace, for the egress proxy (what
    registration.register_box needs of a box's namespace; the rules are plug()'s)."""

    user_fd: int | None = None  # the pod's namespace is the host user namespace's

    def __init__(self, path: str) -> None:
        self._inside = _Inside(path)
        self.fd = self._inside.fd

    def listener(self, kind: int, port: int) -> socket.socket:
        """A socket bound to the tap's address and PORT, where REDIRECT sends the VM's
        flows (before plug() gives the tap that address: IP_FREEBIND). Its replies leave
        from that address, which a policy rule routes to the tap: the pod's IP is the
        namespace's own too, and would otherwise be delivered here."""
        return self._inside.call(lambda: bound_socket(kind, TAP_ADDRESS, port, freebind=True))

    def stream_socket(self) -> socket.socket:
        return self._inside.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC))

    def close(self) -> None:
        self._inside.close()


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
