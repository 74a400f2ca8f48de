"""The egress proxy without a VM: the host's curl talks to it as a box would.

Faked: where the box meant to connect. In a box, the namespace's REDIRECT rule sends
every flow to the proxy and SO_ORIGINAL_DST tells it the address the box dialled;
here curl connects to the proxy directly and the test says which address that was.
Everything else (DNS answers, policy, TLS, h11, the upstream) is the real code.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from a3s_box.network.ca import ensure_ca
from a3s_box.network.egress import Egress
from a3s_box.network.log import NetworkLog
from a3s_box.network.policy import Flow, NetworkPolicy
from a3s_box.network.secrets import Secret, SecretBook
from tests.network.conftest import Internet

TOKEN_VALUE = "sk-test-the-real-value"
PLACEHOLDER = "a3s-secret-token-000000000000000000000000"


class ProxyUnderTest:
    def __init__(self, egress: Egress) -> None:
        self.egress = egress
        self.target: tuple[ipaddress.IPv4Address, int] = (ipaddress.IPv4Address("0.0.0.0"), 0)
        egress.destination = lambda _sock: self.target
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            listener = socket.create_server(("127.0.0.1", 0))
            self.port = listener.getsockname()[1]
            self.loop.create_task(egress.serve(listener))
            ready.set()
            self.loop.run_forever()
        threading.Thread(target=run, daemon=True).start()
        ready.wait(5)

    def dial(self, name: str | None, port: int, ip: str = "") -> None:
        """The next flow is the box connecting to NAME (resolved through its DNS) or IP."""
        addr = self.egress.dns.book.address_of(name) if name else ipaddress.IPv4Address(ip)
        assert addr is not None
        self.target = (addr, port)

    def wait_for_flows(self, n: int) -> list[dict[str, object]]:
        for _ in range(500):
            flows = [x for x in self.egress.log.lines if x["proto"] == "tcp"]
            if len(flows) >= n and self.egress.open_flows == 0:
                return flows
            time.sleep(0.01)
        return [x for x in self.egress.log.lines if x["proto"] == "tcp"]

    def curl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["curl", "-sS", "-m", "10", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture()
def proxy(internet: Internet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ProxyUnderTest]:
    ensure_ca(tmp_path, "test.box")
    policy = NetworkPolicy.from_json({
        "mode": "allowlist",
        "egress": [f"api.test:{internet.http_port}", f"api.test:{internet.https_port}",
                   f"other.test:{internet.https_port}", "rebind.test:*"],
        "hosts": {"api.test": "127.0.0.1", "other.test": "127.0.0.1"}})
    secrets = SecretBook([Secret("TOKEN", PLACEHOLDER, TOKEN_VALUE, (f"api.test:{internet.https_port}",))])
    import ssl
    upstream = ssl.create_default_context(cafile=str(internet.ca))
    yield ProxyUnderTest(Egress(policy, secrets, NetworkLog(None, "test.box"), tmp_path, upstream))


def test_plain_http_keeps_alive_over_several_requests(proxy: ProxyUnderTest, internet: Internet) -> None:
    proxy.dial("api.test", internet.http_port)
    url = f"http://api.test:{internet.http_port}"
    r = proxy.curl("--connect-to", f"api.test:{internet.http_port}:127.0.0.1:{proxy.port}",
                   f"{url}/one", f"{url}/two", f"{url}/three", "-w", "\n")
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["path"] for line in r.stdout.splitlines() if line] == ["/one", "/two", "/three"]
    flows = proxy.wait_for_flows(1)  # logged when the connection ends
    assert len(flows) == 1 and flows[0]["verdict"] == "allow"  # one connection, three requests


def test_a_name_not_in_the_allow_list_gets_no_address(proxy: ProxyUnderTest) -> None:
    assert proxy.egress.policy.answers("api.test")
    assert not proxy.egress.policy.answers("evil.test")
    out, name, answer = proxy.egress.dns.answer(_query("evil.test"))
    assert out is not None and out[3] & 0xF == 3 and "nxdomain" in answer  # NXDOMAIN


def test_another_host_name_on_an_allowed_address_is_refused(proxy: ProxyUnderTest, internet: Internet) -> None:
    proxy.dial("api.test", internet.http_port)
    r = proxy.curl("-H", "Host: evil.test", f"http://127.0.0.1:{proxy.port}/")
    assert "does not match 'api.test'" in r.stdout
    assert not any(req["headers"].get("host") == "evil.test" for req in internet.requests)


def test_raw_addresses_are_refused(proxy: ProxyUnderTest, internet: Internet) -> None:
    proxy.dial(None, internet.http_port, ip="127.0.0.1")
    r = proxy.curl(f"http://127.0.0.1:{proxy.port}/raw")
    assert "is not in the allow-list" in r.stdout  # plain HTTP gets a 403 saying why
    assert proxy.wait_for_flows(1)[-1]["verdict"] == "deny"
    assert not any(req["path"] == "/raw" for req in internet.requests)


def test_secret_is_substituted_only_inside_tls_to_its_host(proxy: ProxyUnderTest, internet: Internet,
                                                           tmp_path: Path) -> None:
    port = internet.https_port
    proxy.dial("api.test", port)
    url = f"https://api.test:{port}"
    r = proxy.curl("--cacert", str(tmp_path / "ca.pem"), "--connect-to", f"api.test:{port}:127.0.0.1:{proxy.port}",
                   "-H", f"Authorization: Bearer {PLACEHOLDER}", f"{url}/s1", f"{url}/s2")
    assert r.returncode == 0, (r.stderr, json.dumps(proxy.egress.log.lines))
    assert internet.last("/s1")["headers"]["authorization"] == f"Bearer {TOKEN_VALUE}"
    assert internet.last("/s2")["headers"]["authorization"] == f"Bearer {TOKEN_VALUE}"
    assert PLACEHOLDER not in json.dumps(internet.requests[-2:])
    # the upstream echoed the value back: the box got the placeholder in its place
    assert TOKEN_VALUE not in r.stdout and r.stdout.count(f"Bearer {PLACEHOLDER}") == 2


def test_a_placeholder_over_plain_http_is_refused_and_never_sent(proxy: ProxyUnderTest, internet: Internet) -> None:
    proxy.dial("api.test", internet.http_port)
    before = len(internet.requests)
    r = proxy.curl("-H", f"X-Key: {PLACEHOLDER}", "-H", f"Host: api.test:{internet.http_port}",
                   f"http://127.0.0.1:{proxy.port}/leak")
    assert "placeholder of secret TOKEN sent over plain HTTP" in r.stdout
    assert len(internet.requests) == before
    assert any("placeholder of secret TOKEN" in x.get("reason", "") for x in proxy.egress.log.lines)


def test_a_placeholder_to_another_tls_host_is_not_replaced(proxy: ProxyUnderTest, internet: Internet) -> None:
    """other.test has no secret: its TLS passes through untouched, end to end (the box
    sees the upstream's own certificate), and nothing replaces the placeholder."""
    port = internet.https_port
    proxy.dial("other.test", port)
    r = proxy.curl("--cacert", str(internet.ca), "--connect-to", f"other.test:{port}:127.0.0.1:{proxy.port}",
                   "-H", f"X-Key: {PLACEHOLDER}", f"https://other.test:{port}/passthrough")
    assert r.returncode == 0, r.stderr  # verified against the upstream's CA: not intercepted
    assert internet.last("/passthrough")["headers"]["x-key"] == PLACEHOLDER


def test_a_name_resolving_to_a_private_address_is_not_dialled(proxy: ProxyUnderTest) -> None:
    """DNS rebinding: an allowed name whose answer is the host's network is refused."""
    v = proxy.egress.policy.decide(Flow(80, name="rebind.test"))
    assert v.allowed and v.pinned is None
    assert proxy.egress.policy.acceptable_answer("rebind.test", ipaddress.IPv4Address("127.0.0.1"), 80)
    assert proxy.egress.policy.acceptable_answer("rebind.test", ipaddress.IPv4Address("169.254.169.254"), 80)
    assert proxy.egress.policy.acceptable_answer("rebind.test", ipaddress.IPv4Address("93.184.216.34"), 80) is None


def _query(name: str) -> bytes:
    import struct
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!6H", 7, 0x0100, 1, 0, 0, 0) + q + struct.pack("!2H", 1, 1)
