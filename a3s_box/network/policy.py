"""A box's network policy and the decision for one flow. Pure: no sockets, no clock.

Threat: the guest (root inside the VM, its agent and business code) is hostile. It must
reach only the destinations its Boxfile lists (`allowlist`), or the public internet minus
`deny` (`public`); never the host, its loopback, private or link-local ranges or cloud
metadata, unless the Boxfile names them (`hosts:` or an IP/CIDR rule). It controls every
byte it sends: DNS answers it makes up, the IP it connects to, the TLS SNI and the HTTP
Host. So a decision is made on what the host knows: the name the box asked our DNS for
(`Flow.name`, recovered from the address our DNS handed out) or the raw IP, and the host
then dials that name itself (`Verdict.dial`), resolving it at connect time.

    parse_destination("*.pypi.org:443") -> Rule      (Boxfile validation uses these)
    parse_published("127.0.0.1:8080:80") -> Published
    NetworkPolicy.from_json(...).decide(Flow(...)) -> Verdict
    NetworkPolicy.answers(name) -> bool               (does our DNS resolve it?)
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["none", "allowlist", "public"]
DEFAULT_PORTS = (443, 80)
ANY_PORT = 0  # a rule written HOST:* matches every port
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")

# Never reachable in `public` mode, and never as an answer for a name unless `hosts:` says so.
_INTERNAL = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/3")]


class RuleError(ValueError):
    """A destination, port mapping or host override that cannot be read."""


def is_internal(ip: ipaddress.IPv4Address) -> bool:
    """Private, loopback, link-local (cloud metadata), CGNAT, benchmark, multicast, reserved."""
    return any(ip in n for n in _INTERNAL)


def normalize_name(name: str) -> str:
    return name.strip().lower().rstrip(".")


def _port(text: str, what: str) -> int:
    if text == "*":
        return ANY_PORT
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise RuleError(f"{what} {text!r} is not a port (1-65535)")
    return int(text)


@dataclass(frozen=True)
class Rule:
    """One destination: a name, a wildcard (`*.example.com`: its subdomains, not itself),
    or an IPv4 address/CIDR; with the ports it covers (empty: 443 and 80)."""

    name: str = ""  # exact name, or the suffix after "*." for a wildcard
    wildcard: bool = False
    network: ipaddress.IPv4Network | None = None
    ports: tuple[int, ...] = DEFAULT_PORTS

    def text(self) -> str:
        host = (f"*.{self.name}" if self.wildcard else self.name) if self.network is None else (
            str(self.network.network_address) if self.network.prefixlen == 32 else str(self.network))
        if self.ports == DEFAULT_PORTS:
            return host
        return f"{host}:{'*' if self.ports == (ANY_PORT,) else ','.join(map(str, self.ports))}"

    def matches_name(self, name: str) -> bool:
        if self.network is not None:
            return False
        return name.endswith("." + self.name) if self.wildcard else name == self.name

    def matches_ip(self, ip: ipaddress.IPv4Address) -> bool:
        return self.network is not None and ip in self.network

    def matches_port(self, port: int) -> bool:
        return ANY_PORT in self.ports or port in self.ports


def parse_destination(text: str) -> Rule:
    """`HOST[:PORT]`: HOST a name, `*.name`, an IPv4 address or CIDR; PORT a number or `*`."""
    if not isinstance(text, str) or not text.strip():
        raise RuleError("must be a host, *.domain, IPv4 address or CIDR, with an optional :port")
    raw = text.strip()
    if raw.startswith("[") or raw.count(":") > 1:
        raise RuleError(f"{raw!r}: IPv6 destinations are not supported (boxes have IPv4 only)")
    host, sep, port = raw.partition(":")
    ports = (_port(port, "in " + repr(raw) + ", port"),) if sep else DEFAULT_PORTS
    host = host.lower()
    if re.fullmatch(r"[0-9./]+", host):
        try:
            net = ipaddress.IPv4Network(host, strict=True)
        except ValueError as e:
            raise RuleError(f"{raw!r}: {e}") from None
        return Rule(network=net, ports=ports)
    wildcard = host.startswith("*.")
    name = normalize_name(host[2:] if wildcard else host)
    if "*" in name or not _NAME.match(name):
        raise RuleError(f"{raw!r} is not a host name, *.domain, IPv4 address or CIDR")
    if wildcard and "." not in name:
        raise RuleError(f"{raw!r}: a wildcard must leave a domain (*.example.com), not a top-level one")
    return Rule(name=name, wildcard=wildcard, ports=ports)


@dataclass(frozen=True)
class Published:
    """A box port published on the host: `[HOST_IP:]HOST_PORT:BOX_PORT[/tcp]`."""

    host_ip: str
    host_port: int
    box_port: int

    def text(self) -> str:
        return f"{self.host_ip}:{self.host_port}:{self.box_port}"


def parse_published(text: str) -> Published:
    raw = str(text).strip()
    body = raw.removesuffix("/tcp")
    if body.endswith("/udp"):
        raise RuleError(f"{raw!r}: only TCP ports can be published")
    parts = body.split(":")
    if len(parts) == 2:
        parts.insert(0, "127.0.0.1")
    if len(parts) != 3:
        raise RuleError(f"{raw!r}: want [HOST_IP:]HOST_PORT:BOX_PORT, e.g. 127.0.0.1:8080:80")
    try:
        ip = ipaddress.IPv4Address(parts[0])
    except ValueError:
        raise RuleError(f"{raw!r}: {parts[0]!r} is not an IPv4 address of this host") from None
    hp, bp = _port(parts[1], f"in {raw!r}, host port"), _port(parts[2], f"in {raw!r}, box port")
    if ANY_PORT in (hp, bp):
        raise RuleError(f"{raw!r}: a published port must be a number")
    return Published(str(ip), hp, bp)


def parse_host_ip(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(str(text).strip())
    except ValueError:
        raise RuleError(f"{text!r} is not an IPv4 address") from None


@dataclass(frozen=True)
class Flow:
    """What the host knows of one connection the box opened."""

    port: int
    name: str | None = None  # the name our DNS answered with the address the box dialled
    ip: ipaddress.IPv4Address | None = None  # the raw address, when it is not one of ours
    sni: str | None = None  # TLS server name, if a ClientHello was seen
    http_host: str | None = None  # HTTP Host header, if plain HTTP was seen


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str
    dial: tuple[str, int] | None = None  # what the host connects to: a name or an IP, a port
    pinned: ipaddress.IPv4Address | None = None  # a hosts: override: dial exactly this IP

    @property
    def destination(self) -> str:
        return f"{self.dial[0]}:{self.dial[1]}" if self.dial else ""


@dataclass(frozen=True)
class NetworkPolicy:
    mode: Mode = "none"
    egress: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    hosts: dict[str, ipaddress.IPv4Address] = field(default_factory=dict)
    ports: tuple[Published, ...] = ()

    # --- (de)serialization: the Boxfile's strings, as the box's launch.json keeps them
    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "NetworkPolicy":
        data = data or {}
        return cls(
            mode=data.get("mode", "none"),
            egress=tuple(parse_destination(r) for r in data.get("egress", ())),
            deny=tuple(parse_destination(r) for r in data.get("deny", ())),
            hosts={normalize_name(k): parse_host_ip(v) for k, v in sorted((data.get("hosts") or {}).items())},
            ports=tuple(parse_published(p) for p in data.get("ports", ())),
        )

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "egress": [r.text() for r in self.egress],
                "deny": [r.text() for r in self.deny],
                "hosts": {k: str(v) for k, v in sorted(self.hosts.items())},
                "ports": [p.text() for p in self.ports]}

    @property
    def enabled(self) -> bool:
        """The box has a network at all (a device, a proxy): any mode but `none`."""
        return self.mode != "none"

    def summary(self) -> str:
        """One line for `box ps` / the plan."""
        if self.mode == "none":
            return "none"
        parts: list[str] = [self.mode]
        if self.mode == "allowlist":
            parts.append(", ".join(r.text() for r in self.egress) or "nothing")
        if self.deny:
            parts.append("deny " + ", ".join(r.text() for r in self.deny))
        if self.ports:
            parts.append("ports " + ", ".join(p.text() for p in self.ports))
        return "; ".join(parts)

    # --- decisions
    def _denied_name(self, name: str) -> bool:
        return any(r.matches_name(name) for r in self.deny)

    def _denied_ip(self, ip: ipaddress.IPv4Address, port: int) -> bool:
        return any(r.matches_ip(ip) and r.matches_port(port) for r in self.deny)

    def answers(self, name: str) -> bool:
        """Whether our DNS gives the box an address for NAME (a port is chosen later)."""
        name = normalize_name(name)
        if self.mode == "none" or not _NAME.match(name) or self._denied_name(name):
            return False
        if self.mode == "public":
            return True
        return any(r.matches_name(name) for r in self.egress)

    def allows_name(self, name: str, port: int) -> bool:
        return self.answers(name) and self.decide(Flow(port, name=normalize_name(name))).allowed

    def decide(self, flow: Flow) -> Verdict:
        if self.mode == "none":
            return Verdict(False, "network mode is none")
        if flow.name is not None:
            return self._decide_name(normalize_name(flow.name), flow)
        if flow.ip is None:
            return Verdict(False, "no destination")
        return self._decide_ip(flow.ip, flow.port)

    def _decide_name(self, name: str, flow: Flow) -> Verdict:
        # The box resolved NAME through us; what it says inside the stream must agree,
        # or an allowed name's address would carry a request for another (domain fronting).
        for said, what in ((flow.sni, "TLS server name"), (flow.http_host, "HTTP Host")):
            if said is not None and normalize_name(said) != name:
                return Verdict(False, f"{what} {said!r} does not match {name!r}, the name the box resolved")
        if self._denied_name(name):
            return Verdict(False, f"{name} is denied")
        if self.mode == "allowlist" and not any(
                r.matches_name(name) and r.matches_port(flow.port) for r in self.egress):
            return Verdict(False, f"{name}:{flow.port} is not in the allow-list")
        pinned = self.hosts.get(name)
        return Verdict(True, "hosts: override" if pinned else "allowed", (name, flow.port), pinned)

    def _decide_ip(self, ip: ipaddress.IPv4Address, port: int) -> Verdict:
        if self._denied_ip(ip, port):
            return Verdict(False, f"{ip} is denied")
        if any(r.matches_ip(ip) and r.matches_port(port) for r in self.egress):
            return Verdict(True, "allowed (address rule)", (str(ip), port), ip)
        if self.mode == "public":
            if is_internal(ip):
                return Verdict(False, f"{ip} is a private, loopback or link-local address")
            return Verdict(True, "public", (str(ip), port), ip)
        return Verdict(False, f"{ip}:{port} is not in the allow-list (raw addresses need an IP or CIDR rule)")

    def acceptable_answer(self, name: str, ip: ipaddress.IPv4Address, port: int) -> str | None:
        """Why a resolved address of NAME must not be dialled (None: it may). Checked at
        connect time for every name without a hosts: override: DNS rebinding cannot
        turn an allowed name into a door to the host or its network."""
        if is_internal(ip):
            return f"{name} resolved to {ip}, a private, loopback or link-local address"
        if self._denied_ip(ip, port):
            return f"{name} resolved to {ip}, which is denied"
        return None
