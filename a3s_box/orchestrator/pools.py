"""Warm pools: keep `min_ready` booted, idle boxes of a template so that an agent gets
a sandbox in milliseconds.

`reconcile_pool` is pure: from the pool's spec, its members and the time it returns the
steps to take. `PoolKeeper` carries them out, and `acquire`/`release` hand members
over. Members are ordinary box rows with `pool` set; a leased member has `lease` set
and is never touched by the pool again, except to end it when its lifetime runs out.
"""
from __future__ import annotations

import os
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from a3s_box.errors import BoxError
from a3s_box.orchestrator.launch import launch_from_json
from a3s_box.orchestrator.lifecycle import BoxRuntime, ImageBackend
from a3s_box.orchestrator.state import LIVE_STATUSES, BoxRow, PoolRow

DEFAULT_IDLE_TIMEOUT = 300.0  # surplus idle members beyond min_ready are reclaimed after this
READY_TIMEOUT = 120.0


class PoolError(BoxError):
    def __init__(self, pool: str, message: str) -> None:
        self.pool = pool
        super().__init__(f"pool {pool}: {message}")


@dataclass(frozen=True)
class Member:
    id: str
    status: str  # running | creating | exited | stopped | failed
    spec_hash: str
    leased: bool
    since: float  # idle: since when; leased: lease start
    active: float = 0.0  # leased: the last exec, file transfer or network flow (or the lease)


@dataclass(frozen=True)
class PoolSpec:
    min_ready: int
    max: int
    update: str  # recreate | on_replenish
    idle_timeout: float | None
    spec_hash: str  # the template box's current spec hash
    max_duration: float | None = None  # lifetime of a leased member
    lease_idle_timeout: float | None = None


@dataclass(frozen=True)
class PoolStep:
    op: str  # "create" | "delete"
    member: str | None
    reason: str


def reconcile_pool(spec: PoolSpec, members: list[Member], now: float,
                   restarts_leased: bool = False) -> list[PoolStep]:
    """RESTARTS_LEASED: a reconcile loop boots leased members whose VM ended again (they
    are their holder's), so they are kept; without one, they are deleted."""
    steps: list[PoolStep] = []
    alive: list[Member] = []
    for m in sorted(members, key=lambda m: (m.since, m.id)):
        if m.status not in ("running", "creating") and m.leased and restarts_leased:
            alive.append(m)
        elif m.status not in ("running", "creating"):
            steps.append(PoolStep("delete", m.id, f"VM {m.status}"))
        elif m.leased and spec.max_duration is not None and now - m.since > spec.max_duration:
            steps.append(PoolStep("delete", m.id, "lease exceeded lifetime.max_duration"))
        elif (m.leased and spec.lease_idle_timeout is not None
              and now - max(m.active, m.since) > spec.lease_idle_timeout):
            steps.append(PoolStep("delete", m.id, "lease idle beyond lifetime.idle_timeout"))
        elif not m.leased and m.spec_hash != spec.spec_hash and spec.update == "recreate":
            steps.append(PoolStep("delete", m.id, "template changed (update: recreate)"))
        else:
            alive.append(m)
    idle = [m for m in alive if not m.leased]
    surplus = len(idle) - spec.min_ready
    timeout = spec.idle_timeout if spec.idle_timeout is not None else DEFAULT_IDLE_TIMEOUT
    for m in idle:  # oldest first
        if surplus <= 0:
            break
        if m.status == "running" and now - m.since >= timeout:
            steps.append(PoolStep("delete", m.id, f"idle beyond min_ready for {timeout:g}s"))
            alive.remove(m)
            surplus -= 1
    idle_now = sum(1 for m in alive if not m.leased)
    want = min(spec.min_ready - idle_now, spec.max - len(alive))
    steps += [PoolStep("create", None, "replenish to min_ready")] * max(0, want)
    return steps


def members_of(runtime: BoxRuntime, project: str, pool: str) -> list[BoxRow]:
    return [r for r in runtime.store.boxes(project) if r.pool == pool]


STALE_CREATING = 2 * READY_TIMEOUT + 60  # a slot taken by a process that died before booting


