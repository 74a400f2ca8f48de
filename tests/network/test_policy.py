"""The pure parts of box networking: rules, decisions, the box's DNS, the sniffer and
secret placeholders. The sans-IO parsers take hostile bytes: fuzzed, they never raise."""
from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from a3s_box.network.dns import POOL, DnsResponder, parse_query
from a3s_box.network.policy import Flow, NetworkPolicy, RuleError, parse_destination, parse_published
from a3s_box.network.secrets import Secret, SecretBook
from a3s_box.network.sniff import sniff


@pytest.mark.parametrize("text, shown", [
    ("api.openai.com", "api.openai.com"), ("API.OpenAI.com.", "api.openai.com"),
    ("*.pypi.org", "*.pypi.org"), ("github.com:22", "github.com:22"),
    ("203.0.113.0/24:5432", "203.0.113.0/24:5432"), ("10.1.2.3", "10.1.2.3"), ("db.test:*", "db.test:*"),
])
def test_destinations_parse_and_print_back(text: str, shown: str) -> None:
    assert parse_destination(text).text() == shown


@pytest.mark.parametrize("text, message", [
    ("bad host", "is not a host name"), ("x.com:0", "is not a port"), ("x.com:65536", "is not a port"),
    ("::1", "IPv6"), ("10.0.0.1/8", "has host bits set"), ("*.com", "top-level"), ("a.*.com", "not a host"),
    ("", "must be a host"),
])
def test_bad_destinations_say_why(text: str, message: str) -> None:
    with pytest.raises(RuleError, match=message.replace("*", r"\*")):
        parse_destination(text)


def test_published_ports_default_to_loopback() -> None:
    assert parse_published("8080:80").text() == "127.0.0.1:8080:80"
    assert parse_published("0.0.0.0:9000:9000/tcp").text() == "0.0.0.0:9000:9000"
    for bad in ("80", "1:2:3:4", "x:80:80", "8080:80/udp", "99999:80"):
        with pytest.raises(RuleError):
            parse_published(bad)


ALLOW = NetworkPolicy.from_json({"mode": "allowlist",
                                 "egress": ["api.openai.com", "*.pypi.org", "github.com:22", "203.0.113.0/24:5432"],
                                 "deny": ["evil.pypi.org"], "hosts": {"api.openai.com": "10.9.9.9"}})
PUBLIC = NetworkPolicy.from_json({"mode": "public", "deny": ["169.254.169.254", "*.blocked.example"]})


@pytest.mark.parametrize("flow, allowed, reason", [
    (Flow(443, name="api.openai.com"), True, "hosts: override"),
    (Flow(80, name="api.openai.com"), True, "hosts: override"),
    (Flow(22, name="api.openai.com"), False, "not in the allow-list"),
    (Flow(443, name="files.pypi.org"), True, "allowed"),
    (Flow(443, name="pypi.org"), False, "not in the allow-list"),  # a wildcard is not its apex
    (Flow(443, name="evil.pypi.org"), False, "is denied"),
    (Flow(22, name="github.com"), True, "allowed"),
    (Flow(443, name="github.com"), False, "not in the allow-list"),
    (Flow(5432, ip=ipaddress.IPv4Address("203.0.113.7")), True, "address rule"),
    (Flow(443, ip=ipaddress.IPv4Address("203.0.113.7")), False, "not in the allow-list"),
    (Flow(443, ip=ipaddress.IPv4Address("8.8.8.8")), False, "raw addresses need"),
    (Flow(443, name="api.openai.com", sni="evil.com"), False, "does not match"),
    (Flow(80, name="files.pypi.org", http_host="pypi.evil.com"), False, "does not match"),
])
def test_allowlist_decisions(flow: Flow, allowed: bool, reason: str) -> None:
    v = ALLOW.decide(flow)
    assert (v.allowed, reason in v.reason) == (allowed, True), v.reason


@pytest.mark.parametrize("ip, allowed", [
    ("93.184.216.34", True), ("127.0.0.1", False), ("10.0.2.2", False), ("169.254.169.254", False),
    ("192.168.1.1", False), ("172.16.0.1", False), ("100.64.0.1", False), ("198.18.0.9", False),
])
def test_public_mode_never_reaches_internal_addresses(ip: str, allowed: bool) -> None:
    assert PUBLIC.decide(Flow(443, ip=ipaddress.IPv4Address(ip))).allowed is allowed


