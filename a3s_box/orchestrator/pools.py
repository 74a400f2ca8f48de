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


def reconcile_pool(spec: PoolSpec, members: list[Member], now: float) -> list[PoolStep]:
    steps: list[PoolStep] = []
    alive: list[Member] = []
    for m in sorted(members, key=lambda m: (m.since, m.id)):
        if m.status not in ("running", "creating"):
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


def _as_member(runtime: BoxRuntime, row: BoxRow) -> Member:
    status = "running" if row.status in LIVE_STATUSES else row.status
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

    def converge(self, project: str, pool: str, now: float | None = None) -> list[tuple[PoolStep, str]]:
        """One pass: returns (step, "ok" or the error) for every step taken."""
        row = next((p for p in self.runtime.store.pools(project) if p.name == pool), None)
        if row is None:
            raise PoolError(pool, f"no such pool in project {project}")
        spec = pool_spec(row)
        rows = {r.id: r for r in members_of(self.runtime, project, pool)}
        steps = reconcile_pool(spec, [_as_member(self.runtime, r) for r in rows.values()],
                               time.time() if now is None else now)
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

    def _create(self, project: str, pool: str, row: PoolRow) -> BoxRow:
        tmpl = row.spec["template"]
        suffix = secrets.token_hex(3)
        name = f"{pool}-{suffix}"
        bid = f"{project}.{name}"
        rundir = self.runtime.home.box_dir(bid)
        launch = launch_from_json({**tmpl["launch"], "box_id": bid, "rundir": str(rundir),
                                   "disk": str(rundir / "disk.qcow2"),
                                   "park": bool(row.spec.get("park"))})
        record = self.images_get(tmpl["image"])
        new = BoxRow(id=bid, project=project, name=name, spec_hash=row.spec["box_spec"],
                     spec=tmpl["spec"], image=tmpl["image"], driver=tmpl["driver"], handle=None,
                     status="creating", pool=pool)
        made = self.runtime.create(new, launch, self.images, record, READY_TIMEOUT)
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


def acquire(runtime: BoxRuntime, project: str, pool: str, name: str | None = None,
            refill: bool = True) -> BoxRow:
    """Lease the oldest ready member at once (a database update, no boot); a
    background filler boots a replacement."""
    store = runtime.store
    prow = next((p for p in store.pools(project) if p.name == pool), None)
    if prow is None:
        raise PoolError(pool, f"no such pool in project {project} (see `box pool ls`)")
    current = prow.spec["box_spec"]
    if name is not None and store.box(f"{project}.{name}") is not None:
        raise PoolError(pool, f"a box named {name} already exists in project {project}")
    with store.transaction():
        ready = [r for r in members_of(runtime, project, pool)
                 if r.lease is None and r.status in LIVE_STATUSES and r.spec_hash == current]
        if not ready:
            total = len(members_of(runtime, project, pool))
            raise PoolError(pool, f"no ready box (0 of min_ready {prow.spec['min_ready']}, "
                                  f"{total} of max {prow.spec['max']} in use or booting); "
                                  "retry shortly or raise min_ready")
        chosen = min(ready, key=lambda r: (r.updated_at, r.id))
        leased = replace(chosen, lease=name or chosen.name, name=name or chosen.name)
        store.put_box(leased)
    if refill:
        spawn_filler(runtime.home.root, project, pool)
    if leased.status == "parked":
        try:
            leased = runtime.unpark(leased, READY_TIMEOUT)
        except BoxError as e:
            runtime.destroy(leased, None)  # never hand over a member that did not come up
            raise PoolError(pool, f"the parked box {chosen.name} did not resume: {e}") from e
    return leased


def release(runtime: BoxRuntime, images: ImageBackend, row: BoxRow, keep: bool = False) -> None:
    """Destroy a leased box (default: a used sandbox is never handed to another agent),
    or with keep=True return it to its pool as idle."""
    if row.pool is None or row.lease is None:
        raise BoxError(f"box {row.name}: not a leased pool box")
    if keep:
        runtime.store.put_box(replace(row, lease=None))
    else:
        runtime.destroy(row, images)
    spawn_filler(runtime.home.root, row.project, row.pool)


_fillers: list[int] = []
_fillers_lock = threading.Lock()


def spawn_filler(home: Path, project: str, pool: str) -> None:
    """Start a detached `fill` for the pool; it exits at once if one already runs.

    Spawning a Python process costs ~15 ms here (exec), too much for `acquire`'s hot
    path, so it happens on a (non-daemon, so never lost at exit) thread. posix_spawn, no
    Popen object: a long-lived API user reaps its fillers on later calls."""
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
