"""The plan: a pure function of desired and observed state.

Every action names one object and carries its cause ("recreate box coder:
resources.memory 256Mi -> 512Mi"). `Plan.text()` is both what `box plan` prints and
what tests compare against, so keep it stable. The plan also carries what the executor
needs so that it decides nothing: the dependency graph it was ordered by, and the driver
each box (or pool template) runs on, `auto` resolved here by drivers.registry.choose.
"""
from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from a3s_box.drivers.registry import Capability, choose
from a3s_box.orchestrator.desired import DesiredState
from a3s_box.orchestrator.graph import DependencyGraph, Node, build_graph, ordered
from a3s_box.orchestrator.observed import ObservedState

if TYPE_CHECKING:
    from a3s_box.boxfile.model import BoxDef


class Op(str, enum.Enum):
    CREATE = "create"
    RECREATE = "recreate"
    START = "start"
    UPDATE = "update"  # in place (pools)
    DELETE = "delete"
    PULL = "pull"
    IMPORT = "import"
    BUILD = "build"
    NOOP = "noop"


_SYMBOL = {
    Op.CREATE: "+", Op.PULL: "+", Op.IMPORT: "+", Op.BUILD: "+", Op.RECREATE: "~", Op.START: "~",
    Op.UPDATE: "~", Op.DELETE: "-", Op.NOOP: " ",
}


@dataclass(frozen=True)
class Change:
    path: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.path} {_show(self.old)} -> {_show(self.new)}"


@dataclass(frozen=True)
class Action:
    op: Op
    kind: str  # image | box | pool
    name: str
    reason: str = ""
    changes: tuple[Change, ...] = ()
    driver: str = ""  # boxes and pools made or started by it: the driver, resolved

    @property
    def node(self) -> Node:
        return Node(self.kind, self.name)

    def line(self) -> str:
        cause = self.reason
        if self.changes:
            cause = ", ".join(str(c) for c in self.changes)
        label = f"{self.kind} {self.name}"
        verb = "unchanged" if self.op is Op.NOOP else self.op.value
        return f"  {_SYMBOL[self.op]} {label:<24} {verb}" + (f": {cause}" if cause else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op.value,
            "kind": self.kind,
            "name": self.name,
            "reason": self.reason,
            "changes": [{"path": c.path, "old": c.old, "new": c.new} for c in self.changes],
        }


@dataclass(frozen=True)
class Plan:
    project: str
    actions: tuple[Action, ...]
    orphans: tuple[str, ...] = field(default=())  # boxes not in the Boxfile, kept without --prune
    # u -> v: u must have converged before v starts (what the actions were ordered by)
    graph: DependencyGraph | None = field(default=None, compare=False, repr=False)

    @property
    def changes(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.op is not Op.NOOP)

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    def counts(self) -> dict[str, int]:
        out = {"create": 0, "recreate": 0, "update": 0, "delete": 0, "unchanged": 0}
        for a in self.actions:
            if a.op in (Op.CREATE, Op.PULL, Op.IMPORT, Op.BUILD):
                out["create"] += 1
            elif a.op in (Op.RECREATE, Op.START):
                out["recreate"] += 1
            elif a.op is Op.UPDATE:
                out["update"] += 1
            elif a.op is Op.DELETE:
                out["delete"] += 1
            else:
                out["unchanged"] += 1
        return out

    def text(self, show_unchanged: bool = False) -> str:
        lines = [f'Project "{self.project}":']
        shown = self.actions if show_unchanged else self.changes
        if not self.has_changes:
            lines.append("  No changes. The host matches the Boxfile.")
        lines += [a.line() for a in shown]
        for orphan in self.orphans:
            lines.append(f"  ! box {orphan:<24} not in the Boxfile (kept; apply --prune deletes it)")
        c = self.counts()
        lines.append("")
        lines.append(
            f"Plan: {c['create']} to create, {c['recreate']} to recreate, {c['update']} to update, "
            f"{c['delete']} to delete, {c['unchanged']} unchanged."
        )
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "changes": self.has_changes,
            "summary": self.counts(),
            "actions": [a.to_json() for a in self.actions],
            "orphans": list(self.orphans),
        }


@dataclass(frozen=True)
class DriverChoice:
    """What the plan resolves `driver: auto` with: --driver / $A3S_BOX_DRIVER, and which
    drivers this host runs (Host probes them, cached, before planning)."""

    preferred: str | None = None
    usable: Mapping[str, bool] = field(default_factory=dict)


def box_needs(box: "BoxDef") -> frozenset[Capability]:
    """What a box needs of its driver, from its definition."""
    needs = set()
    if box.network.enabled:
        needs.add(Capability.NETWORK)
    if box.volumes:
        needs.add(Capability.VOLUMES)
    if box.security == "strict":
        needs.add(Capability.CONFINEMENT)
    return frozenset(needs)


