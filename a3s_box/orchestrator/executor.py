"""The executor: carries out a plan, deciding nothing.

Independent actions run in parallel (bounded), each as soon as what it depends on has
converged (the plan's own graph). A failed step marks its dependants as skipped and the
rest carry on; the outcome of every action is returned, so the caller can say what
converged and what not. What it would otherwise have to find out comes in as values:
the driver of each box in its action, the environment (secrets' values) as an argument.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, get_args

from a3s_box.errors import BoxError, DriverError, GuestError, HostUnsupported, ImageError

if TYPE_CHECKING:
    from a3s_box.imagebuild.builder import Events, Output
    from a3s_box.image import ImageStore
    from a3s_box.image.records import ImageRecord
from a3s_box.orchestrator.desired import DesiredImage, DesiredState
from a3s_box.orchestrator.graph import Node, dependants
from a3s_box.orchestrator.launch import box_launch, box_network, box_volumes, launch_to_json
from a3s_box.orchestrator.lifecycle import BoxRuntime
from a3s_box.orchestrator.plan import Action, Op, Plan
from a3s_box.orchestrator.pools import PoolKeeper, members_of
from a3s_box.orchestrator.readiness import wait_for
from a3s_box.orchestrator.state import BoxRow, ImageBinding, PoolRow, box_id

DEFAULT_READY_TIMEOUT = 120.0
BOOT_ATTEMPTS = 3
BOOT_BACKOFF = 1.0  # seconds before the second attempt, doubling after


Status = Literal["ok", "failed", "skipped", "unchanged"]
STATUSES: tuple[Status, ...] = get_args(Status)


@dataclass(frozen=True)
class BuildSteps:
    """What a build inside apply did: CACHED of TOTAL steps came from the cache."""
    cached: int
    total: int


@dataclass(frozen=True)
class Outcome:
    action: Action
    status: Status
    detail: str = ""  # failed/skipped: why; an image: its digest
    seconds: float = 0.0
    build: BuildSteps | None = None  # images built (not taken from the store) by this apply

    def to_json(self) -> dict[str, Any]:
        out = {**self.action.to_json(), "status": self.status, "detail": self.detail,
               "seconds": round(self.seconds, 3)}
        if self.build is not None:
            out["build"] = {"cached": self.build.cached, "total": self.build.total}
        return out


Report = Callable[[Outcome], None]
# image name, its digest now -> the desired state and plan with that known
Replan = Callable[[str, str], "tuple[DesiredState, Plan]"]


class Executor:
    def __init__(self, runtime: BoxRuntime, images: ImageStore, report: Report,
                 environ: Mapping[str, str], progress: bool = False, parallel: int | None = None,
                 build_events: "Events" = lambda e: None,
                 build_output: "Output" = lambda b: None) -> None:
        self.build_events, self.build_output = build_events, build_output
        self.parallel = parallel or os.cpu_count() or 1
        self.environ = environ  # where the secrets' values are read when a box is made
        self.runtime = runtime
        self.store = runtime.store
        self.images = images
        self.report = report
        self.progress = progress
        self._image_turn = threading.Lock()

    def _image(self, action: Action, project: str, desired: DesiredState) -> Outcome:
        """Pull, import or build one image (or find it in the store: a NOOP); bind it to
        the project. Detail: its digest. One at a time: pulls share the store's disk and
        builds their VMs' memory; the boxes of images already there go on meanwhile."""
        img = desired.images[action.name]
        t0 = time.monotonic()
        steps = None
        try:
            with self._image_turn:
                if img.build is not None and img.digest:
                    record = self._built(action.name, img.digest)
                elif img.build is not None:
                    record, steps = self._build(project, action.name, img)
                else:
                    record = self.images.ensure(_source(img.source, img.is_path), progress=self.progress)
        except BoxError as e:
            return Outcome(action, "failed", str(e), time.monotonic() - t0)
        self.store.put_image_binding(ImageBinding(project, action.name, img.source, record.digest))
        changed = record.digest != img.digest
        return Outcome(action, "ok" if changed else "unchanged", record.digest, time.monotonic() - t0, steps)

    def _build(self, project: str, name: str, img: DesiredImage) -> tuple[ImageRecord, BuildSteps]:
        from a3s_box.orchestrator.builds import run_build

        assert img.definition is not None
        result = run_build(self.runtime.home, self.images, project, name, img.definition,
                           self.build_events, self.build_output)
        assert result.record is not None
        return result.record, BuildSteps(result.cached, result.total)

    def _built(self, name: str, digest: str) -> ImageRecord:
        record = next((r for r in self.images.list() if r.digest == digest), None)
        if record is None:
            raise ImageError(name, f"built image {digest[:19]} is gone from the store")
        return record

    def run(self, plan: Plan, desired: DesiredState, replan: Replan | None = None) -> list[Outcome]:
        """Deletes first (in plan order), then every other action as soon as what it
        depends on has converged, up to `parallel` at once.

        An image whose digest the plan did not know (to pull, to build) makes what
        depends on it known only once it is there (its digest and labels are part of the
        boxes' specs): REPLAN, the planner's own pure functions over the new facts, gives
        the desired state and plan to take the actions not yet started from."""
        graph = plan.graph
        assert graph is not None, "a plan made by make_plan carries its graph"
        outcomes: dict[Node, Outcome] = {}
        order: list[Node] = []
        blocked: dict[Node, str] = {}

        def settle(out: Outcome) -> None:
            node = out.action.node
            outcomes[node] = out
            order.append(node)
            if out.status in ("failed", "skipped") and node in graph:
                for d in dependants(graph, node):
                    blocked.setdefault(d, str(node))
            if out.status != "unchanged":
                self.report(out)

        todo = list(plan.actions)
        done: set[Node] = set()
        for action in [a for a in todo if a.op is Op.DELETE]:
            settle(self._attempt(action, plan.project, desired))
            done.add(action.node)  # a template box deleted as a box still gates its pool
        pending = {a.node: a for a in todo if a.op is not Op.DELETE}
        with ThreadPoolExecutor(max_workers=max(1, self.parallel)) as pool:
            running: dict[Future[Outcome], Node] = {}
            while pending or running:
                for node in sorted(pending):
                    preds = set(graph.predecessors(node)) if node in graph else set()
                    if node in blocked:
                        settle(Outcome(pending.pop(node), "skipped",
                                       f"{blocked[node]} did not converge"))
                    elif preds <= done and len(running) < max(1, self.parallel):
                        running[pool.submit(self._attempt, pending.pop(node), plan.project,
                                            desired)] = node
                if not running:
                    if pending:  # only possible if the graph and plan disagree
                        for node in sorted(pending):
                            settle(Outcome(pending.pop(node), "skipped", "dependency missing"))
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    node = running.pop(fut)
                    out = fut.result()
                    settle(out)
                    done.add(node)
                    if (replan is not None and node.kind == "image" and out.status != "failed"
                            and out.detail != desired.images[node.name].digest):
                        desired, later = replan(node.name, out.detail)
                        fresh = {a.node: a for a in later.actions}
                        pending = {n: fresh.get(n, a) for n, a in pending.items()}
        return [outcomes[n] for n in order]

    def _attempt(self, action: Action, project: str, desired: DesiredState) -> Outcome:
        if action.kind == "image":
            return self._image(action, project, desired)
        if action.op is Op.NOOP:
            return Outcome(action, "unchanged")
        t0 = time.monotonic()
        try:
            if action.kind == "box" and action.op is not Op.DELETE:
                self._wait_dependencies(desired, action.name, project)
            self._do(action, project, desired)
        except BoxError as e:
            return Outcome(action, "failed", str(e), time.monotonic() - t0)
        return Outcome(action, "ok", "", time.monotonic() - t0)

    def _wait_dependencies(self, desired: DesiredState, name: str, project: str) -> None:
        """Before touching a box, its depends_on must have reached their conditions."""
        for dep, condition in desired.boxes[name].depends_on.items():
            if condition == "started":
                continue
            row = self.store.box(box_id(project, dep))
            if row is None:
                raise BoxError(f"box {name}: its dependency {dep} does not exist")
            d = desired.boxes[dep].definition
            timeout = d.timeouts.ready if d.timeouts else DEFAULT_READY_TIMEOUT
            wait_for(dep, d, condition, lambda r=row: self.runtime.client(r), timeout)  # type: ignore[misc]

    # --- steps -----------------------------------------------------------------
    def _do(self, action: Action, project: str, desired: DesiredState) -> None:
        if action.kind == "box":
            self._box(action, project, desired)
        elif action.kind == "pool":
            self._pool(action, project, desired)

    def _pool(self, action: Action, project: str, desired: DesiredState) -> None:
        keeper = PoolKeeper(self.runtime, self.images, self.parallel)
        if action.op is Op.DELETE:
            for row in members_of(self.runtime, project, action.name):
                if row.lease is None:  # leased boxes belong to their holder now
                    self.runtime.destroy(row, self.images)
            self.store.delete_pool(project, action.name)
            return
        p = desired.pools[action.name]
        box = desired.boxes[p.box]
        record = self.images.get(box.spec["image"])
        if record is None:
            raise BoxError(f"pool {p.name}: image {box.image} is not in the local store")
        launch = box_launch("template", box.name, box.definition, record.config,
                            Path("/nonexistent"), disk=None,
                            network=box_network(box.name, box.definition, self.environ),
                            volumes=box_volumes(box.definition,
                                                lambda v: self._volume_disk(project, box.name, v, desired)),
                            image=record.digest)
        lifetime = box.definition.lifetime
        template = {
            "launch": launch_to_json(launch), "image": record.digest, "spec": box.spec,
            "driver": action.driver,
            "lifetime": {"max_duration": lifetime.max_duration, "idle_timeout": lifetime.idle_timeout}
            if lifetime is not None else {},
        }
        self.store.put_pool(PoolRow(project, p.name, p.spec_hash, {**p.spec, "template": template}))
        failed = [f"{step.op} {step.member or 'member'}: {out}"
                  for step, out in keeper.converge(project, p.name) if out != "ok"]
        if failed:
            raise BoxError(f"pool {p.name}: " + "; ".join(failed))

    def _volume_disk(self, project: str, box: str, volume: str, desired: DesiredState) -> Path:
        """A named volume's disk, made on first use; refused while another running box
        of the project mounts it (ext4 is not a shared file system)."""
        from a3s_box.volumes import VolumeStore

        for row in self.store.boxes(project):
            if row.name != box and row.status == "running" and any(
                    v.get("type") == "volume" and v.get("source") == volume
                    for v in row.spec.get("volumes") or ()):
                raise BoxError(f"box {box}: volume {volume} is in use by running box {row.name} "
                               "(ext4 is not a shared file system: one running box per named volume)")
        return VolumeStore(self.runtime.home).ensure(project, volume, desired.volumes[volume])

    def _box(self, action: Action, project: str, desired: DesiredState) -> None:
        bid = box_id(project, action.name)
        row = self.store.box(bid)
        if action.op is Op.DELETE:
            if row is not None:
                self.runtime.destroy(row, self.images)
            return
        want = desired.boxes[action.name]
        timeout = want.definition.timeouts.ready if want.definition.timeouts else DEFAULT_READY_TIMEOUT
        if action.op is Op.START and row is not None:
            self.runtime.start(replace(row, restart=want.definition.restart), timeout)
            return
        if action.op is Op.UPDATE and row is not None:  # in place: the restart policy
            self.store.put_box(replace(row, restart=want.definition.restart))
            return
        if row is not None:  # recreate
            self.runtime.destroy(row, self.images)
        record = self.images.get(want.spec["image"])
        if record is None:
            raise BoxError(f"box {want.name}: image {want.image} is not in the local store")
        rundir = self.runtime.home.box_dir(bid)
        volumes = box_volumes(want.definition, lambda v: self._volume_disk(project, want.name, v, desired))
        launch = box_launch(bid, want.name, want.definition, record.config, rundir,
                            disk=rundir / "disk.qcow2",
                            network=box_network(want.name, want.definition, self.environ),
                            volumes=volumes, image=record.digest)
        new = BoxRow(id=bid, project=project, name=want.name, spec_hash=want.spec_hash,
                     spec=want.spec, image=record.digest, driver=action.driver, restart=want.definition.restart,
                     handle=None, status="creating")
        for attempt in range(1, BOOT_ATTEMPTS + 1):
            try:
                self.runtime.create(new, launch, self.images, record, timeout)
                return
            except HostUnsupported:
                raise  # no point in trying again: this host cannot run that driver
            except (DriverError, GuestError) as e:
                # A boot can fail for passing reasons (a loaded host, a slow disk): the
                # create undid itself, so trying again starts clean. Then report it.
                if attempt == BOOT_ATTEMPTS:
                    raise BoxError(f"{e} (after {attempt} attempts)") from e
                time.sleep(BOOT_BACKOFF * 2 ** (attempt - 1))


def _source(source: str, is_path: bool) -> Any:
    from pathlib import Path

    return Path(source) if is_path else source