def _as_member(runtime: BoxRuntime, row: BoxRow) -> Member:
    status = "running" if row.status in LIVE_STATUSES else row.status
    if status == "creating" and row.handle is None and time.time() - row.updated_at > STALE_CREATING:
        status = "failed"
    if status == "running":
        seen = runtime.observe(row)
        if seen is not None and seen.state.value != "running":
            status = "exited"
    try:
        active = (runtime.home.box_dir(row.id) / "activity").stat().st_mtime
    except OSError:
        active = 0.0
    return Member(row.id, status, row.spec_hash, row.lease is not None, row.updated_at, active)


def pool_spec(row: PoolRow) -> PoolSpec:
    s = row.spec
    lifetime = s.get("template", {}).get("lifetime") or {}
    return PoolSpec(
        min_ready=int(s["min_ready"]), max=int(s["max"]), update=str(s["update"]),
        idle_timeout=s.get("idle_timeout"), spec_hash=str(s["box_spec"]),
        max_duration=lifetime.get("max_duration"), lease_idle_timeout=lifetime.get("idle_timeout"),
    )


class PoolKeeper:
    """Carries out reconcile_pool's steps for one pool; boots members in parallel."""

    def __init__(self, runtime: BoxRuntime, images: ImageBackend, parallel: int | None = None) -> None:
        self.runtime = runtime
        self.images = images
        self.parallel = parallel or os.cpu_count() or 1

    def converge(self, project: str, pool: str, now: float | None = None,
                 restarts_leased: bool = False) -> list[tuple[PoolStep, str]]:
        """One pass: returns (step, "ok" or the error) for every step taken."""
        row = next((p for p in self.runtime.store.pools(project) if p.name == pool), None)
        if row is None:
            raise PoolError(pool, f"no such pool in project {project}")
        spec = pool_spec(row)
        rows = {r.id: r for r in members_of(self.runtime, project, pool)}
        steps = reconcile_pool(spec, [_as_member(self.runtime, r) for r in rows.values()],
                               time.time() if now is None else now, restarts_leased)
        results: list[tuple[PoolStep, str]] = []
        for step in [s for s in steps if s.op == "delete"]:
            results.append((step, self._guard(lambda: self.runtime.destroy(rows[step.member or ""], self.images))))
        creates = [s for s in steps if s.op == "create"]
        if creates:
            with ThreadPoolExecutor(max_workers=self.parallel) as ex:
                outs = list(ex.map(lambda s: self._guard(lambda: self._create(project, pool, row)), creates))
            results += list(zip(creates, outs))
        return results

    def watching(self, project: str, pool: str) -> bool:
        """Whether a leased member has a lifetime to enforce (the filler then stays)."""
        row = next((p for p in self.runtime.store.pools(project) if p.name == pool), None)
        if row is None:
            return False
        spec = pool_spec(row)
        if spec.max_duration is None and spec.lease_idle_timeout is None:
            return False
        return any(r.lease is not None for r in members_of(self.runtime, project, pool))

    def _guard(self, fn: Any) -> str:
        try:
            fn()
        except BoxError as e:
            return str(e)
        return "ok"

    def _create(self, project: str, pool: str, row: PoolRow) -> BoxRow | None:
        """A member to replenish with, its slot taken in one transaction (an acquirer
        booting one on demand counts too: never past max); None when the pool is there."""
        store = self.runtime.store
        with store.transaction():
            if len(members_of(self.runtime, project, pool)) >= int(row.spec["max"]):
                return None
            member = new_member(self.runtime, project, pool, row)
            store.put_box(member)
        return self.create_member(project, pool, member)

    def create_member(self, project: str, pool: str, member: BoxRow) -> BoxRow:
        """Boot MEMBER (a row from new_member, maybe leased already) from the template."""
        row = next((p for p in self.runtime.store.pools(project) if p.name == pool), None)
        if row is None:
            self.runtime.store.delete_box(member.id)
            raise PoolError(pool, "was deleted before its member booted")
        tmpl = row.spec["template"]
        rundir = self.runtime.home.box_dir(member.id)
        launch = launch_from_json({**tmpl["launch"], "box_id": member.id, "rundir": str(rundir),
                                   "disk": str(rundir / "disk.qcow2"),
                                   "park": bool(row.spec.get("park")) and member.lease is None})
        try:
            record = self.images_get(tmpl["image"])
        except BoxError:
            self.runtime.store.delete_box(member.id)
            raise
        made = self.runtime.create(member, launch, self.images, record, READY_TIMEOUT)
        if not any(p.name == pool for p in self.runtime.store.pools(project)):
            # the pool was deleted while this member booted: it must not outlive it
            self.runtime.destroy(made, self.images)
            raise PoolError(pool, "was deleted while a member booted; the member is gone too")
        return made

    def images_get(self, digest: str) -> Any:
        record = self.images.get(digest)  # type: ignore[attr-defined]
        if record is None:
            raise BoxError(f"image {digest} of the pool template is no longer in the store")
        return record


