"""A sandbox's envd and traffic tokens: HMACs, under the server's key (HOME/e2b-key,
0600, made on first use), of the sandbox's box id and a random nonce. Nothing secret is
stored in the state store, yet `connect` can hand the same tokens out again; a sandbox
made again under the same name gets a new nonce, so old tokens die with the old box."""
from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

from a3s_box.api.auth import ensure_token
from a3s_box.orchestrator.state import SandboxRow

KEY_FILE = "e2b-key"


class ServerKey:
    """HOME's key, read (or made) on first use: an app built for the OpenAPI document
    never touches the home."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._value: bytes | None = None

    @property
    def value(self) -> bytes:
        if self._value is None:
            self._value = ensure_token(self.home / KEY_FILE).encode()
        return self._value


def _mac(key: bytes, purpose: str, row: SandboxRow) -> str:
    d = hmac.new(key, f"{purpose}\0{row.box_id}\0{row.nonce}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(d).decode().rstrip("=")


def envd_token(key: bytes, row: SandboxRow) -> str:
    return "a3s_ea_" + _mac(key, "envd", row)


def traffic_token(key: bytes, row: SandboxRow) -> str:
    return "a3s_et_" + _mac(key, "traffic", row)


def matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
