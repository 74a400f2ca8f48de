"""A box's own network namespace, where its VMM runs and every flow meets the proxy.

Inside it there is a loopback and one veth whose far end leads nowhere: its default
route exists only so that the VMM's connect() gets as far as netfilter, where
    every TCP connection not to 127.0.0.0/8  -> REDIRECT to the egress proxy
    every UDP datagram to port 53            -> REDIRECT to the box's DNS
    everything else                          -> DROP
So the VMM (and the guest behind its user-mode network) cannot send one packet to the
host's network: whatever leaves does so through a socket the proxy opened in the
host's namespace after deciding.

Namespaces belong to threads: one dedicated thread unshares into the new namespace
and does everything that must happen there (the rules, the listening sockets, sockets
for published ports); sockets keep the namespace they were made in.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

CLONE_NEWNET = 0x40000000
PROXY_PORT = 15001
DNS_PORT = 53
_VETH_ADDR = "10.255.255.1/30"
_VETH_GW = "10.255.255.2"
T = TypeVar("T")


class NetnsError(RuntimeError):
    """The namespace or its rules could not be set up (the box must not start)."""


def missing_tools() -> list[str]:
    return [t for t in ("ip", "iptables-restore") if shutil.which(t) is None
            and not os.path.exists(f"/usr/sbin/{t}")]


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def rules(proxy_port: int = PROXY_PORT, dns_port: int = DNS_PORT) -> str:
    """The namespace's netfilter rules, in iptables-restore form (pure)."""
    return "\n".join([
        "*nat",
        "-A OUTPUT -p tcp -d 127.0.0.0/8 -j RETURN",
        f"-A OUTPUT -p tcp -j REDIRECT --to-ports {proxy_port}",
        f"-A OUTPUT -p udp --dport 53 -j REDIRECT --to-ports {dns_port}",
        "COMMIT",
        "*filter",
        ":OUTPUT DROP [0:0]",
        "-A OUTPUT -o lo -j ACCEPT",
        "-A OUTPUT -m conntrack --ctstate DNAT -j ACCEPT",
        "COMMIT",
        "",
    ])


class NetNamespace:
    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="netns", initializer=self._enter)
        try:
            self.fd = self.call(lambda: os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
        except OSError as e:
            raise NetnsError(f"cannot create a network namespace: {e}") from e

    @staticmethod
    def _enter() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")

    def call(self, fn: Callable[..., T], *args: object) -> T:
        return self._thread.submit(fn, *args).result()

    def _run(self, argv: list[str], stdin: str = "") -> None:
        try:
            r = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
        except OSError as e:
            raise NetnsError(f"{argv[0]}: {e}") from e
        if r.returncode != 0:
            raise NetnsError(f"{' '.join(argv)}: {r.stderr.strip()}")

    def configure(self, proxy_port: int = PROXY_PORT, dns_port: int = DNS_PORT) -> None:
        missing = missing_tools()
        if missing:
            raise NetnsError(f"{', '.join(missing)} not found: install iproute2 and iptables")
        batch = "\n".join([
            "link set lo up",
            "link add a3s0 type veth peer name a3s1",
            "link set a3s1 up",
            "link set a3s0 up",
            f"addr add {_VETH_ADDR} dev a3s0",
            f"route add default via {_VETH_GW} dev a3s0",
        ]) + "\n"
        self.call(self._run, [_tool("ip"), "-batch", "-"], batch)
        self.call(self._run, [_tool("iptables-restore"), "-w"], rules(proxy_port, dns_port))

    def listener(self, kind: int, port: int) -> socket.socket:
        """A socket bound to 127.0.0.1:PORT inside the namespace (TCP listening)."""
        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            if kind == socket.SOCK_STREAM:
                s.listen(512)
            s.setblocking(False)
            return s
        return self.call(make)

    def stream_socket(self) -> socket.socket:
        """A TCP socket of the namespace, to reach the VMM's forwarded ports."""
        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            s.setblocking(False)
            return s
        return self.call(make)

    def close(self) -> None:
        self._thread.shutdown(wait=False)
        os.close(self.fd)


def enter(fd: int) -> None:
    """Move the calling (single-threaded, just forked) process into the namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")
