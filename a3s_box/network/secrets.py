"""Secrets as placeholders: the box holds a stand-in, the host swaps in the value.

Threat: the guest is hostile and wants the value (to send it elsewhere, or print it).
It only ever has the placeholder: in the environment of the agent and of every
`box exec`. The value is in the host's memory and its box folder (0600), and is written
into a request only by the proxy, only in the head of an HTTP/1.1 request inside TLS
to one of the secret's own hosts (whose upstream certificate the host verifies). A
placeholder seen in any other request head (plain HTTP, or another host) is refused
with 403 and logged, so a guest cannot even make us carry it somewhere unreplaced.
Request bodies are not rewritten.
"""
from __future__ import annotations

import secrets as _random
from collections.abc import Iterable
from dataclasses import dataclass

from a3s_box.network.policy import normalize_name

PLACEHOLDER_PREFIX = "a3s-secret-"
DEFAULT_TLS_PORT = 443


def secret_endpoint(text: str) -> tuple[str, int]:
    """`host[:port]` of a secret's hosts: the name and the TLS port (default 443)."""
    host, sep, port = text.partition(":")
    return normalize_name(host), int(port) if sep else DEFAULT_TLS_PORT


def new_placeholder(name: str) -> str:
    return f"{PLACEHOLDER_PREFIX}{name.lower().replace('_', '-')}-{_random.token_hex(12)}"


@dataclass(frozen=True)
class Secret:
    name: str
    placeholder: str
    value: str
    hosts: tuple[str, ...]


class SecretBook:
    def __init__(self, items: Iterable[Secret]) -> None:
        self.items = tuple(items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def intercepts(self, host: str, port: int) -> bool:
        """Whether TLS to HOST:PORT is terminated here (some secret goes there)."""
        return any(secret_endpoint(h) == (normalize_name(host), port) for s in self.items for h in s.hosts)

    def bound_to(self, host: str) -> tuple[Secret, ...]:
        host = normalize_name(host)
        return tuple(s for s in self.items if host in (secret_endpoint(h)[0] for h in s.hosts))

    def foreign(self, data: bytes, host: str | None) -> list[str]:
        """Names of secrets whose placeholder is in DATA but that may not go to HOST
        (None: a flow that can carry no secret at all, e.g. plain HTTP)."""
        allowed = {s.name for s in self.bound_to(host)} if host else set()
        return sorted(s.name for s in self.items
                      if s.placeholder.encode() in data and s.name not in allowed)

    def substitute(self, data: bytes, host: str) -> tuple[bytes, list[str]]:
        """DATA with HOST's placeholders replaced by their values, and which were."""
        used = []
        for s in self.bound_to(host):
            if s.placeholder.encode() in data:
                data = data.replace(s.placeholder.encode(), s.value.encode())
                used.append(s.name)
        return data, used

    @classmethod
    def from_json(cls, data: dict[str, dict[str, object]] | None) -> "SecretBook":
        out = []
        for name, s in sorted((data or {}).items()):
            hosts = s.get("hosts") or ()
            assert isinstance(hosts, (list, tuple))
            out.append(Secret(name, str(s["placeholder"]), str(s["value"]), tuple(map(str, hosts))))
        return cls(out)