def test_public_mode_denies_names_and_refuses_internal_answers() -> None:
    assert PUBLIC.answers("example.com") and not PUBLIC.answers("x.blocked.example")
    assert PUBLIC.acceptable_answer("example.com", ipaddress.IPv4Address("127.0.0.1"), 443)
    assert PUBLIC.acceptable_answer("example.com", ipaddress.IPv4Address("93.184.216.34"), 443) is None


def test_mode_none_decides_nothing_open() -> None:
    none = NetworkPolicy.from_json({"mode": "none"})
    assert not none.answers("api.openai.com")
    assert not none.decide(Flow(443, name="api.openai.com")).allowed


def test_the_policy_round_trips_through_json() -> None:
    assert NetworkPolicy.from_json(ALLOW.to_json()) == ALLOW


def _query(name: str, qtype: int = 1) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!6H", 0xBEEF, 0x0100, 1, 0, 0, 0) + q + struct.pack("!2H", qtype, 1)


def test_dns_gives_allowed_names_stable_addresses_of_ours() -> None:
    dns = DnsResponder(ALLOW.answers)
    out, name, answer = dns.answer(_query("files.pypi.org"))
    assert out is not None and name == "files.pypi.org"
    assert ipaddress.IPv4Address(answer) in POOL and out[-4:] == ipaddress.IPv4Address(answer).packed
    assert dns.answer(_query("files.pypi.org"))[2] == answer  # stable
    assert dns.book.name_of(ipaddress.IPv4Address(answer)) == "files.pypi.org"
    nx, _, said = dns.answer(_query("evil.com"))
    assert nx is not None and nx[3] & 0xF == 3 and "nxdomain" in said
    aaaa, _, said = dns.answer(_query("files.pypi.org", 28))
    assert aaaa is not None and struct.unpack("!H", aaaa[6:8])[0] == 0  # no answer records


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_dns_never_raises_on_hostile_bytes(data: bytes) -> None:
    out, _, _ = DnsResponder(PUBLIC.answers).answer(data)
    assert out is None or len(out) >= 12


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000))
def test_the_sniffer_never_raises_on_hostile_bytes(data: bytes) -> None:
    sniff(data)
    sniff(b"\x16\x03\x01" + data)
    sniff(b"GET / HTTP/1.1\r\n" + data)


def _client_hello(name: bytes) -> bytes:
    sni = struct.pack("!HB H", len(name) + 3, 0, len(name)) + name
    ext = struct.pack("!HH", 0, len(sni)) + sni
    body = b"\x03\x03" + b"\0" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + struct.pack("!H", len(ext)) + ext
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def test_the_sniffer_reads_sni_and_host() -> None:
    hello = _client_hello(b"API.example.com")
    assert sniff(hello[:20]) is None  # wait for the rest
    seen = sniff(hello)
    assert seen is not None and (seen.kind, seen.server_name) == ("tls", "api.example.com")
    http = sniff(b"GET /x HTTP/1.1\r\nHost: Files.PyPI.org:443\r\n\r\n")
    assert http is not None and (http.kind, http.server_name) == ("http", "files.pypi.org")
    assert sniff(b"GE") is None
    ssh = sniff(b"SSH-2.0-OpenSSH\r\n")
    assert ssh is not None and ssh.kind == "other"


def test_secret_placeholders() -> None:
    book = SecretBook([Secret("K", "a3s-secret-k-1", "real", ("api.test",)),
                       Secret("L", "a3s-secret-l-2", "other", ("x.test:8443",))])
    assert book.intercepts("api.test", 443) and not book.intercepts("api.test", 8443)
    assert book.intercepts("x.test", 8443)
    assert book.bound_to("api.test") == (book.items[0],)
    assert book.placeholders_in(b"a3s-secret-k-1 a3s-secret-l-2") == ["K", "L"]


def test_parse_query_refuses_responses_and_truncation() -> None:
    from a3s_box.network.dns import DnsFormatError

    for bad in (b"", b"\0" * 11, _query("a.b")[:-2], struct.pack("!6H", 1, 0x8000, 1, 0, 0, 0)):
        with pytest.raises(DnsFormatError):
            parse_query(bad)
