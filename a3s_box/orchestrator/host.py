"""`Host`: the Python API over one a3s-box home, and what the `box` CLI calls.

load -> desired -> observe -> plan (pure) -> executor (side effects), with the home
lock held by anything that changes the host.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from a3s_box.drivers.base import VmHandle, VmState
from a3s_box.errors import BoxError

if TYPE_CHECKING:  # the heavy parts are imported on use, so `box ps`/`exec` start fast
    from a3s_box.boxfile.model import Boxfile
    from a3s_box.files import FileEntry
    from a3s_box.files.box_files import ByteSink, ByteSource
    from a3s_box.guest.client import CompletedExec, GuestClient
    from a3s_box.image import ImageStore
    from a3s_box.imagebuild.builder import BuildResult, Events, Output
    from a3s_box.orchestrator.desired import BuildPreview, DesiredState
    from a3s_box.orchestrator.executor import Outcome, Report
    from a3s_box.orchestrator.image_catalog import ImageCatalog
    from a3s_box.orchestrator.plan import DriverChoice, Plan
    from a3s_box.orchestrator.snapshots import Snapshots
    from a3s_box.orchestrator.volumes import Volumes
from a3s_box.home import Home
from a3s_box.orchestrator.lifecycle import BoxRuntime
from a3s_box.orchestrator.lock import home_lock
from a3s_box.orchestrator.pools import PoolKeeper, acquire, members_of, release
from a3s_box.orchestrator.state import LIVE_STATUSES, BoxRow, StateStore, TokenRow


@dataclass(frozen=True)
class ApplyResult:
    plan: "Plan"
    outcomes: "tuple[Outcome, ...]"

    @property
    def ok(self) -> bool:
        return all(o.status in ("ok", "unchanged") for o in self.outcomes)

    def to_json(self) -> dict[str, Any]:
        return {"project": self.plan.project, "ok": self.ok,
                "outcomes": [o.to_json() for o in self.outcomes]}


def _network_log(rundir: Path) -> Path:
    from a3s_box.network.log import network_log_path

    return network_log_path(rundir)


def network_summary(spec: dict[str, Any]) -> str:
    from a3s_box.network.policy import NetworkPolicy

    net = spec.get("network")
    return NetworkPolicy.from_json(net).summary() if net else "none"


@dataclass(frozen=True)
class BoxInfo:
    """One line of `box ps`."""

    id: str
    project: str
    name: str
    status: str
    driver: str
    accel: str
    image: str
    pid: int | None
    detail: str
    network: str = "none"  # the policy in one line (NetworkPolicy.summary)
    boot: str = ""  # "snapshot KEY" (restored from a template) or "cold (why)"
    security: str = ""  # how its VMM is confined: "strict", "relaxed", "relaxed: no cgroup"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class BoxFilesHandle:
    """`box.files`: each call opens its own channel to the box (see a3s_box.files)."""

    def __init__(self, host: "Host", row: BoxRow) -> None:
        self._host, self._row = host, row

    def _call(self, op: str, *args: Any) -> Any:
        from a3s_box.files import BoxFiles

        with self._host.client(self._row) as c:
            return getattr(BoxFiles(c, self._row.name), op)(*args)

    def write(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        self._call("write", path, data, mode)

    def read(self, path: str) -> bytes:
        return bytes(self._call("read", path))

    def upload(self, local: str | Path, remote: str) -> str:
        return str(self._call("upload", local, remote))

    def download(self, remote: str, local: str | Path) -> Path:
        return Path(self._call("download", remote, local))

    def list(self, path: str) -> list["FileEntry"]:
        return list(self._call("list", path))

    def remove(self, path: str) -> None:
        self._call("remove", path)

    def upload_tar(self, stream: "ByteSource", remote_dir: str) -> None:
        self._call("upload_tar", stream, remote_dir)

    def download_tar(self, remote: str, sink: "ByteSink") -> None:
        self._call("download_tar", remote, sink)


@dataclass(frozen=True)
class BoxHandle:
    """A box of the host, to run commands in and move files in and out of."""

    host: "Host"
    row: BoxRow

    @property
    def name(self) -> str:
        return self.row.name

    def run(self, argv: Sequence[str], ns: str = "agent", timeout: float | None = None,
            stdin: bytes | None = None) -> "CompletedExec":
        from a3s_box.guest.protocol import Namespace

        with self.host.client(self.row) as c:
            return c.run(list(argv), ns=Namespace[ns.upper()], stdin=stdin, timeout=timeout)

    @property
    def files(self) -> BoxFilesHandle:
        return BoxFilesHandle(self.host, self.row)


@dataclass(frozen=True)
class LeasedBox(BoxHandle):
    """A box handed over by a pool, for the duration of a `with host.leased(...)`."""


class Host:
    def __init__(self, home: Home | str | Path | None = None) -> None:
        self.home = home if isinstance(home, Home) else Home.resolve(home)
        self.home.ensure()
        self.store = StateStore(self.home.state_db)
        self.runtime = BoxRuntime(self.home, self.store)
        self._images: ImageStore | None = None

    @property
    def images(self) -> "ImageStore":
        """The home's image store, as plan and apply use it."""
        if self._images is None:
            from a3s_box.image import ImageStore

            self._images = ImageStore(self.home)
        return self._images

    @cached_property
    def image_catalog(self) -> "ImageCatalog":
        """The images as people manage them: pull, import, list, inspect, export, remove,
        prune (never one a box uses)."""
        from a3s_box.orchestrator.image_catalog import ImageCatalog

        return ImageCatalog(self.images, self.store)

    @cached_property
    def snapshots(self) -> "Snapshots":
        """Snapshot templates and fork layers, with the boxes sitting on each."""
        from a3s_box.orchestrator.snapshots import Snapshots

        return Snapshots(self.home, self.store)

    @cached_property
    def volumes(self) -> "Volumes":
        """Named volumes, with the boxes mounting each."""
        from a3s_box.orchestrator.volumes import Volumes
        from a3s_box.volumes import VolumeStore

        return Volumes(VolumeStore(self.home), self.store)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Host":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def locked(self, wait: bool = True, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        with home_lock(self.home.lock_file, wait=wait, on_wait=on_wait):
            yield

    # --- plan / apply ----------------------------------------------------------
    def load(self, files: Sequence[str | Path], environ: Mapping[str, str] | None = None,
             for_apply: bool = True, contents: Mapping[str, bytes] | None = None) -> "Boxfile":
        """FOR_APPLY (plan, apply, diff): the variables of declared secrets must be set.
        CONTENTS: files' bytes by name, when they do not come from the disk."""
        from a3s_box.boxfile import load

        return load(files, environ, for_apply=for_apply, contents=contents)

    def _known_images(self, bf: "Boxfile", project: str) -> tuple[
            dict[str, str | None], "dict[str, BuildPreview] | None"]:
        """What the store has of each image the Boxfile needs (no network, nothing built)."""
        from a3s_box.orchestrator.desired import desired_images

        known: dict[str, str | None] = {}
        for name, img in desired_images(bf, {}).items():
            if img.build is None:
                record = self.images.get(img.source)
                known[name] = record.digest if record is not None else None
        builds = None
        if any(i.build is not None for i in bf.images.values()):
            from a3s_box.orchestrator.builds import previews

            builds = previews(self.home, self.images, bf, project)  # nothing runs: the cache's view
            known.update({n: b.digest for n, b in builds.items()})
        return known, builds

    def desired(self, bf: "Boxfile", project: str | None = None) -> "DesiredState":
        from a3s_box.orchestrator.desired import desired_state, project_name

        proj = project_name(bf, project)
        known, builds = self._known_images(bf, proj)
        return desired_state(bf, proj, known, builds, self._image_defaults(known))

    def _driver_choice(self, desired: "DesiredState", preferred: str | None) -> "DriverChoice":
        """What `driver: auto` is resolved with: PREFERRED, else the probes (cached) of
        the drivers that could run an auto box, all but the last resort."""
        from a3s_box.drivers.registry import AUTO, candidates, probe_usable
        from a3s_box.orchestrator.plan import DriverChoice, box_needs

        if preferred and preferred != AUTO:
            return DriverChoice(preferred)
        probe: set[str] = set()
        for box in desired.boxes.values():
            if box.definition.driver == AUTO:
                probe.update(candidates(box_needs(box.definition))[:-1])
        return DriverChoice(None, probe_usable(sorted(probe), self.home))

    def _image_defaults(self, digests: Mapping[str, str | None]) -> dict[str, dict[str, Any]]:
        """The dev.a3s.box.* label defaults of each image the store has, by image name."""
        from a3s_box.image.box_labels import box_defaults

        out: dict[str, dict[str, Any]] = {}
        records = {r.digest: r for r in self.images.list()}
        for name, digest in digests.items():
            record = records.get(digest) if digest else None
            if record is not None:
                out[name] = box_defaults(record.name, record.config.labels)
        return out

    def plan(self, bf: "Boxfile", project: str | None = None, prune: bool = False,
             driver: str | None = None) -> "Plan":
        from a3s_box.orchestrator.observed import observe
        from a3s_box.orchestrator.plan import make_plan

        desired = self.desired(bf, project)
        return make_plan(desired, observe(self.store, desired.project, self.runtime.observe), prune,
                         self._driver_choice(desired, driver))

    def apply(self, bf: "Boxfile", project: str | None = None, prune: bool = False,
              report: "Report" = lambda o: None, progress: bool = False,
              before_boxes: "Callable[[Plan], None]" = lambda p: None,
              parallel: int | None = None, driver: str | None = None,
              build_events: "Events" = lambda e: None, build_output: "Output" = lambda b: None,
              environ: Mapping[str, str] | None = None) -> ApplyResult:
        """Converge the host to the Boxfile. Caller holds the lock (see `locked`).
        ENVIRON: where secrets' values are read (default: this process's environment).

        The desired state, once; the one plan, images included, that the executor carries
        out. A pull or build that brings a digest the plan did not know re-plans what
        depends on that image (its digest and labels are part of those boxes' specs)."""
        from a3s_box.orchestrator.desired import desired_state, project_name
        from a3s_box.orchestrator.executor import Executor
        from a3s_box.orchestrator.observed import observe
        from a3s_box.orchestrator.plan import make_plan

        self.runtime.recover(self.images)
        executor = Executor(self.runtime, self.images, report, os.environ if environ is None else environ,
                            progress, parallel, build_events, build_output)
        proj = project_name(bf, project)
        known, builds = self._known_images(bf, proj)
        desired = desired_state(bf, proj, known, builds, self._image_defaults(known))
        observed = observe(self.store, proj, self.runtime.observe)
        plan = make_plan(desired, observed, prune, self._driver_choice(desired, driver))

        def replan(image: str, digest: str) -> "tuple[DesiredState, Plan]":
            nonlocal builds
            known[image] = digest
            if builds is not None and image in builds:
                builds = {**builds, image: replace(builds[image], digest=digest)}
            now = desired_state(bf, proj, known, builds, self._image_defaults(known))
            return now, make_plan(now, observed, prune, self._driver_choice(now, driver))

        before_boxes(plan)
        outcomes = executor.run(plan, desired, replan)
        self._enforce_image_cap({o.detail for o in outcomes if o.action.kind == "image" and o.status != "failed"})
        result = ApplyResult(plan, tuple(outcomes))
        from a3s_box import audit

        bad = [o for o in outcomes if o.status == "failed"]
        audit.record(self.home.root, "apply", proj,
                     "ok" if not bad else f"failed: {len(bad)} of {len(outcomes)} changes",
                     changes=[f"{o.action.kind} {o.action.name}: {o.status}" for o in outcomes if o.status != "unchanged"])
        return result

    def build(self, bf: "Boxfile", project: str | None = None, names: Sequence[str] = (),
              no_cache: bool = False, events: "Events" = lambda e: None,
              output: "Output" = lambda b: None) -> list[tuple[str, "BuildResult"]]:
        """Build the Boxfile's `build:` images (NAMES: only these), through the cache
        unless NO_CACHE. Caller holds the lock."""
        from a3s_box.orchestrator.builds import run_build, wanted_builds
        from a3s_box.orchestrator.desired import project_name

        proj = project_name(bf, project)
        picked = wanted_builds(bf, list(names))
        unknown = sorted(set(names) - set(picked))
        if unknown:
            have = ", ".join(n for n, i in sorted(bf.images.items()) if i.build is not None) or "none"
            raise BoxError(f"image {unknown[0]}: not a build image of this Boxfile (build images: {have})")
        return [(n, run_build(self.home, self.images, proj, n, bf.images[n], events, output, no_cache))
                for n in picked]

    def _enforce_image_cap(self, wanted: set[str]) -> None:
        """$A3S_BOX_IMAGE_CAP (e.g. 20Gi): evict least recently used images down to it,
        never one a box uses or this Boxfile wants."""
        raw = os.environ.get("A3S_BOX_IMAGE_CAP")
        if not raw:
            return
        from a3s_box.units import parse_size

        try:
            cap = parse_size(raw)
        except ValueError as e:
            raise BoxError(f"A3S_BOX_IMAGE_CAP: {e}") from e
        self.images.evict_to(cap, self.store.images_in_use() | wanted)

    # --- boxes -----------------------------------------------------------------
    def find(self, name: str) -> BoxRow:
        """A box by id ("project.name") or by name when that is unique on the host."""
        row = self.store.box(name)
        if row is not None:
            return row
        matches = [r for r in self.store.boxes() if r.name == name]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise BoxError(f"box {name}: no such box (see `box ps`)")
        ids = ", ".join(r.id for r in matches)
        raise BoxError(f"box {name}: ambiguous, it exists in several projects ({ids}); name one")

    def ps(self, project: str | None = None) -> list[BoxInfo]:
        return [self.info(row) for row in self.store.boxes(project)]

    def info(self, row: BoxRow) -> BoxInfo:
        """One line of `box ps` for ROW (asks its guest how the agent is doing)."""
        status, detail, accel, pid, boot, security = row.status, "", "", None, "", ""
        if row.handle is not None:
            handle = VmHandle.from_json(row.handle)
            accel, pid, boot = handle.accel, handle.pid, handle.extra.get("boot", "cold")
            security = handle.extra.get("security", "none")
            seen = self.runtime.observe(row)
            restarts = self._restarts(row)
            if seen is not None and seen.state is not VmState.RUNNING:
                status, detail = "exited", seen.exit_reason
                if restarts:
                    detail += f" ({restarts})"
            elif status == "running" and seen is not None and seen.outdated:
                detail = f"{seen.outdated}; the next apply replaces it"
            elif status == "running":
                detail = self._agent_detail(row) + (f"; VM {restarts}" if restarts else "")
            elif status == "parked":
                detail = "loaded and paused; `box pool acquire` runs it"
        return BoxInfo(row.id, row.project, row.name, status, row.driver, accel,
                       row.image[:19], pid, detail, network_summary(row.spec), boot, security)

    def inspect(self, name: str) -> dict[str, Any]:
        """Everything known of one box: its spec (secrets by name, never their values),
        where its VM runs, its network policy."""
        row = self.find(name)
        info = self.info(row)
        rundir = self.home.box_dir(row.id)
        return {**info.to_json(), "spec": row.spec, "spec_hash": row.spec_hash,
                "pool": row.pool, "lease": row.lease, "rundir": str(rundir),
                "logs": {"console": str(rundir / "console.log"),
                         "network": str(_network_log(rundir))},
                "secrets": sorted((row.spec.get("secrets") or {}).keys())}

    def _restarts(self, row: BoxRow) -> str:
        """What the reconcile loop has done and will do about the box's VM ending."""
        from a3s_box.orchestrator.reconcile import restart_summary

        return restart_summary(self.store.restart_record(row.id), time.time())

    def _agent_detail(self, row: BoxRow) -> str:
        try:
            with self.client(row, timeout=3.0) as c:
                st = c.status()
        except BoxError as e:
            return f"guest not answering: {e}"
        detail = f"agent {st.agent_state}"
        if st.restarts:
            detail += f", {st.restarts} restarts"
        last = st.values.get("last_exit")
        if last and st.agent_state != "running":
            detail += f", last {last}"
        return detail

    def console_log(self, row: BoxRow) -> Path:
        """Where ROW's console log is (its VM's handle says, once it has booted)."""
        path = self.home.box_dir(row.id) / "console.log"
        return Path(str(row.handle.get("console_log") or path)) if row.handle is not None else path

    def box(self, name: str) -> BoxHandle:
        """A handle on box NAME (id "project.name", or a name unique on the host)."""
        return BoxHandle(self, self.find(name))

    def client(self, row: BoxRow, timeout: float = 10.0) -> AbstractContextManager["GuestClient"]:
        """A connected, greeted GuestClient for a running box (a context manager)."""
        return self.runtime.client(row, timeout)

    def running(self, box_id: str) -> bool:
        """Whether box BOX_ID (an id, "project.name") still exists and its VM runs."""
        row = self.store.box(box_id)
        seen = self.runtime.observe(row) if row is not None else None
        return seen is not None and seen.state is VmState.RUNNING

    def _audited(self, what: str, target: str, fn: Callable[[], Any]) -> Any:
        """Run a state change and put it in the audit log, whatever its outcome."""
        from a3s_box import audit

        try:
            out = fn()
        except BoxError as e:
            audit.record(self.home.root, what, target, f"failed: {e}")
            raise
        audit.record(self.home.root, what, target)
        return out

    def stop(self, name: str) -> BoxRow:
        return self._audited("stop", name, lambda: self.runtime.stop(self.find(name)))  # type: ignore[no-any-return]

    def pause(self, name: str) -> BoxRow:
        return self._audited("pause", name, lambda: self.runtime.pause(self.find(name)))  # type: ignore[no-any-return]

    def resume(self, name: str) -> BoxRow:
        return self._audited("resume", name, lambda: self.runtime.resume(self.find(name)))  # type: ignore[no-any-return]

    def fork(self, name: str, new_name: str, timeout: float = 120.0) -> BoxRow:
        """A new box NEW_NAME from box NAME's memory and disk at this instant."""
        import re

        from a3s_box.boxfile.model import NAME_PATTERN

        if not re.match(NAME_PATTERN, new_name):
            raise BoxError(f"box {new_name}: not a valid name (lower-case letters, digits and '-', "
                           "at most 63)")
        return self._audited("fork", f"{name} -> {new_name}",  # type: ignore[no-any-return]
                             lambda: self.runtime.fork(self.find(name), new_name, timeout))

    def create_like(self, name: str, new_name: str, owner: str | None = None,
                    timeout: float = 120.0) -> BoxRow:
        """A new box NEW_NAME booted as declared box NAME was, on a fresh disk (the E2B API's
        create from a box template). No Boxfile manages it; OWNER: its sandbox token."""
        import re

        from a3s_box.boxfile.model import NAME_PATTERN

        if not re.match(NAME_PATTERN, new_name):
            raise BoxError(f"box {new_name}: not a valid name (lower-case letters, digits and '-', at most 63)")
        return self._audited("create", f"{name} -> {new_name}",  # type: ignore[no-any-return]
                             lambda: self.runtime.create_like(self.find(name), new_name, self.images, timeout, owner))

    def own(self, name: str, owner: str) -> BoxRow:
        """Give box NAME to sandbox token OWNER (only it, and the admin, may use it then)."""
        row = replace(self.find(name), owner=owner)
        self.store.put_box(row)
        return row

    def start(self, name: str, timeout: float = 120.0) -> BoxRow:
        row = self.find(name)
        if row.status == "running":
            seen = self.runtime.observe(row)
            if seen is None or seen.state is VmState.RUNNING:
                return row
        return self._audited("start", name, lambda: self.runtime.start(row, timeout))  # type: ignore[no-any-return]

    def delete(self, name: str) -> None:
        self._audited("delete", name, lambda: self.runtime.destroy(self.find(name), self.images))

    # --- pools -----------------------------------------------------------------
    def keep_pools(self, project: str) -> list[str]:
        """One upkeep pass over every pool of a project: replace dead members, reclaim
        idle surplus, end expired leases, refill. Returns what it did, one line each."""
        keeper = PoolKeeper(self.runtime, self.images)
        lines: list[str] = []
        for pool in self.store.pools(project):
            for step, outcome in keeper.converge(project, pool.name):
                lines.append(f"pool {pool.name}: {step.op} {step.member or 'member'} "
                             f"({step.reason}): {outcome}")
        return lines

    def pools(self, project: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for p in self.store.pools(project):
            members = members_of(self.runtime, p.project, p.name)
            ready = [m for m in members if m.lease is None and m.status in LIVE_STATUSES
                     and m.spec_hash == p.spec.get("box_spec")]
            out.append({"project": p.project, "name": p.name, "box": p.spec.get("box"),
                        "ready": len(ready), "leased": sum(1 for m in members if m.lease),
                        "total": len(members), "min_ready": p.spec.get("min_ready"),
                        "max": p.spec.get("max")})
        return out

    def acquire(self, pool: str, project: str | None = None, name: str | None = None,
                timeout: float = 0.0, owner: str | None = None) -> BoxRow:
        """Lease a ready box from a pool at once; the pool boots a replacement behind.
        TIMEOUT (seconds): when none is ready, boot one on demand while the pool is
        below its max, or wait for one (acquirers served in order); PoolExhausted after.
        OWNER: the sandbox token it is leased for (the API lets only that token use it)."""
        proj = project or self.project_of_pool(pool)
        return self._audited("acquire", pool,  # type: ignore[no-any-return]
                             lambda: acquire(self.runtime, proj, pool, name, wait=timeout, images=self.images,
                                             owner=owner))

    # --- API tokens (a3s_box/api/access.py mints and checks them; kept here) ----------
    def tokens(self) -> list[TokenRow]:
        return self.store.tokens()

    def token_by_digest(self, digest: str) -> TokenRow | None:
        return self.store.token_by_digest(digest)

    def add_token(self, row: TokenRow) -> None:
        self._audited("token create", row.id, lambda: self.store.put_token(row))

    def revoke_token(self, token_id: str) -> None:
        def revoke() -> None:
            if not self.store.delete_token(token_id):
                raise BoxError(f"token {token_id}: no such token (see `box token ls`)")
        self._audited("token revoke", token_id, revoke)

    def release(self, name: str, keep: bool = False) -> None:
        self._audited("release", name, lambda: release(self.runtime, self.images, self.find(name), keep))

    @contextmanager
    def leased(self, pool: str, project: str | None = None, name: str | None = None,
               timeout: float = 0.0) -> Iterator["LeasedBox"]:
        """`with host.leased("coders") as box: box.run(["echo", "hi"])`, released after."""
        row = self.acquire(pool, project, name, timeout)
        try:
            yield LeasedBox(self, row)
        finally:
            fresh = self.store.box(row.id)
            if fresh is not None:
                self.release(fresh.id)

    def project_of_pool(self, pool: str) -> str:
        projects = sorted({p.project for p in self.store.pools() if p.name == pool})
        if len(projects) == 1:
            return projects[0]
        if not projects:
            raise BoxError(f"pool {pool}: no such pool (see `box pool ls`)")
        raise BoxError(f"pool {pool}: exists in several projects ({', '.join(projects)}); give -p")

    def delete_project(self, bf: "Boxfile", project: str | None = None) -> list[str]:
        from a3s_box.orchestrator.desired import project_name

        proj = project_name(bf, project)
        gone: list[str] = []
        for pool in self.store.pools(proj):  # first: a filler finishing a boot then undoes it
            self.store.delete_pool(proj, pool.name)
        for row in reversed(self.store.boxes(proj)):
            self.runtime.destroy(row, self.images)
            gone.append(row.name)
        for b in self.store.image_bindings(proj):
            self.store.delete_image_binding(proj, b.name)
        return gone


__all__ = ["ApplyResult", "BoxInfo", "Host", "LeasedBox"]
