"""What a box's supervisor and the host-wide egress daemon say to each other (sans-IO).

The socket: HOME/run/egress-v2.sock (root's, 0600, in root's 0700 HOME/run), AF_UNIX
SOCK_SEQPACKET: each message is one packet of UTF-8 JSON, at most MAX_MESSAGE bytes,
some carrying descriptors (SCM_RIGHTS). One connection per box, open for the box's life:
the daemon serves the box while it is open and ends everything of the box when it closes.

    supervisor -> daemon   {"v": 2, "op": "register", "box_id": str, "policy": {...},
                            "secrets": {NAME: {placeholder, value, hosts}}, "logging": {...},
                            "published": [INNER_PORT, ...], "ca": {"cert": PEM, "key": PEM} | null}
                           descriptors, in this order: the TCP listener and the UDP socket of
                           the box's namespace, the box's network folder, RUNDIR/activity,
                           then one listening socket on the host per entry of "published"
    daemon -> supervisor   {"ok": true, "pid": DAEMON_PID} | {"ok": false, "error": str}
    daemon -> supervisor   {"op": "connect", "id": N, "port": INNER_PORT}
                           (a host connection arrived on a published port)
    supervisor -> daemon   {"op": "connected", "id": N} with one descriptor: a TCP socket of the
                           box's namespace connected to 127.0.0.1:INNER_PORT
                           | {"op": "connected", "id": N, "error": str}
    supervisor -> daemon   {"op": "secrets", "secrets": {NAME: {placeholder, value, hosts}}}
                           (the box's secrets from now on: a pod's come container by container)
    daemon -> supervisor   {"op": "secrets", "ok": true} once they apply

Versioned by the socket's name: a release whose protocol differs uses another name and
so another daemon, and the one an older release started serves its boxes until they end.
Decoding never raises anything but WireError on what a peer sent.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSION = 2  # 2: the secrets update
SOCKET_NAME = f"egress-v{VERSION}.sock"
LOCK_NAME = "egress.lock"  # one starter at a time
LOG_NAME = "egress-daemon.log"  # the daemon's own errors (its stderr)
MAX_MESSAGE = 1 << 20  # a registration: policy and secrets; more is refused
MAX_REPLY = 4096  # a daemon's message
MAX_PUBLISHED = 64
FIXED_FDS = ("tcp listener", "udp socket", "network folder", "activity file")
MAX_FDS = len(FIXED_FDS) + MAX_PUBLISHED
# The daemon's uid and gid: the first id past the range jail/ids.py gives boxes, held by
# no other process on the host (tests/network/test_egress_wire.py checks the ranges).
DAEMON_UID = 1_611_000_000


def daemon_uid() -> int:
    """Whose the daemon is: DAEMON_UID when root starts it; a user without root cannot
    give it another uid, so it is that user's (and serves only that user's boxes)."""
    return DAEMON_UID if os.geteuid() == 0 else os.geteuid()


class WireError(ValueError):
    """A message that is not one this protocol has: its sender is dropped."""


def run_dir(home: Path) -> Path:
    return home / "run"


def socket_path(home: Path) -> Path:
    return run_dir(home) / SOCKET_NAME


def encode(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, sort_keys=True, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise WireError(f"a message of {len(data)} bytes (at most {MAX_MESSAGE})")
    return data


def decode(data: bytes, truncated: bool = False, limit: int = MAX_MESSAGE) -> dict[str, Any]:
    """One packet as a JSON object. TRUNCATED: the packet was longer than was read."""
    if truncated or len(data) > limit:
        raise WireError(f"a message longer than {limit} bytes")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WireError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise WireError("not a JSON object")
    return value


@dataclass(frozen=True)
class Registration:
    box_id: str
    policy: dict[str, Any]
    secrets: dict[str, Any]
    logging: dict[str, Any] | None
    published: tuple[int, ...]
    ca_cert: bytes | None
    ca_key: bytes | None

    @property
    def fd_count(self) -> int:
        return len(FIXED_FDS) + len(self.published)

    def message(self) -> dict[str, Any]:
        ca = None if self.ca_cert is None or self.ca_key is None else \
            {"cert": self.ca_cert.decode("ascii"), "key": self.ca_key.decode("ascii")}
        return {"v": VERSION, "op": "register", "box_id": self.box_id, "policy": self.policy,
                "secrets": self.secrets, "logging": self.logging, "published": list(self.published), "ca": ca}


def _port(value: object) -> int:
    if type(value) is not int or not 0 < value < 65536:
        raise WireError(f"not a port: {value!r}")
    return value


def parse_registration(message: dict[str, Any], fds: int | None = None) -> Registration:
    """The registration MESSAGE, which came with FDS descriptors (their number must be
    exactly what it says: Registration.fd_count); None: the caller holds them and asks
    fd_count how many there are."""
    if message.get("v") != VERSION or message.get("op") != "register":
        raise WireError(f"not a version {VERSION} registration")
    box_id, policy, secrets = message.get("box_id"), message.get("policy"), message.get("secrets") or {}
    logging, published, ca = message.get("logging"), message.get("published"), message.get("ca")
    if not isinstance(box_id, str) or not box_id or len(box_id) > 256:
        raise WireError("box_id: not a name")
    if not isinstance(policy, dict):
        raise WireError("policy: not an object")
    _secrets_object(secrets)
    if logging is not None and not isinstance(logging, dict):
        raise WireError("logging: not an object")
    if not isinstance(published, list) or len(published) > MAX_PUBLISHED:
        raise WireError(f"published: not a list of at most {MAX_PUBLISHED} ports")
    ports = tuple(_port(p) for p in published)
    cert = key = None
    if ca is not None:
        if not isinstance(ca, dict) or not isinstance(ca.get("cert"), str) or not isinstance(ca.get("key"), str):
            raise WireError("ca: not an object with cert and key")
        try:
            cert, key = ca["cert"].encode("ascii"), ca["key"].encode("ascii")
        except UnicodeEncodeError:
            raise WireError("ca: not PEM") from None
    reg = Registration(box_id, policy, secrets, logging, ports, cert, key)
    if fds is not None and fds != reg.fd_count:
        raise WireError(f"{fds} descriptors with a registration that needs {reg.fd_count}")
    return reg


def ok(pid: int) -> dict[str, Any]:
    return {"ok": True, "pid": pid}


def refused(error: str) -> dict[str, Any]:
    return {"ok": False, "error": error[:2000]}


def _secrets_object(secrets: object) -> dict[str, Any]:
    if not isinstance(secrets, dict) or not all(isinstance(v, dict) for v in secrets.values()):
        raise WireError("secrets: not an object of objects")
    return secrets


def secrets_update(secrets: dict[str, Any]) -> dict[str, Any]:
    """The box's secrets from now on (a pod's become known container by container)."""
    return {"op": "secrets", "secrets": secrets}


def parse_secrets_update(message: dict[str, Any], fds: int) -> dict[str, Any]:
    if message.get("op") != "secrets" or fds:
        raise WireError("not a secrets update")
    return _secrets_object(message.get("secrets"))


def secrets_applied() -> dict[str, Any]:
    return {"op": "secrets", "ok": True}


def connect_request(request_id: int, port: int) -> dict[str, Any]:
    return {"op": "connect", "id": request_id, "port": port}


def parse_connect_request(message: dict[str, Any]) -> tuple[int, int]:
    """(id, port) of a daemon's request for a socket into the box's namespace."""
    request_id = message.get("id")
    if message.get("op") != "connect" or type(request_id) is not int:
        raise WireError("not a connect request")
    return request_id, _port(message.get("port"))


def connected(request_id: int, error: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"op": "connected", "id": request_id}
    if error is not None:
        out["error"] = error[:500]
    return out


def parse_connected(message: dict[str, Any], fds: int) -> tuple[int, str | None]:
    """(id, error or None) of a supervisor's answer; an answer without an error comes
    with exactly one descriptor."""
    request_id, error = message.get("id"), message.get("error")
    if message.get("op") != "connected" or type(request_id) is not int:
        raise WireError("not a connect answer")
    if error is not None and not isinstance(error, str):
        raise WireError("error: not a string")
    if fds != (0 if error is not None else 1):
        raise WireError(f"{fds} descriptors with a connect answer")
    return request_id, error
