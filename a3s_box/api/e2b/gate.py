"""Who an envd call is for: the sandbox its `E2b-Sandbox-Id` header names, admitted only
with that sandbox's own access token (`X-Access-Token`), and the guest connection of its
box. Every envd service (process, filesystem, /files) and the port proxy pass here first.

Threat: the caller holds some sandbox's ID (IDs are not secret: they appear in URLs and
logs) and maybe another sandbox's token. Fails closed: no ID, an unknown ID, no token or
another sandbox's token are refused (UNAUTHENTICATED; an unknown ID: not found, as E2B
says) before any box is touched;
the token is compared in constant time with the HMAC it must be (keys.py)."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from a3s_box import audit
from a3s_box.api.channels import Channels
from a3s_box.api.e2b import keys
from a3s_box.errors import BoxError, GuestError
from a3s_box.files.errors import FilesError
from a3s_box.guest.client import GuestClient
from a3s_box.orchestrator.host import Host
from a3s_box.orchestrator.state import BoxRow, SandboxRow


class EnvdRefused(BoxError):
    """An envd call without the sandbox's token, or for no sandbox we know (401)."""


class SandboxUnavailable(BoxError):
    """The sandbox exists but its box does not serve (paused, stopped): 502, as E2B's proxy."""


@dataclass(frozen=True)
class Target:
    rec: SandboxRow
    row: BoxRow
    client: GuestClient


class Gate:
    def __init__(self, home: Path, channels: Channels, key: keys.ServerKey) -> None:
        self.home, self.channels, self.key = home, channels, key

    def open(self, headers: Mapping[str, str]) -> Target:
        """The sandbox HEADERS name and a connected client of its box (blocking: call it
        in a worker thread)."""
        sid = headers.get("e2b-sandbox-id") or ""
        token = headers.get("x-access-token")
        if not sid or not token:
            raise EnvdRefused("envd: E2b-Sandbox-Id and X-Access-Token are required")
        with audit.acting_as(f"sandbox:{sid}"), Host(self.home) as h:
            rec, row = find_sandbox(h, sid)
            if not keys.matches(token, keys.envd_token(self.key.value, rec)):
                raise EnvdRefused(f"sandbox {sid}: the access token is not this sandbox's")
            if row.status != "running":
                raise SandboxUnavailable(f"sandbox {sid}: is {row.status}")
            try:
                return Target(rec, row, self.channels.client(h, row))
            except GuestError as e:
                raise SandboxUnavailable(f"sandbox {sid}: {e}") from e


def find_sandbox(h: Host, sandbox_id: str) -> tuple[SandboxRow, BoxRow]:
    """The sandbox and its box; SandboxUnavailable (not found) as E2B's proxy answers:
    IDs are not secret, tokens are."""
    rec = h.store.sandbox(sandbox_id)
    row = h.store.box(rec.box_id) if rec is not None else None
    if rec is None or row is None:
        raise SandboxUnavailable(f"sandbox {sandbox_id}: not found")
    return rec, row


def connect_error(e: BoxError) -> ConnectError:
    """A BoxError as the Connect error envd would answer with."""
    msg = str(e)
    if isinstance(e, EnvdRefused):
        return ConnectError(Code.UNAUTHENTICATED, msg)
    if isinstance(e, SandboxUnavailable):
        return ConnectError(Code.UNAVAILABLE, msg)
    if isinstance(e, FilesError):
        for needle, code in _ERRNO_CODES:
            if needle in msg:
                return ConnectError(code, msg)
        return ConnectError(Code.INVALID_ARGUMENT, msg)
    if isinstance(e, GuestError):
        return ConnectError(Code.UNAVAILABLE, msg)
    return ConnectError(Code.INVALID_ARGUMENT, msg)


_ERRNO_CODES: tuple[tuple[str, Code], ...] = (
    ("No such file or directory", Code.NOT_FOUND),
    ("File exists", Code.ALREADY_EXISTS),
    ("already exists", Code.ALREADY_EXISTS),
    ("Permission denied", Code.PERMISSION_DENIED),
    ("Operation not permitted", Code.PERMISSION_DENIED),
    ("Read-only file system", Code.PERMISSION_DENIED),
    ("No space left", Code.RESOURCE_EXHAUSTED),
)


def http_status(e: BoxError) -> int:
    """The HTTP status envd's /files answers with for E (the SDK maps them to exceptions)."""
    code = connect_error(e).code
    return {Code.UNAUTHENTICATED: 401, Code.UNAVAILABLE: 502, Code.NOT_FOUND: 404,
            Code.PERMISSION_DENIED: 403, Code.ALREADY_EXISTS: 409, Code.RESOURCE_EXHAUSTED: 507}.get(code, 400)


Opener = Callable[[Mapping[str, str]], Target]