# --- handing members over -----------------------------------------------------


def new_member(runtime: BoxRuntime, project: str, pool: str, row: PoolRow) -> BoxRow:
    """A fresh member's row (`creating`, not stored yet) from the pool's template."""
    tmpl = row.spec["template"]
    name = f"{pool}-{secrets.token_hex(3)}"
    return BoxRow(id=f"{project}.{name}", project=project, name=name, spec_hash=row.spec["box_spec"],
                  spec=tmpl["spec"], image=tmpl["image"], driver=tmpl["driver"], handle=None,
                  status="creating", pool=pool)


class PoolExhausted(PoolError):
    """No member could be handed over in the time given (the API's 409)."""


class _Line:
    """Acquirers of one pool in this process, served in the order they came: only the
    first still waiting may take a member or reserve a boot. (Acquirers in other
    processes take their chance between polls.)"""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.tickets: list[int] = []
        self.next = 0


_lines: dict[tuple[str, str, str], _Line] = {}
_lines_lock = threading.Lock()
POLL = 0.1  # seconds between looks at the store while waiting (members come from elsewhere)


def _line(home: Path, project: str, pool: str) -> _Line:
    with _lines_lock:
        return _lines.setdefault((str(home), project, pool), _Line())


def acquire(runtime: BoxRuntime, project: str, pool: str, name: str | None = None,
            refill: bool = True, wait: float = 0.0, images: ImageBackend | None = None,
            owner: str | None = None) -> BoxRow:
    """Lease the oldest ready member (a database update, no boot); a background filler
    boots a replacement. With WAIT (seconds) and IMAGES, an acquirer that finds no ready
    member boots one for itself while the pool is below `max`, or waits for one, served
    in order; PoolExhausted once WAIT runs out. OWNER: the API token the box is leased for."""
    store = runtime.store
    prow = next((p for p in store.pools(project) if p.name == pool), None)
    if prow is None:
        raise PoolError(pool, f"no such pool in project {project} (see `box pool ls`)")
    if name is not None and store.box(f"{project}.{name}") is not None:
        raise PoolError(pool, f"a box named {name} already exists in project {project}")
    grow = wait > 0 and images is not None
    deadline = time.monotonic() + wait
    line = _line(runtime.home.root, project, pool)
    with line.cond:
        ticket = line.next
        line.next += 1
        line.tickets.append(ticket)
    reserved: BoxRow | None = None
    try:
        while True:
            with line.cond:
                if line.tickets[0] == ticket:
                    leased, reserved = _take(runtime, project, pool, name, grow, owner)
                    if leased is not None or reserved is not None:
                        break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _exhausted(runtime, project, pool, prow, wait)
                line.cond.wait(min(POLL, left))
    finally:
        with line.cond:
            line.tickets.remove(ticket)
            line.cond.notify_all()
    if reserved is not None:
        assert images is not None
        try:
            leased = PoolKeeper(runtime, images).create_member(project, pool, reserved)
        except BoxError as e:
            raise PoolError(pool, f"no ready box, and the one booted on demand failed: {e}") from e
    assert leased is not None
    if refill:
        spawn_filler(runtime.home.root, project, pool)
    if leased.status == "parked":
        try:
            leased = runtime.unpark(leased, READY_TIMEOUT)
        except BoxError as e:
            runtime.destroy(leased, None)  # never hand over a member that did not come up
            raise PoolError(pool, f"the parked box {leased.name} did not resume: {e}") from e
    return leased


