"""Observed state: what exists on this host for a project, read once into a frozen value.

The state store says what a3s-box created; the drivers say whether each VM is really
alive. A VM that died or was killed behind our back shows up here as `exited`, which
the plan turns into a recreate (drift repair).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from a3s_box.drivers.base import VmObservation, VmState
from a3s_box.orchestrator.state import LIVE_STATUSES, BoxRow, ImageBinding, PoolRow, StateStore


@dataclass(frozen=True)
class ObservedBox:
    id: str
    name: str
    spec_hash: str
    spec: dict[str, Any]
    image: str
    status: str  # running | stopped | exited | creating | failed
    reason: str = ""
    pool: str | None = None
    restart: str | None = None  # its restart policy as the store has it (None: always)


@dataclass(frozen=True)
class ObservedState:
    project: str
    boxes: dict[str, ObservedBox] = field(default_factory=dict)
    pools: dict[str, PoolRow] = field(default_factory=dict)
    images: dict[str, ImageBinding] = field(default_factory=dict)
    pool_ready: dict[str, int] = field(default_factory=dict)  # idle, running, current members


VmProbe = Callable[[BoxRow], VmObservation | None]


def observe(store: StateStore, project: str, probe: VmProbe) -> ObservedState:
    boxes: dict[str, ObservedBox] = {}
    pools = {p.name: p for p in store.pools(project)}
    ready: dict[str, int] = {}
    for row in store.boxes(project):
        if row.pool is not None:  # pool members: only counted, the pool keeps them
            pool = pools.get(row.pool)
            if (pool is not None and row.lease is None and row.status in LIVE_STATUSES
                    and row.spec_hash == pool.spec.get("box_spec")):
                seen = probe(row)
                if seen is None or seen.state is VmState.RUNNING:
                    ready[row.pool] = ready.get(row.pool, 0) + 1
            continue
        if row.origin is not None:  # `box fork` made it; no Boxfile manages it
            continue
        status, reason = row.status, ""
        if row.status == "running":
            seen = probe(row)
            if seen is not None and seen.state is not VmState.RUNNING:
                status, reason = "exited", seen.exit_reason or "the VM is gone"
            elif seen is not None and seen.outdated:
                status, reason = "outdated", seen.outdated
        boxes[row.name] = ObservedBox(
            id=row.id, name=row.name, spec_hash=row.spec_hash, spec=row.spec, image=row.image,
            status=status, reason=reason, pool=row.pool, restart=row.restart,
        )
    return ObservedState(
        project=project,
        boxes=boxes,
        pools=pools,
        images={b.name: b for b in store.image_bindings(project)},
        pool_ready=ready,
    )
