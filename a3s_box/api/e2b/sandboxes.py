"""E2B's sandbox lifecycle over a3s-box boxes: what each REST call of the control API does
to the host. A sandbox is a box; its E2B record (state store, SandboxRow) keeps what E2B
has and a box has not: template, metadata, environment, timeout, token nonce.

Who may do what is access.py's Caller, as on the rest of the API: a sandbox token creates
only from the templates it names and sees only the sandboxes made with it."""
from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Mapping
from dataclasses import replace

from a3s_box.api.access import Caller
from a3s_box.api.e2b import keys
from a3s_box.api.e2b import models as m
from a3s_box.api.problems import Forbidden
from a3s_box.errors import BoxError
from a3s_box.orchestrator.host import Host
from a3s_box.orchestrator.state import BoxRow, SandboxRow
from a3s_box.units import parse_size

ACQUIRE_WAIT = 120.0  # seconds a create waits for a pool member (booting one on demand)
MAX_TIMEOUT = 24 * 3600  # E2B's own cap on a sandbox's lifetime per call (Pro tier)


class SandboxNotFound(BoxError):
    """No sandbox by that ID that this caller may see (404, as E2B answers)."""


def rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat().replace("+00:00", "Z")


class Sandboxes:
    """The control API's operations for one CALLER, over HOST (one request's)."""

    def __init__(self, host: Host, caller: Caller, key: bytes, domain: str | None) -> None:
        self.host, self.caller, self.key, self.domain = host, caller, key, domain

    # --- lookups ------------------------------------------------------------------
    def record(self, sandbox_id: str) -> tuple[SandboxRow, BoxRow]:
        """The sandbox and its box, if this caller may see it; SandboxNotFound otherwise
        (another token's sandbox reads as one that does not exist)."""
        rec = self.host.store.sandbox(sandbox_id)
        row = self.host.store.box(rec.box_id) if rec is not None else None
        if rec is None or row is None or not self.caller.may_use_box(row):
            raise SandboxNotFound(f"sandbox {sandbox_id}: no such sandbox")
        return rec, row

    def records(self) -> list[tuple[SandboxRow, BoxRow]]:
        out = []
        for rec in self.host.store.sandboxes():
            row = self.host.store.box(rec.box_id)
            if row is not None and self.caller.may_use_box(row):
                out.append((rec, row))
        return out

    # --- create ---------------------------------------------------------------------
    def create(self, req: m.NewSandbox) -> m.Sandbox:
        if req.secure is False:
            raise BoxError("sandbox: a3s-box makes only secure sandboxes (envd calls need the "
                           "sandbox's access token): drop secure=False")
        if req.network is not None and (req.network.allow_out or req.network.deny_out):
            raise BoxError(f"template {req.template_id}: a sandbox's network policy is its Boxfile's "
                           "(network: of the box or pool); allowOut/denyOut are not taken from the SDK")
        if req.volume_mounts:
            raise BoxError(f"template {req.template_id}: volumes are declared in the Boxfile, not by the SDK")
        timeout = min(req.timeout, MAX_TIMEOUT)
        row = self._start(req.template_id, req.allow_internet_access)
        now = time.time()
        rec = SandboxRow(box_id=row.id, sandbox_id=row.name, template=req.template_id, metadata=dict(req.metadata),
                         env=dict(req.env_vars), nonce=secrets.token_hex(16),
                         public=req.network is None or req.network.allow_public_traffic,
                         started_at=now, end_at=now + timeout, on_timeout="pause" if req.auto_pause else "kill")
        try:
            self.host.store.put_sandbox(rec)
        except BaseException:
            self._end(row)
            raise
        return self.sandbox(rec)

    def _start(self, template: str, internet: bool | None = None) -> BoxRow:
        """A running box for TEMPLATE: a pool's member (acquired: warm), or a new box made
        like the declared box of that name. INTERNET (the SDK's allow_internet_access):
        must agree with the template's network, never change it."""
        project, _, name = template.rpartition(".")
        pools = [p for p in self.host.store.pools(project or None) if p.name == name]
        if pools:
            if not self.caller.may_use_pool(pools[0].project, name):
                raise Forbidden(f"template {template}: this API key may not use it (it may: "
                                f"{', '.join(sorted(self.caller.templates))})")
            _agree(template, internet, (pools[0].spec.get("template") or {}).get("spec") or {})
            owner = None if self.caller.admin else self.caller.id
            return self.host.acquire(name, pools[0].project, timeout=ACQUIRE_WAIT, owner=owner)
        boxes = [r for r in self.host.store.boxes(project or None)
                 if r.name == name and r.pool is None and r.origin is None]
        if not boxes:
            raise SandboxNotFound(f"template {template}: no such template (a pool or a declared box "
                                  "of an applied Boxfile; see `box pool ls`, `box ps`)")
        if not self.caller.admin and not self.caller.may_use_pool(boxes[0].project, name):
            raise Forbidden(f"template {template}: this API key may not use it")
        _agree(template, internet, boxes[0].spec)
        return self.host.create_like(boxes[0].id, f"{name}-{secrets.token_hex(3)}",
                                     owner=None if self.caller.admin else self.caller.id)

    def _end(self, row: BoxRow) -> None:
        if row.pool is not None and row.lease is not None:
            self.host.release(row.id)
        else:
            self.host.delete(row.id)

    # --- reads ------------------------------------------------------------------------
    def sandbox(self, rec: SandboxRow) -> m.Sandbox:
        return m.Sandbox(template_id=rec.template, sandbox_id=rec.sandbox_id,
                         envd_access_token=keys.envd_token(self.key, rec),
                         traffic_access_token=None if rec.public else keys.traffic_token(self.key, rec),
                         domain=self.domain)

    def listed(self, rec: SandboxRow, row: BoxRow, detail: bool = False) -> m.ListedSandbox:
        res = row.spec.get("resources") or {}
        listed = m.ListedSandbox(
            template_id=rec.template, sandbox_id=rec.sandbox_id, started_at=rfc3339(rec.started_at),
            end_at=rfc3339(rec.end_at), cpu_count=int(res.get("cpus") or 1), memory_mb=_mib(res.get("memory"), 512),
            disk_size_mb=_mib(res.get("disk"), 0), metadata=rec.metadata,
            state="paused" if row.status == "paused" else "running")
        if not detail:
            return listed
        return m.SandboxDetail(**listed.model_dump(), envd_access_token=keys.envd_token(self.key, rec),
                               domain=self.domain, lifecycle={"autoResume": False, "onTimeout": rec.on_timeout})

    def listing(self, metadata: Mapping[str, str] | None = None,
             states: frozenset[str] | None = None) -> list[m.ListedSandbox]:
        out = []
        for rec, row in self.records():
            item = self.listed(rec, row)
            if metadata and any(rec.metadata.get(k) != v for k, v in metadata.items()):
                continue
            if states and item.state not in states:
                continue
            out.append(item)
        return out

    def logs(self, sandbox_id: str) -> list[tuple[float, str]]:
        """The box's console log, one entry per line (stamped with the file's time: the
        console has no per-line times)."""
        _rec, row = self.record(sandbox_id)
        path = self.host.console_log(row)
        try:
            stamp = path.stat().st_mtime
            text = path.read_bytes()[-(1 << 20):].decode(errors="replace")
        except OSError:
            return []
        return [(stamp, line) for line in text.splitlines() if line.strip()]

    # --- changes ----------------------------------------------------------------------
    def kill(self, sandbox_id: str) -> None:
        _rec, row = self.record(sandbox_id)
        self._end(row)

    def set_timeout(self, sandbox_id: str, seconds: int) -> None:
        rec, _row = self.record(sandbox_id)
        self.host.store.put_sandbox(replace(rec, end_at=time.time() + min(seconds, MAX_TIMEOUT)))

    def refresh(self, sandbox_id: str, seconds: int) -> None:
        rec, _row = self.record(sandbox_id)
        self.host.store.put_sandbox(replace(rec, end_at=max(rec.end_at, time.time() + seconds)))

    def pause(self, sandbox_id: str) -> None:
        _rec, row = self.record(sandbox_id)
        if row.status == "paused":
            raise BoxError(f"sandbox {sandbox_id}: is paused already")
        self.host.pause(row.id)

    def connect(self, sandbox_id: str, seconds: int, auto_pause: bool | None = None) -> tuple[m.Sandbox, bool]:
        """Resume it if paused; its timeout becomes SECONDS from now (never shorter than
        it was). Returns the sandbox and whether it was resumed."""
        rec, row = self.record(sandbox_id)
        resumed = row.status == "paused"
        if resumed:
            self.host.resume(row.id)
        end = max(rec.end_at, time.time() + min(seconds, MAX_TIMEOUT))
        rec = replace(rec, end_at=end, on_timeout=rec.on_timeout if auto_pause is None
                      else ("pause" if auto_pause else "kill"))
        self.host.store.put_sandbox(rec)
        return self.sandbox(rec), resumed

    def fork(self, sandbox_id: str, count: int, seconds: int | None) -> list[m.Sandbox | BoxError]:
        """COUNT new sandboxes from this one's memory and disk at this instant; each fork
        succeeds or fails on its own (E2B reports one outcome per fork)."""
        rec, row = self.record(sandbox_id)
        out: list[m.Sandbox | BoxError] = []
        for _ in range(count):
            name = f"{rec.template.rpartition('.')[2]}-{secrets.token_hex(3)}"
            try:
                made = self.host.fork(row.id, name)
                if not self.caller.admin:
                    made = self.host.own(made.id, self.caller.id)
            except BoxError as e:
                out.append(e)
                continue
            now = time.time()
            new = replace(rec, box_id=made.id, sandbox_id=made.name, nonce=secrets.token_hex(16), started_at=now,
                          end_at=now + (seconds if seconds is not None else m.DEFAULT_TIMEOUT), on_timeout="kill")
            self.host.store.put_sandbox(new)
            out.append(self.sandbox(new))
        return out


def _agree(template: str, internet: bool | None, spec: dict[str, object]) -> None:
    """Refuse what the SDK asks of the network that the Boxfile does not give: a sandbox
    asked to have no internet must not get one, nor one asked to have it silently none."""
    net = spec.get("network")
    mode = str(net.get("mode", "none")) if isinstance(net, dict) else "none"
    if internet is False and mode != "none":
        raise BoxError(f"template {template}: allow_internet_access=False, but its network is {mode} "
                       "(the Boxfile's network: decides; use a template with mode none)")
    if internet is True and mode == "none":
        raise BoxError(f"template {template}: allow_internet_access=True, but it has no network "
                       "(the Boxfile's network: decides)")


def _mib(value: object, default: int) -> int:
    if value in (None, ""):
        return default
    try:
        return int(parse_size(str(value))) >> 20
    except (ValueError, BoxError):
        return default