def _take(runtime: BoxRuntime, project: str, pool: str, name: str | None,
          grow: bool, owner: str | None = None) -> tuple[BoxRow | None, BoxRow | None]:
    """(a ready member, now leased) or, with GROW and the pool below max, (None, a
    `creating` row leased to the caller that holds the pool's slot while it boots)."""
    store = runtime.store
    with store.transaction():
        prow = next((p for p in store.pools(project) if p.name == pool), None)
        if prow is None:
            raise PoolError(pool, f"was deleted (project {project})")
        current = prow.spec["box_spec"]
        members = members_of(runtime, project, pool)
        ready = [r for r in members if r.lease is None and r.status in LIVE_STATUSES and r.spec_hash == current]
        if ready:
            chosen = min(ready, key=lambda r: (r.updated_at, r.id))
            leased = replace(chosen, lease=name or chosen.name, name=name or chosen.name, owner=owner)
            store.put_box(leased)
            return leased, None
        if grow and len(members) < int(prow.spec["max"]):
            member = new_member(runtime, project, pool, prow)
            leased = replace(member, lease=name or member.name, name=name or member.name, owner=owner)
            store.put_box(leased)
            return None, leased
    return None, None


def _exhausted(runtime: BoxRuntime, project: str, pool: str, prow: PoolRow, wait: float) -> PoolExhausted:
    members = members_of(runtime, project, pool)
    leased = sum(1 for m in members if m.lease is not None)
    if wait > 0:
        return PoolExhausted(pool, f"no ready box after waiting {wait:g}s ({leased} of max "
                                   f"{prow.spec['max']} leased, {len(members) - leased} booting or idle)")
    return PoolExhausted(pool, f"no ready box (0 of min_ready {prow.spec['min_ready']}, "
                               f"{len(members)} of max {prow.spec['max']} in use or booting); "
                               "wait for one (--wait SECONDS) or raise min_ready")


def release(runtime: BoxRuntime, images: ImageBackend, row: BoxRow, keep: bool = False) -> None:
    """Destroy a leased box (default: a used sandbox is never handed to another agent),
    or with keep=True return it to its pool as idle."""
    if row.pool is None or row.lease is None:
        raise BoxError(f"box {row.name}: not a leased pool box")
    if keep:
        runtime.store.put_box(replace(row, lease=None, owner=None))
    else:
        runtime.destroy(row, images)
    spawn_filler(runtime.home.root, row.project, row.pool)


_fillers: list[int] = []
_fillers_lock = threading.Lock()


def spawn_filler(home: Path, project: str, pool: str) -> None:
    """Start a detached `fill` for the pool; it exits at once if one already runs.

    Spawning a Python process costs ~15 ms here (exec), too much for `acquire`'s hot
    path, so it happens on a (non-daemon, so never lost at exit) thread. posix_spawn, no
    Popen object: a long-lived API user reaps its fillers on later calls. Not while the
    reconcile loop of `box serve` runs for this home: it is woken instead."""
    from a3s_box.orchestrator.wakeup import wake_loop

    if wake_loop(home):
        return
    threading.Thread(target=_spawn_filler, args=(home, project, pool),
                     name=f"a3s-fill-{pool}").start()


def _spawn_filler(home: Path, project: str, pool: str) -> None:
    with _fillers_lock:
        for pid in list(_fillers):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    _fillers.remove(pid)
            except ChildProcessError:
                _fillers.remove(pid)
    devnull = [(os.POSIX_SPAWN_OPEN, fd, "/dev/null", os.O_RDWR, 0) for fd in (0, 1, 2)]
    pid = os.posix_spawn(
        sys.executable,
        [sys.executable, "-m", "a3s_box.orchestrator.pool_filler", str(home), project, pool],
        os.environ, file_actions=devnull, setsid=True,
    )
    with _fillers_lock:
        _fillers.append(pid)


@contextmanager
def pool_lock(home: Path, project: str, pool: str, wait: bool) -> Iterator[bool]:
    """Serialises fillers of one pool; yields False when another holds it (no wait)."""
    import fcntl

    path = home / "pools" / f"{project}.{pool}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
