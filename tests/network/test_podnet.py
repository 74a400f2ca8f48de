"""network/podnet.py: what the guest takes from a pod's CNI interface (sans-IO, fuzzed),
and the tap and redirects in a real network namespace made here the way a CNI bridge
plugin leaves one (no VM: the tap's far side is a descriptor this test holds)."""
from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from a3s_box.network import podnet
from a3s_box.network.podnet import PodInterface, PodNetError, parse_interface

ADDRS = [{"ifname": "eth0", "addr_info": [{"family": "inet", "local": "10.88.0.7", "prefixlen": 16}]}]
ROUTES = [{"dst": "default", "gateway": "10.88.0.1", "dev": "eth0"}, {"dst": "10.88.0.0/16", "dev": "eth0"}]
LINKS = [{"ifname": "eth0", "mtu": 1450, "address": "2A:5F:00:11:22:33"}]


def test_the_guest_takes_the_pods_address_gateway_mtu_and_mac() -> None:
    iface = parse_interface("/run/netns/p", ADDRS, ROUTES, LINKS)
    assert iface == PodInterface("10.88.0.7", 16, "10.88.0.1", 1450, "2a:5f:00:11:22:33")
    assert iface.guest_arg() == "a3s.net=10.88.0.7/16,10.88.0.1,-,1450"


@pytest.mark.parametrize("addrs, routes, links, said", [
    ([{"addr_info": []}], ROUTES, LINKS, "eth0 has no IPv4 address (did the CNI plugin run?)"),
    (ADDRS, ROUTES, [], "unexpected answer from ip"),
    (ADDRS, ROUTES, [{"mtu": 20, "address": "2a:5f:00:11:22:33"}], "MTU 20"),
    (ADDRS, ROUTES, [{"mtu": 1500, "address": "zz"}], "eth0: non-hexadecimal"),
    ([{"addr_info": [{"family": "inet", "local": "10.0.0.999", "prefixlen": 8}]}], ROUTES, LINKS, "eth0: "),
])
def test_an_interface_it_cannot_use_is_refused_naming_the_namespace(addrs: Any, routes: Any, links: Any,
                                                                    said: str) -> None:
    with pytest.raises(PodNetError, match="^/run/netns/p: ") as e:
        parse_interface("/run/netns/p", addrs, routes, links)
    assert said in str(e.value)


def test_no_default_route_means_the_pods_own_address_as_gateway() -> None:
    iface = parse_interface("/p", ADDRS, [], LINKS)
    assert iface.gateway == "" and iface.guest_arg().startswith("a3s.net=10.88.0.7/16,10.88.0.7,-,")


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                         st.sampled_from(["addr_info", "family", "local", "prefixlen", "dst", "gateway", "mtu",
                                          "address", "inet"]), inner, max_size=5))


@settings(max_examples=300)
@given(_json, _json, _json)
def test_whatever_ip_answers_parses_or_is_a_pod_net_error(addrs: Any, routes: Any, links: Any) -> None:
    try:
        parse_interface("/p", addrs, routes, links)
    except PodNetError:
        pass


_made = itertools.count()


