"""Secrets as placeholders: the box holds a stand-in, the host swaps in the value.

Threat: the guest is hostile and wants the value (to send it elsewhere, or read it
back). It only ever has the placeholder: in the environment of the agent and of every
`box exec`. The value is in the host's memory and is written into a request only by
the proxy, only into a header *value* where the placeholder stands as a whole token
(`Bearer <ph>`, `<ph>`, or the user or password of `Basic` credentials), only in a
request inside TLS to one of the secret's own hosts (whose certificate the host
verifies). A placeholder anywhere else (the target, where an upstream may echo it back;
a header name; inside a token; a body; another host; plain HTTP) is refused with 403
and logged. What comes back on such a flow is scrubbed: the value, wherever the
upstream repeats it in a response head or body, reaches the guest as the placeholder.
"""
from __future__ import annotations

import base64
import binascii
import secrets as _random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from a3s_box.network.policy import RuleError, normalize_name, parse_destination

PLACEHOLDER_PREFIX = "a3s-secret-"
DEFAULT_TLS_PORT = 443


def secret_endpoint(text: str) -> tuple[str, int]:
    """`host[:port]` of a secret's hosts: the name and the TLS port (default 443)."""
    host, sep, port = text.partition(":")
    return normalize_name(host), int(port) if sep else DEFAULT_TLS_PORT


def secret_host_problem(text: str) -> str | None:
    """Why TEXT cannot be a secret's host (None when it can): one name, an optional port."""
    try:
        rule = parse_destination(text)
    except RuleError as e:
        return str(e)
    if rule.wildcard or rule.network is not None or 0 in rule.ports:
        return f"{text!r}: a secret's host is one host name with an optional port (no wildcard, address or *)"
    return None


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

    def placeholders_in(self, data: bytes) -> list[str]:
        return sorted(s.name for s in self.items if s.placeholder.encode() in data)

    def substitute_fields(self, target: bytes, fields: Iterable[tuple[bytes, bytes]], host: str | None
                          ) -> tuple[str, list[tuple[bytes, bytes]], list[str]]:
        """(a refusal or "", the fields with HOST's placeholders replaced, the secrets
        used). HOST None: a flow that can carry no secret (plain HTTP)."""
        if not self.items:
            return "", list(fields), []
        where = "over plain HTTP" if host is None else f"to {host}"
        if found := self.placeholders_in(target):
            return f"placeholder of secret {', '.join(found)} in the request target", [], []
        bound = {s.placeholder.encode(): s for s in (self.bound_to(host) if host else ())}
        out, used = [], []
        for name, value in fields:
            if found := self.placeholders_in(name):
                return f"placeholder of secret {', '.join(found)} in a header name", [], []
            tokens = value.split(b" ")
            basics = {i for i in range(1, len(tokens)) if tokens[i - 1].lower() == b"basic"}
            if not self.placeholders_in(value) and not any(
                    self.placeholders_in(_unbasic(tokens[i])) for i in basics):
                out.append((name, value))
                continue
            for i, token in enumerate(tokens):
                basic = i in basics and bool(self.placeholders_in(_unbasic(token)))
                if not basic and not self.placeholders_in(token):
                    continue
                replaced = _basic(token, bound) if basic else bound.get(token)
                if replaced is None:
                    found = self.placeholders_in(_unbasic(token) if basic else token)
                    foreign = [n for n in found if n not in {s.name for s in bound.values()}]
                    why = f"sent {where}" if foreign else "not a whole token of a header value"
                    return f"placeholder of secret {', '.join(foreign or found)} {why}", [], []
                if isinstance(replaced, Secret):
                    tokens[i], names = replaced.value.encode(), [replaced.name]
                else:
                    tokens[i], names = replaced
                used += names
            out.append((name, b" ".join(tokens)))
        return "", out, sorted(set(used))

    def scrubber(self, host: str) -> "Scrubber":
        """What turns HOST's secret values back into placeholders on the way to the box."""
        return Scrubber({s.value.encode(): s.placeholder.encode() for s in self.bound_to(host) if s.value})

    @classmethod
    def from_json(cls, data: dict[str, dict[str, object]] | None) -> "SecretBook":
        out = []
        for name, s in sorted((data or {}).items()):
            hosts = s.get("hosts") or ()
            assert isinstance(hosts, (list, tuple))
            out.append(Secret(name, str(s["placeholder"]), str(s["value"]), tuple(map(str, hosts))))
        return cls(out)


def _unbasic(token: bytes) -> bytes:
    try:
        return base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        return b""


def _basic(token: bytes, bound: dict[bytes, Secret]) -> tuple[bytes, list[str]] | None:
    """`Basic` credentials whose user or password is exactly a placeholder, re-encoded
    with the value; None when the placeholder is elsewhere or not HOST's."""
    user, sep, password = _unbasic(token).partition(b":")
    if not sep:
        return None
    names = []
    for part in (user, password):
        if part in bound:
            names.append(bound[part].name)
    if not names or any(p not in bound and any(ph in p for ph in bound) for p in (user, password)):
        return None
    user = bound[user].value.encode() if user in bound else user
    password = bound[password].value.encode() if password in bound else password
    return base64.b64encode(user + b":" + password), names


class Searchable(Protocol):
    """A bytearray, or the proxy's ScanBuffer (the same find, faster)."""

    def find(self, needle: bytes, start: int, end: int, /) -> int: ...


class Scrubber:
    """Replaces secret values by their placeholders in a stream, across chunk edges: it
    holds back only a tail that could be the start of a value, so a stream (SSE) is
    delayed by nothing unless its last bytes begin a value."""

    def __init__(self, replacements: dict[bytes, bytes]) -> None:
        self.replacements = replacements
        self._held = b""

    def __bool__(self) -> bool:
        return bool(self.replacements)

    def feed(self, data: bytes) -> bytes:
        if self._held:
            data = self._held + data
        for value, placeholder in self.replacements.items():
            data = data.replace(value, placeholder)
        keep = 0
        for value in self.replacements:
            for n in range(min(len(value) - 1, len(data)), keep, -1):
                if data.endswith(value[:n]):
                    keep = n
                    break
        self._held = data[len(data) - keep:] if keep else b""
        return data[:len(data) - keep] if keep else data

    def passes(self, buffer: Searchable, size: int) -> bool:
        """Whether BUFFER[:SIZE] goes out as it is: nothing held from before, no value in
        it, and no value's first byte among its last bytes (then feed() decides)."""
        if self._held:
            return False
        for value in self.replacements:
            if buffer.find(value, 0, size) >= 0 or buffer.find(value[:1], max(0, size - len(value) + 1), size) >= 0:
                return False
        return True

    def flush(self) -> bytes:
        out, self._held = self._held, b""
        return out

    def line(self, data: bytes) -> bytes:
        """One whole value (a header's): replaced at once."""
        for value, placeholder in self.replacements.items():
            data = data.replace(value, placeholder)
        return data
