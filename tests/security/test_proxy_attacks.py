"""The egress proxy attacked as a root shell in the guest would: raw bytes on a socket.

Each test is one attack from issue 22 that worked before the proxy was made to fail
closed. The upstream is "the internet" of tests/network (it echoes every request it
gets as JSON), so a request that got through would show in `internet.requests`.

Faked, as in tests/network/test_proxy.py: the address the box dialled (SO_ORIGINAL_DST
needs the box's namespace); the same attacks from a real VM are in test_guest_network.py.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from a3s_box.network.ca import ensure_ca
from a3s_box.network.egress import WEB_PORTS, Egress, host_addresses
from a3s_box.network.log import NetworkLog
from a3s_box.network.policy import NetworkPolicy
from a3s_box.network.secrets import Secret, SecretBook
from a3s_box.network.sniff import sniff
from tests.network.conftest import Internet, internet  # noqa: F401 - the fixture
from tests.network.test_proxy import PLACEHOLDER, TOKEN_VALUE, ProxyUnderTest


@pytest.fixture()
def proxy(internet: Internet, tmp_path: Path) -> Iterator[ProxyUnderTest]:  # noqa: F811
    ensure_ca(tmp_path, "test.box")
    policy = NetworkPolicy.from_json({
        "mode": "allowlist",
        "egress": [f"api.test:{internet.http_port}", f"api.test:{internet.https_port}",
                   f"other.test:{internet.http_port}", f"other.test:{internet.https_port}"],
        "hosts": {"api.test": "127.0.0.1", "other.test": "127.0.0.1"}})
    secrets = SecretBook([Secret("TOKEN", PLACEHOLDER, TOKEN_VALUE, (f"api.test:{internet.https_port}",))])
    upstream = ssl.create_default_context(cafile=str(internet.ca))
    yield ProxyUnderTest(Egress(policy, secrets, NetworkLog(None, "test.box"), tmp_path, upstream))


def _send(proxy: ProxyUnderTest, *parts: bytes, pause: float = 0.0) -> bytes:
    """Writes PARTS (PAUSE seconds apart) on a fresh flow; what the proxy answered."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        for i, part in enumerate(parts):
            if i and pause:
                time.sleep(pause)
            s.sendall(part)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def _reached(internet: Internet, before: int) -> list[dict[str, object]]:  # noqa: F811
    time.sleep(0.05)
    return internet.requests[before:]


@pytest.mark.parametrize("attack,head", [
    ("a CRLF before the request line", b"\r\nGET /x HTTP/1.1\r\nHost: evil.test\r\n\r\n"),
    ("a method the old sniffer did not list", b"PROPFIND /x HTTP/1.1\r\nHost: evil.test\r\n\r\n"),
    ("a head over 16 KiB", b"GET /x HTTP/1.1\r\nHost: evil.test\r\nX: " + b"a" * (17 << 10) + b"\r\n\r\n"),
    ("Content-Length with Transfer-Encoding",
     b"POST /x HTTP/1.1\r\nHost: api.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("userinfo in Host", b"GET /x HTTP/1.1\r\nHost: api.test:1@evil.test\r\n\r\n"),
    ("two Hosts", b"GET /x HTTP/1.1\r\nHost: api.test\r\nHost: evil.test\r\n\r\n"),
    ("a folded header line", b"GET /x HTTP/1.1\r\nHost: api.test\r\nX-A: 1\r\n evil\r\n\r\n"),
    ("an absolute-form target", b"GET http://evil.test/x HTTP/1.1\r\nHost: api.test\r\n\r\n"),
    ("a bare LF", b"GET /x HTTP/1.1\nHost: api.test\n\n"),
])
def test_an_unreadable_or_ambiguous_head_is_refused_not_relayed(
        proxy: ProxyUnderTest, internet: Internet, attack: str, head: bytes) -> None:  # noqa: F811
    proxy.dial("api.test", internet.http_port)
    before = len(internet.requests)
    answer = _send(proxy, head)
    assert not _reached(internet, before), attack
    assert b"403" in answer.split(b"\r\n", 1)[0], (attack, answer[:200])


def test_a_first_byte_sent_late_is_still_read_and_checked(proxy: ProxyUnderTest,
                                                          internet: Internet) -> None:  # noqa: F811
    proxy.dial("api.test", internet.http_port)
    before = len(internet.requests)
    _send(proxy, b"", b"GET /late HTTP/1.1\r\nHost: evil.test\r\n\r\n", pause=0.6)
    assert not _reached(internet, before)
    assert any(x["verdict"] == "deny" for x in proxy.wait_for_flows(1))


def _client_hello(server_name: str) -> bytes:
    """The first record(s) a real TLS client sends for SERVER_NAME."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def _split_records(hello: bytes, at: int) -> bytes:
    """The ClientHello's handshake message carried in two TLS records."""
    body = hello[5:]
    return b"".join(b"\x16" + hello[1:3] + len(p).to_bytes(2, "big") + p for p in (body[:at], body[at:]))


def test_a_client_hello_split_over_two_records_is_reassembled(proxy: ProxyUnderTest,
                                                             internet: Internet) -> None:  # noqa: F811
    hello = _client_hello("evil.test")
    split = _split_records(hello, 20)
    seen = sniff(split)
    assert seen is not None and (seen.kind, seen.server_name) == ("tls", "evil.test")
    proxy.dial("other.test", internet.https_port)  # no secret: TLS would pass through
    answer = _send(proxy, split)
    assert answer == b""
    flows = proxy.wait_for_flows(1)
    assert flows[-1]["verdict"] == "deny" and "does not match 'other.test'" in str(flows[-1]["reason"])


def test_a_placeholder_as_a_header_name_to_a_host_without_secrets_is_refused(
        proxy: ProxyUnderTest, internet: Internet) -> None:  # noqa: F811
    proxy.dial("other.test", internet.http_port)
    before = len(internet.requests)
    answer = _send(proxy, f"GET /x HTTP/1.1\r\nHost: other.test\r\n{PLACEHOLDER}: 1\r\n\r\n".encode())
    assert not _reached(internet, before) and b"403" in answer


def _intercepted(proxy: ProxyUnderTest, internet: Internet, tmp_path: Path,  # noqa: F811
                 request: bytes) -> bytes:
    """REQUEST sent inside TLS to api.test (the secret's host), verified with the box's CA."""
    proxy.dial("api.test", internet.https_port)
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="api.test") as s:
            s.sendall(request)
            out = b""
            try:
                while chunk := s.recv(65536):
                    out += chunk
                    if b"\r\n0\r\n\r\n" in out or (b"403" in out[:12] and out.endswith(b"\n")):
                        break
            except (ssl.SSLError, OSError):
                pass
    return out


