"""Who may call what on `box serve`: the admin token (HOME/api-token; on the unix socket,
whoever can open it) may do everything; a sandbox token only what an agent's sandbox needs.

Threat: a sandbox token is held by code nobody vetted: an agent (through MCP), a tenant
(through the E2B-compatible API), a service's customer. Whoever may apply a Boxfile is
root on the host (a volume binds any host folder into a box), so a sandbox token never
reaches apply or plan, images, events, metrics or tokens. It acquires only from the
pools it was issued for, and uses (exec, files, stop, start, release, delete) only the
boxes leased for it: another's box answers 404 like a box that does not exist, and the
listing shows only its own. Fails closed: a route is admin-only unless SANDBOX_ROUTES
names it, so a new endpoint is never open to sandbox tokens by accident. Only a token's
sha256 digest is stored (the state store, 0600); tokens are compared by digest.
"""
from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from a3s_box.api.auth import check, token_id
from a3s_box.api.problems import Forbidden
from a3s_box.errors import BoxError
from a3s_box.orchestrator.state import BoxRow, StateStore, TokenRow

ADMIN, SANDBOX = "admin", "sandbox"
SANDBOX_PREFIX = "a3s_sb_"  # tells a sandbox token from the admin token at a glance (and to scanners)

# (method, route path); "WS" for WebSocket routes. Everything else is admin-only.
SANDBOX_ROUTES = frozenset({
    ("GET", "/healthz"),
    ("GET", "/v1/boxes"), ("GET", "/v1/boxes/{name}"), ("DELETE", "/v1/boxes/{name}"),
    ("POST", "/v1/boxes/{name}/stop"), ("POST", "/v1/boxes/{name}/start"),
    ("POST", "/v1/boxes/{name}/exec"), ("WS", "/v1/boxes/{name}/exec/ws"),
    ("GET", "/v1/boxes/{name}/files"), ("PUT", "/v1/boxes/{name}/files"), ("DELETE", "/v1/boxes/{name}/files"),
    ("GET", "/v1/boxes/{name}/files/list"), ("GET", "/v1/boxes/{name}/files/tar"),
    ("PUT", "/v1/boxes/{name}/files/tar"),
    ("GET", "/v1/pools"), ("POST", "/v1/pools/{pool}/acquire"), ("POST", "/v1/boxes/{name}/release"),
})


@dataclass(frozen=True)
class Caller:
    id: str  # the token's id (what the audit log names); "local" on the unix socket
    scope: str  # ADMIN | SANDBOX
    templates: frozenset[str] = field(default_factory=frozenset)  # the pools a sandbox token may acquire from

    @property
    def admin(self) -> bool:
        return self.scope == ADMIN

    def may_use_pool(self, project: str, pool: str) -> bool:
        return self.admin or pool in self.templates or f"{project}.{pool}" in self.templates

    def may_use_box(self, row: BoxRow) -> bool:
        return self.admin or (row.owner is not None and row.owner == self.id)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def mint_sandbox_token(templates: list[str], name: str = "") -> tuple[str, TokenRow]:
    """A new sandbox token (shown once) and the row that keeps its digest."""
    if not templates:
        raise BoxError("a sandbox token needs at least one template (a pool it may acquire from)")
    token = SANDBOX_PREFIX + secrets.token_urlsafe(32)
    return token, TokenRow(id=token_id(token), digest=digest(token), scope=SANDBOX,
                           templates=tuple(dict.fromkeys(templates)), name=name, created_at=time.time())


class TokenBook:
    """The server's view of the tokens: the admin token it was started with, the sandbox
    tokens in the state store (read on every request: a revoke acts at once)."""

    def __init__(self, home: Path, admin_token: str | None) -> None:
        self.home, self.admin_token = home, admin_token
        self._store: StateStore | None = None
        self._lock = threading.Lock()

    def caller(self, authorization: str | None) -> Caller | None:
        """Who sent a request with this Authorization header (None: nobody we know)."""
        if self.admin_token is None:
            return Caller("local", ADMIN)  # the unix socket: its mode is the guard
        if check(authorization, self.admin_token):
            return Caller(token_id(self.admin_token), ADMIN)
        if not authorization or not authorization.startswith("Bearer "):
            return None
        given = authorization[7:].strip()
        if not given.startswith(SANDBOX_PREFIX):
            return None
        with self._lock:
            row = self.store().token_by_digest(digest(given))
        if row is None or row.scope != SANDBOX:
            return None
        return Caller(row.id, SANDBOX, frozenset(row.templates))

    def store(self) -> StateStore:
        """The state store this server reads tokens and owners from (opened once)."""
        if self._store is None:
            self._store = StateStore(self.home / "state.db")
        return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def check_route(caller: Caller, method: str, path: str) -> None:
    """Forbidden unless CALLER's scope may call METHOD PATH (a route's path template)."""
    if caller.admin or (method, path) in SANDBOX_ROUTES:
        return
    raise Forbidden(f"a sandbox token may not call {method} {path}; it is for the boxes it acquires "
                    "(an admin token may)")


def owned_box(caller: Caller, store: StateStore, name: str) -> None:
    """A sandbox caller's box by NAME (id, or a unique name) must be leased for it; any other
    answers as a box that does not exist."""
    if caller.admin:
        return
    row = store.box(name)  # resolved as Host.find does, so the route acts on this very row
    if row is None:
        named = [r for r in store.boxes() if r.name == name]
        row = named[0] if len(named) == 1 else None  # several: 404 too, naming none of them
    if row is None or not caller.may_use_box(row):
        raise BoxError(f"box {name}: no such box (see `box ps`)")


def usable_pool(caller: Caller, pool: str) -> None:
    if caller.admin or pool in caller.templates or any(t.endswith(f".{pool}") for t in caller.templates):
        return
    raise Forbidden(f"this token may not acquire from pool {pool} (it may from: {', '.join(sorted(caller.templates))})")
