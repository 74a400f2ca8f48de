"""Golden plans: desired + observed -> the plan's text, one table of cases.

The plan is a pure function; these cases pin its text (what `box plan` prints) for the
situations apply meets: a fresh host, a host that matches, drift of every kind, orphans
with and without --prune, pools, and the driver each box is resolved to."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from a3s_box.boxfile import load
from a3s_box.errors import HostUnsupported
from a3s_box.orchestrator.desired import DesiredState, desired_state
from a3s_box.orchestrator.observed import ObservedBox, ObservedState
from a3s_box.orchestrator.plan import DriverChoice, Op, make_plan
from a3s_box.orchestrator.state import PoolRow

DIGEST = "sha256:" + "ab" * 32

BOXFILE = """\
apiVersion: box.a3s.dev/v1
images:
  base: {ref: "docker.io/library/alpine:3.20"}
boxes:
  db: {image: base, resources: {memory: 256Mi}}
  app:
    image: base
    depends_on: [db]
    network: {mode: allowlist, egress: ["api.example.com:443"]}
"""

POOLED = BOXFILE + """\
  worker: {image: base, security: relaxed}
pools:
  workers: {box: worker, min_ready: 2, max: 4}
"""


@dataclass(frozen=True)
class Case:
    id: str
    boxfile: str
    observed: dict[str, str] = field(default_factory=dict)  # box -> "same" | "stopped" | "exited" | "memory 512Mi"
    digest: str | None = DIGEST
    prune: bool = False
    pool_ready: dict[str, int] | None = None  # None: pools not made yet
    expected: str = ""


CASES = [
    Case("fresh host: images, then boxes in dependency order", BOXFILE, digest=None, expected="""\
        Project "p":
          + image base               pull: docker.io/library/alpine:3.20
          + box db                   create: image base, 1 vcpu, 256Mi
          + box app                  create: image base, 1 vcpu, 256Mi, network allowlist

        Plan: 3 to create, 0 to recreate, 0 to update, 0 to delete, 0 unchanged.
        """),
    Case("the host matches", BOXFILE, {"db": "same", "app": "same"}, expected="""\
        Project "p":
          No changes. The host matches the Boxfile.

        Plan: 0 to create, 0 to recreate, 0 to update, 0 to delete, 3 unchanged.
        """),
    Case("drift: a changed field, a stopped box", BOXFILE, {"db": "memory 128Mi", "app": "stopped"}, expected="""\
        Project "p":
          ~ box db                   recreate: resources.memory 128Mi -> 256Mi
          ~ box app                  start: stopped

        Plan: 0 to create, 2 to recreate, 0 to update, 0 to delete, 1 unchanged.
        """),
    Case("drift: a VM that died", BOXFILE, {"db": "same", "app": "exited"}, expected="""\
        Project "p":
          ~ box app                  recreate: VM exited: killed

        Plan: 0 to create, 1 to recreate, 0 to update, 0 to delete, 2 unchanged.
        """),
    Case("an upgrade: a box under an older release's supervisor", BOXFILE, {"db": "outdated", "app": "same"},
         expected="""\
        Project "p":
          ~ box db                   recreate: its VM runs under an older a3s-box's shim (a3s_box.drivers.shim): stopped cleanly and booted again

        Plan: 0 to create, 1 to recreate, 0 to update, 0 to delete, 2 unchanged.
        """),
    Case("a restart policy changes in place", BOXFILE.replace("memory: 256Mi}", "memory: 256Mi}, restart: no"),
         {"db": "same", "app": "same"}, expected="""\
        Project "p":
          ~ box db                   update: restart always -> no

        Plan: 0 to create, 0 to recreate, 1 to update, 0 to delete, 2 unchanged.
        """),
    Case("an orphan is kept without --prune", BOXFILE, {"db": "same", "app": "same", "old": "same"}, expected="""\
        Project "p":
          No changes. The host matches the Boxfile.
          ! box old                      not in the Boxfile (kept; apply --prune deletes it)

        Plan: 0 to create, 0 to recreate, 0 to update, 0 to delete, 3 unchanged.
        """),
    Case("an orphan is deleted first with --prune", BOXFILE, {"db": "same", "app": "same", "old": "same"},
         prune=True, expected="""\
        Project "p":
          - box old                  delete: not in the Boxfile

        Plan: 0 to create, 0 to recreate, 0 to update, 1 to delete, 3 unchanged.
        """),
    Case("a new pool", POOLED, {"db": "same", "app": "same"}, expected="""\
        Project "p":
          + pool workers             create: box worker, min_ready 2, max 4

        Plan: 1 to create, 0 to recreate, 0 to update, 0 to delete, 4 unchanged.
        """),
    Case("a pool short of ready members", POOLED, {"db": "same", "app": "same"}, pool_ready={"workers": 1},
         expected="""\
        Project "p":
          ~ pool workers             update: replenish: 1 of min_ready 2 ready

        Plan: 0 to create, 0 to recreate, 1 to update, 0 to delete, 4 unchanged.
        """),
    Case("a box that became a pool's template", POOLED, {"db": "same", "app": "same", "worker": "same"},
         pool_ready={"workers": 2}, expected="""\
        Project "p":
          - box worker               delete: now only the template of pool workers

        Plan: 0 to create, 0 to recreate, 0 to update, 1 to delete, 4 unchanged.
        """),
]


def _desired(tmp_path: Path, text: str, digest: str | None) -> DesiredState:
    f = tmp_path / "Boxfile.yaml"
    f.write_text(text)
    bf = load([f])
    return desired_state(bf, "p", {"base": digest})


def _observed(desired: DesiredState, case: Case) -> ObservedState:
    boxes: dict[str, ObservedBox] = {}
    for name, how in case.observed.items():
        want = desired.boxes.get(name) or desired.boxes["db"]
        spec: dict[str, Any] = {**want.spec, "resources": dict(want.spec["resources"])}
        status, reason, spec_hash = "running", "", want.spec_hash
        if how == "stopped":
            status = "stopped"
        elif how == "exited":
            status, reason = "exited", "killed"
        elif how == "outdated":
            status, reason = "outdated", "its VM runs under an older a3s-box's shim (a3s_box.drivers.shim)"
        elif how.startswith("memory "):
            spec["resources"]["memory"] = how.split()[1]
            spec_hash = "sha256:old"
        boxes[name] = ObservedBox(f"p.{name}", name, spec_hash, spec, DIGEST, status, reason)
    pools: dict[str, PoolRow] = {}
    if case.pool_ready is not None:
        for name, pool in desired.pools.items():
            pools[name] = PoolRow("p", name, pool.spec_hash, {**pool.spec, "template": {}})
    return ObservedState("p", boxes, pools, {}, dict(case.pool_ready or {}))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_plan_text(tmp_path: Path, case: Case) -> None:
    desired = _desired(tmp_path, case.boxfile, case.digest)
    plan = make_plan(desired, _observed(desired, case), prune=case.prune)
    assert plan.text() == textwrap.dedent(case.expected)


def test_the_plan_is_pure_and_carries_its_graph(tmp_path: Path) -> None:
    desired = _desired(tmp_path, POOLED, DIGEST)
    case = Case("x", POOLED)
    one, two = make_plan(desired, _observed(desired, case)), make_plan(desired, _observed(desired, case))
    assert one.text() == two.text() and one.to_json() == two.to_json()
    assert one.graph is not None
    order = [a.node for a in one.actions]
    for u, v in one.graph.edges:  # every edge respected by the order the plan lists
        assert order.index(u) < order.index(v), (u, v)


# declared driver, what the box needs, --driver, drivers this host runs -> the driver
DRIVER_CASES = [
    ("auto", "", None, {"libkrun": True}, "qemu"),  # security strict: only a jailed VMM
    ("auto", "security: relaxed", None, {"libkrun": True}, "libkrun"),
    ("auto", "security: relaxed", None, {"libkrun": False}, "qemu"),
    ("auto", "security: relaxed, network: {mode: public}", None, {"libkrun": True}, "qemu"),
    ("auto", "security: relaxed", "qemu", {"libkrun": True}, "qemu"),
    ("libkrun", "", "qemu", {}, "libkrun"),  # named: taken as it is (its create says what it lacks)
]


@pytest.mark.parametrize("declared,extra,preferred,usable,expected", DRIVER_CASES)
def test_the_plan_resolves_each_boxs_driver(tmp_path: Path, declared: str, extra: str, preferred: str | None,
                                            usable: dict[str, bool], expected: str) -> None:
    fields = extra
    text = ("apiVersion: box.a3s.dev/v1\nboxes:\n  b: {image: \"docker.io/library/alpine:3.20\", "
            f"driver: {declared}" + (f", {fields}" if fields else "") + "}\n")
    f = tmp_path / "Boxfile.yaml"
    f.write_text(text)
    desired = desired_state(load([f]), "p", {})
    plan = make_plan(desired, ObservedState("p"), drivers=DriverChoice(preferred, usable))
    (create,) = [a for a in plan.actions if a.kind == "box"]
    assert create.op is Op.CREATE and create.driver == expected


def test_unchanged_and_deleted_boxes_need_no_driver(tmp_path: Path) -> None:
    desired = _desired(tmp_path, BOXFILE, DIGEST)
    plan = make_plan(desired, _observed(desired, Case("x", BOXFILE, {"db": "same", "app": "same", "old": "same"})),
                     prune=True)
    assert {a.name: a.driver for a in plan.actions if a.kind == "box"} == {"old": "", "db": "", "app": ""}


def test_no_driver_can_do_it_is_an_error() -> None:
    from a3s_box.drivers.registry import Capability, choose

    with pytest.raises(HostUnsupported):
        choose("auto", {Capability.NETWORK, "teleport"}, None, {})  # type: ignore[arg-type]