@pytest.mark.parametrize("where,request_", [
    ("the target, where a 404 echoes it", f"GET /v1/models/{PLACEHOLDER} HTTP/1.1\r\nHost: api.test\r\n\r\n"),
    ("a cookie", f"GET /c HTTP/1.1\r\nHost: api.test\r\nCookie: k={PLACEHOLDER}\r\n\r\n"),
    ("a body", f"POST /b HTTP/1.1\r\nHost: api.test\r\nContent-Length: {len(PLACEHOLDER) + 4}\r\n\r\nkey={PLACEHOLDER}"),
])
def test_a_placeholder_outside_a_header_value_token_is_refused(
        proxy: ProxyUnderTest, internet: Internet, tmp_path: Path, where: str, request_: str) -> None:  # noqa: F811
    before = len(internet.requests)
    out = _intercepted(proxy, internet, tmp_path, request_.encode())
    assert out.startswith(b"HTTP/1.1 403"), (where, out[:300])
    assert TOKEN_VALUE.encode() not in out
    assert not any(TOKEN_VALUE in json.dumps(r) for r in _reached(internet, before)), where


def test_the_value_echoed_by_the_upstream_reaches_the_guest_as_the_placeholder(
        proxy: ProxyUnderTest, internet: Internet, tmp_path: Path) -> None:  # noqa: F811
    out = _intercepted(proxy, internet, tmp_path, (
        f"GET /echo HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {PLACEHOLDER}\r\n"
        "Accept-Encoding: gzip\r\n\r\n").encode())
    assert out.startswith(b"HTTP/1.1 200"), out[:300]
    assert TOKEN_VALUE.encode() not in out and f"Bearer {PLACEHOLDER}".encode() in out
    seen = internet.last("/echo")["headers"]
    assert seen["authorization"] == f"Bearer {TOKEN_VALUE}"  # the upstream got the value
    assert seen["accept-encoding"] == "identity"  # asked for a body the proxy can read


def test_an_idle_flow_is_closed(proxy: ProxyUnderTest, internet: Internet) -> None:  # noqa: F811
    proxy.egress.idle_timeout = 0.5
    proxy.dial("api.test", internet.http_port)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as s:
        s.sendall(b"GET /idle HTTP/1.1\r\nHost: api.test\r\n")  # an unfinished head, then nothing
        assert s.recv(100) == b""  # the proxy closed it
    for _ in range(500):  # and then forgets the flow
        if proxy.egress.open_flows == 0:
            break
        time.sleep(0.01)
    assert proxy.egress.open_flows == 0
    [flow] = [x for x in proxy.egress.log.lines if x["proto"] == "tcp"]
    assert (flow["verdict"], flow["reason"]) == ("deny", "idle for 0.5s before its first bytes could be read")


