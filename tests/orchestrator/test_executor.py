"""The executor against a fake runtime that fails loudly on any call it was not told to
expect: it carries out the plan's actions, in the plan's graph order, with the plan's
drivers and the environment it is given, and decides nothing else.

Faked: the box runtime (VMs: these tests are about what the executor asks for, the
real runtime is covered by the e2e tests) and the image store's lookup. The state
store is the real one."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from a3s_box.boxfile import load
from a3s_box.errors import DriverError
from a3s_box.home import Home
from a3s_box.image.manifest import ImageConfig
from a3s_box.image.records import ImageRecord
from a3s_box.orchestrator.desired import DesiredState, desired_state
from a3s_box.orchestrator.executor import Executor, Outcome
from a3s_box.orchestrator.observed import ObservedState
from a3s_box.orchestrator.plan import DriverChoice, Op, Plan, make_plan
from a3s_box.orchestrator.state import BoxRow, StateStore

DIGEST = "sha256:" + "cd" * 32
BOXFILE = """\
apiVersion: box.a3s.dev/v1
images:
  base: {ref: "docker.io/library/alpine:3.20"}
boxes:
  db: {image: base, security: relaxed}
  app:
    image: base
    depends_on: [db]
    network: {mode: allowlist, egress: ["api.example.com:443"]}
    secrets: {key: {env: EXECUTOR_TEST_KEY, hosts: ["api.example.com"]}}