@pytest.fixture
def pod_netns() -> Iterator[str]:
    """A namespace as a CNI bridge plugin leaves one: eth0, a veth to the host, addressed.
    Named afresh for each test, and its veth deleted before the namespace: the kernel
    removes a deleted namespace's devices later, and a name reused at once found the last
    test's veth still there ("File exists", once in a fresh-clone run)."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        pytest.skip("needs root, ip and tc")
    tag = f"{os.getpid() % 10000}x{next(_made)}"
    name, host_if = f"a3s-podnet-{tag}", f"a3spn{tag}"
    sh = ["sh", "-ec", f"ip netns add {name}; ip link add {host_if} type veth peer name eth0 "
          f"netns {name}; ip -n {name} addr add 10.213.79.2/24 dev eth0; ip -n {name} link set eth0 mtu 1400 up; "
          f"ip -n {name} route add default via 10.213.79.1"]
    try:
        subprocess.run(sh, check=True)
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_plug_makes_the_tap_and_both_redirects_and_unplug_undoes_them(pod_netns: str) -> None:
    iface = podnet.plug(pod_netns)
    assert (iface.address, iface.prefix, iface.gateway, iface.mtu) == ("10.213.79.2", 24, "10.213.79.1", 1400)
    name = pod_netns.rsplit("/", 1)[1]
    links = {link["ifname"]: link for link in json.loads(subprocess.run(
        ["ip", "-n", name, "-j", "link"], capture_output=True, text=True, check=True).stdout)}
    assert links[podnet.TAP]["mtu"] == 1400
    for dev, other in (("eth0", podnet.TAP), (podnet.TAP, "eth0")):
        shown = subprocess.run(["tc", "-n", name, "filter", "show", "dev", dev, "ingress"], capture_output=True,
                               text=True, check=True).stdout
        assert f"Egress Redirect to device {other}" in shown
    fd = os.open(pod_netns, os.O_RDONLY)
    try:
        tap = podnet.open_tap(fd)  # the shim's side: the tap's descriptor, for QEMU
        os.close(tap)
    finally:
        os.close(fd)
    podnet.unplug(pod_netns)
    shown = subprocess.run(["ip", "-n", name, "link"], capture_output=True, text=True).stdout
    assert podnet.TAP not in shown
    podnet.unplug(pod_netns)  # twice: nothing left to undo, no error
    podnet.unplug("/run/netns/no-such-namespace")


def test_a_namespace_without_a_cni_interface_is_refused(tmp_path: Any) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"a3s-podnet-empty-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        with pytest.raises(PodNetError, match=f"/run/netns/{name}: .*eth0"):
            podnet.plug(f"/run/netns/{name}")
    finally:
        subprocess.run(["ip", "netns", "del", name])
    with pytest.raises(PodNetError, match="pod network namespace /nonexistent"):
        podnet.plug("/nonexistent")


def test_routed_rules_redirect_what_the_vm_starts_and_forward_only_what_came_in() -> None:
    rules = podnet.routed_rules("10.88.0.7")
    assert "-A A3S-SPOOF ! -s 10.88.0.7/32 -j DROP" in rules
    assert f"-A A3S-EGRESS -p tcp -j REDIRECT --to-ports {podnet.PROXY_PORT}" in rules
    assert f"-A A3S-EGRESS -p udp --dport 53 -j REDIRECT --to-ports {podnet.DNS_PORT}" in rules
    forward = [line for line in rules.splitlines() if line.startswith("-A A3S-FORWARD")]
    assert forward == [
        f"-A A3S-FORWARD -i eth0 -o {podnet.TAP} -d 10.88.0.7/32 -j ACCEPT",
        f"-A A3S-FORWARD -i {podnet.TAP} -o eth0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        f"-A A3S-FORWARD -i {podnet.TAP} -j DROP",
        f"-A A3S-FORWARD -o {podnet.TAP} -j DROP",
    ]


def test_plug_routed_makes_the_namespace_the_vms_router_and_unplug_undoes_it(pod_netns: str) -> None:
    if not shutil.which("iptables-save"):
        pytest.skip("needs iptables")
    name = pod_netns.rsplit("/", 1)[1]

    def show(*argv: str) -> str:
        return subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True, text=True).stdout

    ns = podnet.PodNamespace(pod_netns)  # the proxy's listeners, bound before the tap has its address
    try:
        tcp = ns.listener(socket.SOCK_STREAM, podnet.PROXY_PORT)
        tcp.close()
    finally:
        ns.close()
    iface = podnet.plug(pod_netns, routed=True)
    assert iface.address == "10.213.79.2"
    saved = show("iptables-save")
    for chain in ("A3S-SPOOF", "A3S-EGRESS", "A3S-FORWARD", "A3S-INPUT"):
        assert f":{chain}" in saved
    rules = show("ip", "rule")
    assert f"10:\tfrom all iif eth0 lookup {podnet.ROUTE_TABLE}" in rules and "100:\tfrom all lookup local" in rules
    assert "0:\tfrom all lookup local" not in rules.splitlines()
    assert f"10.213.79.2 dev {podnet.TAP}" in show("ip", "route", "show", "table", str(podnet.ROUTE_TABLE))
    assert show("sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
    assert "Redirect" not in show("tc", "filter", "show", "dev", "eth0", "ingress")  # not bridged
    podnet.unplug(pod_netns)
    assert "A3S-" not in show("iptables-save")
    assert "0:\tfrom all lookup local" in show("ip", "rule").splitlines() and f"lookup {podnet.ROUTE_TABLE}" not in show("ip", "rule")
    assert podnet.TAP not in show("ip", "link")
    again = podnet.plug(pod_netns)  # the bridged mode after a routed VM: nothing of it left in the way
    assert again == iface
    podnet.unplug(pod_netns)