def test_a_box_cannot_open_more_flows_than_its_cap(proxy: ProxyUnderTest, internet: Internet) -> None:  # noqa: F811
    proxy.egress.max_flows = 2
    proxy.dial("api.test", internet.http_port)
    held = [socket.create_connection(("127.0.0.1", proxy.port), timeout=10) for _ in range(2)]
    try:
        for _ in range(100):
            if proxy.egress.open_flows == 2:
                break
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as third:
            assert third.recv(100) == b""
        assert any("at most 2" in str(x.get("reason")) for x in proxy.egress.log.lines)
    finally:
        for s in held:
            s.close()


def test_public_mode_refuses_the_hosts_own_addresses(internet: Internet) -> None:  # noqa: F811
    """A host service bound to 0.0.0.0 answers on the host's public address too: not
    private, yet the host's. The address set is the kernel's own list of local addresses."""
    import subprocess

    listed = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout.split()
    expected = {ipaddress.IPv4Address(w.split("/")[0]) for i, w in enumerate(listed) if listed[i - 1] == "inet"}
    assert expected and expected <= host_addresses()
    public = ipaddress.IPv4Address("203.0.113.7")  # stands in for this host's public address
    egress = Egress(NetworkPolicy.from_json({"mode": "public"}), SecretBook([]), NetworkLog(None, "t"),
                    local_addresses=lambda: frozenset({public}))
    verdict = egress._decide(None, public, 8080, sniff(b"GET / HTTP/1.1\r\nHost: 203.0.113.7\r\n\r\n"))
    assert not verdict.allowed and "an address of this host" in verdict.reason
    assert egress._decide(None, ipaddress.IPv4Address("203.0.113.8"), 8080, None).allowed


def test_public_mode_refuses_the_address_of_a_denied_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Faked: name resolution (this host has no public DNS); the check itself is real."""
    egress = Egress(NetworkPolicy.from_json({"mode": "public", "deny": ["evil.example"]}), SecretBook([]),
                    NetworkLog(None, "t"), local_addresses=frozenset)
    evil = ipaddress.IPv4Address("203.0.113.66")

    async def resolve(loop: object, host: str, port: int, **kw: object) -> list[object]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (str(evil), port))] if host == "evil.example" else []
    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", resolve)
    verdict = egress.policy.decide(__import__("a3s_box.network.policy", fromlist=["Flow"]).Flow(443, ip=evil))
    assert verdict.allowed  # by the pure policy: a raw public address
    with pytest.raises(Exception, match="an address of evil.example, which is denied"):
        asyncio.run(egress._dial(verdict))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(sorted(WEB_PORTS)))
def test_nothing_is_relayed_to_a_name_on_a_web_port_undecided(data: bytes, port: int) -> None:
    """Whatever the guest sends: the proxy's decision is a refusal, or its bytes were read
    as TLS or HTTP naming exactly the name the box resolved."""
    egress = Egress(NetworkPolicy.from_json({"mode": "public"}), SecretBook([]), NetworkLog(None, "t"),
                    local_addresses=frozenset)
    for payload in (data, b"GET / HTTP/1.1\r\n" + data, b"\x16\x03\x01" + data):
        seen = sniff(payload)
        if seen is None:
            continue  # the proxy keeps reading (bounded by MAX_PEEK and the idle timeout)
        verdict = egress._decide("api.example", ipaddress.IPv4Address("198.18.0.1"), port, seen)
        if verdict.allowed:
            assert seen.kind in ("tls", "http")
            assert seen.server_name in ("api.example", None if seen.kind == "tls" else "api.example")


def _unchunked(out: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 response (what a client reads, chunk edges gone)."""
    rest = out.split(b"\r\n\r\n", 1)[1]
    body = b""
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            return body
        body, rest = body + rest[:size], rest[size + 2:]


def test_a_large_body_echoing_the_value_reaches_the_guest_scrubbed_at_every_chunk_edge(
        proxy: ProxyUnderTest, internet: Internet, tmp_path: Path) -> None:  # noqa: F811
    """The scrubber's fast path (exchange.py relays Content-Length bodies from one buffer,
    256 KiB reads): values at offsets that fall on every side of the read edges."""
    body = b"".join(b"y" * (9973 + i) + TOKEN_VALUE.encode() for i in range(80))
    out = _intercepted(proxy, internet, tmp_path, (
        f"POST /echo HTTP/1.1\r\nHost: api.test\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
    assert out.startswith(b"HTTP/1.1 200"), out[:300]
    seen = _unchunked(out)
    assert TOKEN_VALUE.encode() not in seen
    assert seen.count(PLACEHOLDER.encode()) == 80
    assert json.loads(seen)["body"] == body.decode().replace(TOKEN_VALUE, PLACEHOLDER)