def make_plan(desired: DesiredState, observed: ObservedState, prune: bool = False,
              drivers: DriverChoice = DriverChoice()) -> Plan:
    graph = build_graph(
        images=dict(desired.images),
        box_images={n: b.image for n, b in desired.boxes.items()},
        box_deps={n: list(b.depends_on) for n, b in desired.boxes.items()},
        pool_boxes={n: p.box for n, p in desired.pools.items()},
    )
    actions: list[Action] = []
    # Deletes come first, dependants before what they depend on (reverse name order).
    orphans = sorted(n for n in observed.boxes if n not in desired.boxes)
    stale_pools = sorted(n for n in observed.pools if n not in desired.pools)
    if prune:
        actions += [Action(Op.DELETE, "pool", n, "not in the Boxfile") for n in reversed(stale_pools)]
        actions += [Action(Op.DELETE, "box", n, "not in the Boxfile") for n in reversed(orphans)]
    for node in ordered(graph):
        if node.kind == "image":
            actions.append(_image_action(desired, node.name))
        elif node.kind == "box":
            actions.append(_with_driver(_box_action(desired, observed, node.name), desired, node.name, drivers))
        else:
            box = desired.pools[node.name].box
            actions.append(_with_driver(_pool_action(desired, observed, node.name), desired, box, drivers))
    return Plan(desired.project, tuple(actions), () if prune else tuple(orphans), graph)


def _with_driver(action: Action, desired: DesiredState, box: str, drivers: DriverChoice) -> Action:
    if action.op in (Op.NOOP, Op.DELETE):
        return action
    d = desired.boxes[box].definition
    return replace(action, driver=choose(d.driver, box_needs(d), drivers.preferred, drivers.usable))


def _image_action(desired: DesiredState, name: str) -> Action:
    img = desired.images[name]
    if img.digest is not None:
        return Action(Op.NOOP, "image", name, img.digest[:19])
    if img.build is not None:
        b = img.build
        steps = f" ({b.cached} of {b.total} steps cached)" if b.total else ""
        return Action(Op.BUILD, "image", name, f"{b.shown}{steps}")
    return Action(Op.IMPORT if img.is_path else Op.PULL, "image", name, img.source)


def _box_action(desired: DesiredState, observed: ObservedState, name: str) -> Action:
    want = desired.boxes[name]
    have = observed.boxes.get(name)
    if want.template_of:
        pools = ", ".join(want.template_of)
        if have is not None:  # it was a box of its own before it became a template
            return Action(Op.DELETE, "box", name, f"now only the template of pool {pools}")
        return Action(Op.NOOP, "box", name, f"template of pool {pools}")
    if have is None:
        res = want.spec["resources"]
        net = want.spec.get("network")
        extra = f", network {net['mode']}" if net else ""
        if want.spec.get("volumes"):
            n = len(want.spec["volumes"])
            extra += f", {n} volume{'s' if n > 1 else ''}"
        if want.spec.get("boot") == "cold":
            extra += ", cold boot"
        if want.spec.get("secrets"):
            extra += f", {len(want.spec['secrets'])} secret{'s' if len(want.spec['secrets']) > 1 else ''}"
        if want.from_image:
            extra += f" (from the image's labels: {', '.join(want.from_image)})"
        return Action(Op.CREATE, "box", name,
                      f"image {want.image}, {res['vcpus']} vcpu, {res['memory']}{extra}")
    if have.status == "outdated":  # an upgrade: this release cannot adopt its supervisor
        return Action(Op.RECREATE, "box", name, f"{have.reason}: stopped cleanly and booted again")
    if have.spec_hash != want.spec_hash:
        changes = tuple(diff_specs(have.spec, want.spec))
        if changes:
            return Action(Op.RECREATE, "box", name, changes=changes)
        return Action(Op.RECREATE, "box", name, "spec changed")
    if have.status == "stopped":
        return Action(Op.START, "box", name, "stopped")
    restart = want.definition.restart
    if (have.restart or "always") != restart:  # in place: the reconcile loop reads it
        return Action(Op.UPDATE, "box", name, changes=(Change("restart", have.restart or "always", restart),))
    if have.status in ("exited", "failed"):
        return Action(Op.RECREATE, "box", name, f"VM {have.status}: {have.reason}".rstrip(": "))
    if have.status == "creating":
        return Action(Op.RECREATE, "box", name, "an earlier apply was interrupted while creating it")
    return Action(Op.NOOP, "box", name)


def _pool_action(desired: DesiredState, observed: ObservedState, name: str) -> Action:
    want = desired.pools[name]
    have = observed.pools.get(name)
    if have is None:
        return Action(Op.CREATE, "pool", name,
                      f"box {want.box}, min_ready {want.spec['min_ready']}, max {want.spec['max']}")
    if have.spec_hash != want.spec_hash:
        old = {k: v for k, v in have.spec.items() if k != "template"}
        return Action(Op.UPDATE, "pool", name, changes=tuple(diff_specs(old, want.spec)))
    ready = observed.pool_ready.get(name, 0)
    if ready < want.spec["min_ready"]:
        return Action(Op.UPDATE, "pool", name,
                      f"replenish: {ready} of min_ready {want.spec['min_ready']} ready")
    return Action(Op.NOOP, "pool", name)


def diff_specs(old: Any, new: Any, prefix: str = "") -> list[Change]:
    """Leaf-level differences between two JSON-like values, in path order."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[Change] = []
        for key in sorted(set(old) | set(new)):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(Change(path, None, new[key]))
            elif key not in new:
                out.append(Change(path, old[key], None))
            else:
                out += diff_specs(old[key], new[key], path)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) \
            and all(isinstance(x, dict) for x in old + new):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in diff_specs(a, b, f"{prefix}[{i}]")]
    return [] if old == new else [Change(prefix, old, new)]


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return value if value and " " not in value else json.dumps(value)
    return json.dumps(value, sort_keys=True)