"""


class LoudRuntime:
    """Records the calls it expects; any other attribute use fails the test."""

    EXPECTED = {"store", "home", "create", "destroy", "start"}

    def __init__(self, home: Home, store: StateStore, fail: frozenset[str] = frozenset()) -> None:
        self.home, self.store, self.fail = home, store, fail
        self.calls: list[tuple[str, str, str]] = []
        self.specs: dict[str, dict[str, Any]] = {}  # box -> the spec its create was given

    def create(self, row: BoxRow, launch: Any, images: Any, record: Any, timeout: float) -> BoxRow:
        self.calls.append(("create", row.name, row.driver))
        self.specs[row.name] = row.spec
        if row.name in self.fail:
            raise DriverError(row.name, "the fake refuses")
        return row

    def destroy(self, row: BoxRow, images: Any) -> None:
        self.calls.append(("destroy", row.name, row.driver))

    def start(self, row: BoxRow, timeout: float) -> BoxRow:
        self.calls.append(("start", row.name, row.driver))
        return row

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the executor used runtime.{name}, which it was not expected to")


class Images:
    def __init__(self, digest: str = DIGEST) -> None:
        self.digest = digest
        self.ensured: list[str] = []

    def get(self, ref: str) -> ImageRecord | None:
        assert ref == self.digest, f"asked for image {ref}"
        return ImageRecord("alpine", self.digest, ImageConfig(cmd=("/bin/sh",)), 0, 0.0)

    def ensure(self, source: str, progress: bool = False) -> ImageRecord:
        self.ensured.append(source)
        return ImageRecord("alpine", self.digest, ImageConfig(cmd=("/bin/sh",)), 0, 0.0)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the executor used images.{name}, which it was not expected to")


def _setup(tmp_path: Path, fail: frozenset[str] = frozenset()) -> tuple[LoudRuntime, DesiredState, Plan]:
    f = tmp_path / "Boxfile.yaml"
    f.write_text(BOXFILE)
    desired = desired_state(load([f]), "p", {"base": DIGEST})
    home = Home(tmp_path / "home")
    home.ensure()
    runtime = LoudRuntime(home, StateStore(home.state_db), fail)
    plan = make_plan(desired, ObservedState("p"), drivers=DriverChoice(None, {"libkrun": True}))
    return runtime, desired, plan


def _run(runtime: LoudRuntime, desired: DesiredState, plan: Plan, environ: dict[str, str]) -> list[Outcome]:
    executor = Executor(runtime, Images(), lambda o: None, environ, parallel=2)  # type: ignore[arg-type]
    return executor.run(plan, desired)


def test_creates_in_graph_order_on_the_plans_drivers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXECUTOR_TEST_KEY", raising=False)  # only the environ argument has it
    runtime, desired, plan = _setup(tmp_path)
    outcomes = _run(runtime, desired, plan, {"EXECUTOR_TEST_KEY": "sk-value"})
    assert [(o.action.name, o.status) for o in outcomes if o.action.kind == "box"] == [("db", "ok"), ("app", "ok")]
    # db: relaxed, no network -> libkrun (this "host" runs it); app: a network -> qemu
    assert runtime.calls == [("create", "db", "libkrun"), ("create", "app", "qemu")]


def test_a_secret_missing_from_the_given_environment_fails_that_box_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECUTOR_TEST_KEY", "in the process, not given")  # must not be read
    runtime, desired, plan = _setup(tmp_path)
    outcomes = {o.action.name: o for o in _run(runtime, desired, plan, {})}
    assert outcomes["db"].status == "ok"
    assert outcomes["app"].status == "failed"
    assert "EXECUTOR_TEST_KEY is not set" in outcomes["app"].detail
    assert runtime.calls == [("create", "db", "libkrun")]


def test_a_failed_box_skips_its_dependants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("a3s_box.orchestrator.executor.BOOT_BACKOFF", 0.0)
    runtime, desired, plan = _setup(tmp_path, fail=frozenset({"db"}))
    outcomes = {o.action.name: o for o in _run(runtime, desired, plan, {"EXECUTOR_TEST_KEY": "v"})}
    assert outcomes["db"].status == "failed" and "the fake refuses" in outcomes["db"].detail
    assert outcomes["app"].status == "skipped" and outcomes["app"].detail == "box db did not converge"
    assert [c for c in runtime.calls if c[1] == "app"] == []


def test_a_plan_without_changes_touches_no_box(tmp_path: Path) -> None:
    runtime, desired, plan = _setup(tmp_path)
    noop = Plan(plan.project, tuple(replace(a, op=Op.NOOP) for a in plan.actions), (), plan.graph)
    assert [(o.action.name, o.status) for o in _run(runtime, desired, noop, {})] == [
        ("base", "unchanged"), ("db", "unchanged"), ("app", "unchanged")]
    assert runtime.calls == []


def test_an_image_the_plan_did_not_know_replans_its_boxes(tmp_path: Path) -> None:
    """The plan was made before the pull: the box's spec names the reference; once the
    image is there, what depends on it is re-planned with its digest (and its driver)."""
    f = tmp_path / "Boxfile.yaml"
    f.write_text(BOXFILE)
    bf = load([f])
    unknown = desired_state(bf, "p", {"base": None})
    home = Home(tmp_path / "home")
    home.ensure()
    runtime = LoudRuntime(home, StateStore(home.state_db))
    choice = DriverChoice(None, {"libkrun": True})
    plan = make_plan(unknown, ObservedState("p"), drivers=choice)
    assert unknown.boxes["db"].spec["image"] == "ref:docker.io/library/alpine:3.20"
    asked: list[tuple[str, str]] = []

    def replan(image: str, digest: str) -> tuple[DesiredState, Plan]:
        asked.append((image, digest))
        now = desired_state(bf, "p", {"base": digest})
        return now, make_plan(now, ObservedState("p"), drivers=choice)

    images = Images()
    outcomes = Executor(runtime, images, lambda o: None, {"EXECUTOR_TEST_KEY": "v"},  # type: ignore[arg-type]
                        parallel=2).run(plan, unknown, replan)
    assert asked == [("base", DIGEST)]
    assert images.ensured == ["docker.io/library/alpine:3.20"]
    assert [(o.action.name, o.status) for o in outcomes] == [("base", "ok"), ("db", "ok"), ("app", "ok")]
    assert {n: spec["image"] for n, spec in runtime.specs.items()} == {"db": DIGEST, "app": DIGEST}
