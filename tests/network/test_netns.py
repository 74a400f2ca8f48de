"""network/netns.py's box namespace as root, attacked from inside it (no VM: what runs in
the namespace here is what the VMM's user-mode network would do): while its rules are
still going in (the VMM already started in it) nothing but its loopback is reachable;
rules that fail leave it so, and the box is refused."""
from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Iterator

import pytest

from a3s_box.network import netns
from a3s_box.network.netns import PROXY_PORT, NetNamespace
from a3s_box.network.registration import EgressError, wait_sealed

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or bool(netns.missing_tools()),
                                reason="needs root, ip and iptables-restore")
OUTSIDE = ("192.0.2.10", 80)  # TEST-NET-1: nothing answers it, only the route decides


@pytest.fixture
def held_rules(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """The namespace's rules and veth wait until the test sets the event."""
    go = threading.Event()
    run = netns._run

    def held(argv: list[str], stdin: str = "") -> None:
        assert go.wait(30)
        run(argv, stdin)
    monkeypatch.setattr(netns, "_run", held)
    yield go
    go.set()


def _connect_from(ns: NetNamespace, address: tuple[str, int]) -> int:
    """errno of a TCP connect() made inside NS (0: connected)."""
    def attempt() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            return s.connect_ex(address)
    return ns.call(attempt)


def _send_udp_from(ns: NetNamespace, address: tuple[str, int]) -> int:
    def attempt() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.sendto(b"x", address)
            except OSError as e:
                return e.errno or -1
            return 0
    return ns.call(attempt)


def test_until_its_rules_are_in_only_the_loopback_is_reachable(held_rules: threading.Event) -> None:
    ns = NetNamespace()
    try:
        sealing = ns.seal()
        # the VMM may start now: its listeners bind on the loopback, which is up
        proxy = ns.listener(socket.SOCK_STREAM, PROXY_PORT)
        assert _connect_from(ns, ("127.0.0.1", PROXY_PORT)) == 0
        assert not sealing.done()
        # a hostile guest's first connection, TCP or UDP, goes nowhere: no route
        assert _connect_from(ns, OUTSIDE) == errno.ENETUNREACH
        assert _send_udp_from(ns, ("192.0.2.10", 53)) == errno.ENETUNREACH
        held_rules.set()
        wait_sealed(sealing)
        # sealed: the same connect lands on the proxy's listener (REDIRECT), other UDP is dropped
        assert _connect_from(ns, OUTSIDE) == 0
        proxy.settimeout(5)
        conn, _ = proxy.accept()
        conn.close()
        assert _send_udp_from(ns, ("192.0.2.10", 123)) == errno.EPERM
        proxy.close()
    finally:
        ns.close()


def test_rules_that_fail_leave_no_route_and_refuse_the_box(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "rules", lambda *_a: "*filter\n-A NOSUCHCHAIN -j ACCEPT\nCOMMIT\n")
    ns = NetNamespace()
    try:
        sealing = ns.seal()
        with pytest.raises(EgressError, match="box network namespace: .*iptables-restore"):
            wait_sealed(sealing)
        # the veth and route come only after the rules: the namespace still reaches nothing
        assert _connect_from(ns, OUTSIDE) == errno.ENETUNREACH
    finally:
        ns.close()
