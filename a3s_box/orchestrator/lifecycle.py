"""Side effects on one box: create (disk + VM), start, stop, destroy.

Every step that leaves something on the host is journaled first, and undone on
failure or Ctrl-C, so an interrupted create never leaves a half-made box behind.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from a3s_box.disks.budget import MARGIN, budget
from a3s_box.drivers import get_driver
from a3s_box.drivers.base import BoxLaunch, Driver, VmHandle, VmObservation, VmState
from a3s_box.errors import BoxError, DiskBudgetError, DriverError, GuestError
from a3s_box.home import Home
from a3s_box.orchestrator.launch import launch_from_json, launch_to_json
from a3s_box.orchestrator.state import BoxRow, StateStore
from a3s_box.units import format_space

STOP_TIMEOUT = 10.0


class ImageBackend(Protocol):
    """The part of image.ImageStore that box lifecycle needs."""

    def create_box_disk(self, record: Any, dest: Path, size: int | None = None) -> Path: ...
    def remove_box_disk(self, dest: Path) -> None: ...


@dataclass(frozen=True)
class BoxRuntime:
    home: Home
    store: StateStore

    def driver(self, name: str) -> Driver:
        return get_driver(name, self.home)

    def observe(self, row: BoxRow) -> VmObservation | None:
        if row.handle is None:
            return None
        handle = VmHandle.from_json(row.handle)
        return self.driver(handle.driver).observe(handle)

    def connect(self, row: BoxRow, timeout: float = 10.0) -> socket.socket:
        if row.status == "paused":
            raise GuestError(row.name, f"is paused (resume it with `box resume {row.name}`)")
        if row.status == "parked":
            raise GuestError(row.name, f"is a parked member of pool {row.pool} "
                                       f"(`box pool acquire {row.pool}` runs one)")
        if row.status != "running" or row.handle is None:
            raise GuestError(row.name, f"is {row.status}, not running (start it with `box start {row.name}`)")
        handle = VmHandle.from_json(row.handle)
        driver = self.driver(handle.driver)
        seen = driver.observe(handle)
        if seen.state is not VmState.RUNNING:
            raise GuestError(row.name, f"its VM has exited ({seen.exit_reason or 'unknown reason'}); "
                                       "`box apply` re-creates it")
        return driver.connect(handle, timeout)

    @contextmanager
    def client(self, row: BoxRow, timeout: float = 10.0) -> Iterator[Any]:
        from a3s_box.guest.client import GuestClient

        c = GuestClient(self.connect(row, timeout), box=row.name)
        try:
            c.hello(timeout)
            yield c
        finally:
            c.close()

    # --- create / destroy ------------------------------------------------------
    def create(self, row: BoxRow, launch: BoxLaunch, images: ImageBackend, record: Any,
               timeout: float) -> BoxRow:
        """Make the disk, boot the VM, record it as running. All or nothing."""
        entry = self.store.journal_begin(row.id, "create", _owner())
        handle: VmHandle | None = None
        driver = self.driver(row.driver)
        try:
            self.store.put_box(_with(row, status="creating", handle=None))
            launch.rundir.mkdir(parents=True, exist_ok=True)
            _check_free_space(row.name, launch.rundir)
            if launch.disk is not None:
                images.create_box_disk(record, launch.disk, launch.disk_size)
                self._check_disk_budget(row.id, launch.disk)
            _write_json(launch.rundir / "box.json", launch_to_json(launch))
            handle = driver.start(launch, timeout)
            status = "parked" if "parked" in handle.extra else "running"
            done = _with(row, status=status, handle=handle.to_json(), driver=handle.driver)
            self.store.put_box(done)
            return done
        except BaseException:
            # Ctrl-C included: take down what this call made, then re-raise.
            if handle is not None:
                _quietly(lambda: driver.stop(handle, STOP_TIMEOUT))
            _quietly(lambda: self._remove_files(launch.rundir, images))
            _quietly(lambda: self.store.delete_box(row.id))
            raise
        finally:
            self.store.journal_end(entry)

    def fork(self, source: BoxRow, name: str, timeout: float) -> BoxRow:
        """A new box NAME in SOURCE's project from SOURCE's memory and disk at this
        instant (SOURCE keeps running). No Boxfile manages it: `box delete` removes it.
        All or nothing, like create."""
        if source.status != "running" or source.handle is None:
            raise GuestError(source.name, f"is {source.status}: only a running box can be forked")
        new_id = f"{source.project}.{name}"
        if self.store.box(new_id) is not None:
            raise BoxError(f"box {name}: already exists in project {source.project}")
        src_launch = self._launch(source)
        rundir = self.home.box_dir(new_id)
        # a restart of the fork boots cold from its own disk, under its own name
        launch = replace(src_launch, box_id=new_id, rundir=rundir, disk=rundir / "disk.qcow2",
                         boot="cold", park=False, config=replace(src_launch.config, hostname=name))
        row = BoxRow(id=new_id, project=source.project, name=name, spec_hash=source.spec_hash,
                     spec=source.spec, image=source.image, driver=source.driver, handle=None,
                     status="creating", origin=f"fork:{source.id}")
        entry = self.store.journal_begin(new_id, "create", _owner())
        try:
            self.store.put_box(row)
            rundir.mkdir(parents=True, exist_ok=True)
            _check_free_space(name, rundir)
            _write_json(rundir / "box.json", launch_to_json(launch))
            handle = self.driver(source.driver).fork(VmHandle.from_json(source.handle), src_launch,
                                                     launch, timeout)
            done = _with(row, status="running", handle=handle.to_json())
            self.store.put_box(done)
            return done
        except BaseException:
            _quietly(lambda: self._remove_files(rundir, None))
            _quietly(lambda: self.store.delete_box(new_id))
            raise
        finally:
            self.store.journal_end(entry)

    def create_like(self, source: BoxRow, name: str, images: ImageBackend, timeout: float,
                    owner: str | None = None) -> BoxRow:
        """A new box NAME booted as declared box SOURCE was (its launch record: image,
        resources, network policy, secrets, volumes), on a fresh disk. No Boxfile manages
        it (`box delete` removes it); OWNER: the sandbox token it is made for. Refused when
        two boxes cannot share what SOURCE has: a published host port, a named volume's disk."""
        new_id = f"{source.project}.{name}"
        if self.store.box(new_id) is not None:
            raise BoxError(f"box {name}: already exists in project {source.project}")
        src = self._launch(source)
        if src.network is not None and src.network.policy.ports:
            raise BoxError(f"box {source.name}: publishes host ports, which a second box cannot share: "
                           "make it a pool's template instead, without ports")
        if any(v.kind == "volume" for v in src.volumes):
            raise BoxError(f"box {source.name}: has a named volume, whose disk a second box cannot share")
        record = images.get(source.image)  # type: ignore[attr-defined]
        if record is None:
            raise BoxError(f"box {source.name}: its image {source.image} is no longer in the store")
        rundir = self.home.box_dir(new_id)
        launch = replace(src, box_id=new_id, rundir=rundir, disk=rundir / "disk.qcow2", park=False,
                         config=replace(src.config, hostname=name))
        row = BoxRow(id=new_id, project=source.project, name=name, spec_hash=source.spec_hash, spec=source.spec,
                     image=source.image, driver=source.driver, handle=None, status="creating",
                     origin=f"like:{source.id}", owner=owner)
        return self.create(row, launch, images, record, timeout)

    def _check_disk_budget(self, name: str, disk: Path) -> None:
        """Refuse a box whose disk, with what the other disks here may still write, does
        not fit the free space (a3s_box.disks.budget)."""
        others = [self.home.box_dir(r.id) / "disk.qcow2" for r in self.store.boxes()]
        vols = self.home.root / "volumes"
        if vols.is_dir():
            others += sorted(vols.glob("*/disk.*"))  # named volumes grow too
        b = budget(disk, others, disk.parent)
        if not b.fits:
            raise DiskBudgetError(name, f"its disk ({format_space(b.needed)}) does not fit on this host: "
                              f"{format_space(b.free)} free under {self.home.root}, of which the other "
                              f"boxes' disks may still write {format_space(b.may_write)} and "
                              f"{format_space(MARGIN)} stays free (overcommit x{b.overcommit:g}; "
                              "A3S_BOX_DISK_OVERCOMMIT raises it)")

    def destroy(self, row: BoxRow, images: ImageBackend | None) -> None:
        """VM gone, disk overlay and runtime folder removed, row deleted. Idempotent."""
        entry = self.store.journal_begin(row.id, "delete", _owner())
        try:
            self.stop_vm(row)
            self._remove_files(self.home.box_dir(row.id), images)
            self.store.delete_box(row.id)
            self.store.delete_sandbox(row.id)  # an E2B sandbox ends with its box
        finally:
            self.store.journal_end(entry)

    # --- stop / start ----------------------------------------------------------
    def stop_vm(self, row: BoxRow) -> None:
        if row.handle is None:
            return
        handle = VmHandle.from_json(row.handle)
        self.driver(handle.driver).stop(handle, STOP_TIMEOUT)

    def pause(self, row: BoxRow) -> BoxRow:
        return self._switch(row, "running", "paused", "pause")

    def resume(self, row: BoxRow) -> BoxRow:
        return self._switch(row, "paused", "running", "resume")

    def _switch(self, row: BoxRow, want: str, becomes: str, op: str) -> BoxRow:
        """Pause or resume the VM (its driver's OP) and record the new status."""
        if row.status != want or row.handle is None:
            raise GuestError(row.name, f"is {row.status}: only a {want} box can {op}")
        handle = VmHandle.from_json(row.handle)
        getattr(self.driver(handle.driver), op)(handle)
        done = _with(row, status=becomes)
        self.store.put_box(done)
        return done

    def unpark(self, row: BoxRow, timeout: float) -> BoxRow:
        """Run a parked pool member and start its agent (on acquire)."""
        if row.status != "parked" or row.handle is None:
            raise GuestError(row.name, f"is {row.status}, not parked")
        launch = self._launch(row)
        handle = VmHandle.from_json(row.handle)
        resumed = self.driver(handle.driver).unpark(handle, launch, timeout)
        done = _with(row, status="running", handle=resumed.to_json())
        self.store.put_box(done)
        return done

    def _launch(self, row: BoxRow) -> BoxLaunch:
        """What the box was booted with, from its folder (`box start` needs no Boxfile)."""
        try:
            return launch_from_json(json.loads((self.home.box_dir(row.id) / "box.json").read_text()))
        except (OSError, ValueError, KeyError) as e:
            raise DriverError(row.name, f"cannot start: its launch record is unreadable ({e}); "
                                        "delete it and apply again") from e

    def stop(self, row: BoxRow) -> BoxRow:
        self.stop_vm(row)
        done = _with(row, status="stopped", handle=None)
        self.store.put_box(done)
        return done

    def start(self, row: BoxRow, timeout: float) -> BoxRow:
        """Boot a stopped (or exited) box again from its own disk."""
        # its own disk has moved on from any template: a restart always boots cold
        launch = replace(self._launch(row), boot="cold", park=False)
        if row.handle is not None:
            _quietly(lambda: self.stop_vm(row))
        handle = self.driver(row.driver).start(launch, timeout)
        done = _with(row, status="running", handle=handle.to_json())
        self.store.put_box(done)
        return done

    # --- crash recovery --------------------------------------------------------
    def recover(self, images: ImageBackend | None) -> list[str]:
        """Finish or undo what an interrupted (`kill -9`ed) command left half done:
        journaled creates are undone, journaled deletes completed, and box folders that no
        row owns are reaped. Caller holds the home lock. Returns the box ids touched."""
        touched: list[str] = []
        busy: set[str] = set()
        for entry in self.store.journal():
            if _owner_alive(entry.detail):
                busy.add(entry.box_id)  # a pool filler at work, not a crash
                continue
            row = self.store.box(entry.box_id)
            rundir = self.home.box_dir(entry.box_id)
            if row is not None and row.handle is not None:
                _quietly(lambda: self.stop_vm(row))
            reap_processes(rundir)
            if entry.action in ("create", "delete") or (row is not None and row.status == "creating"):
                self._remove_files(rundir, images)
                self.store.delete_box(entry.box_id)
            self.store.journal_end(entry.id)
            touched.append(entry.box_id)
        known = {r.id for r in self.store.boxes()}
        if self.home.boxes.exists():
            for rundir in sorted(self.home.boxes.iterdir()):
                if rundir.is_dir() and rundir.name not in known and rundir.name not in busy:
                    reap_processes(rundir)
                    self._remove_files(rundir, images)
                    touched.append(rundir.name)
        return touched

    def _remove_files(self, rundir: Path, images: ImageBackend | None) -> None:
        disk = rundir / "disk.qcow2"
        if images is not None and disk.exists():
            images.remove_box_disk(disk)
        shutil.rmtree(rundir, ignore_errors=True)


# A box's overlay grows as its guest writes; below this the guest would soon hit a full
# disk, and QEMU stalls a VM whose disk write fails, so refuse up front.
MIN_FREE_BYTES = 64 << 20


def _check_free_space(name: str, rundir: Path) -> None:
    free = shutil.disk_usage(rundir).free
    if free < MIN_FREE_BYTES:
        raise DriverError(name, f"No space left on device: {format_space(free)} free under "
                                f"{rundir.parent}, a new box needs at least {format_space(MIN_FREE_BYTES)}")


def _with(row: BoxRow, **changes: Any) -> BoxRow:
    from dataclasses import replace

    return replace(row, **changes)


def _write_json(path: Path, data: object) -> None:
    # 0600: a box's launch record holds the values of its secrets
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def _quietly(fn: Any) -> None:
    try:
        fn()
    except (BoxError, OSError):
        pass


def _owner() -> str:
    import os

    return f"pid={os.getpid()} start={_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    """When PID started (clock ticks since boot): with the pid, one process for good."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""


def _owner_alive(detail: str) -> bool:
    """Whether the process that journaled an action is still running it. This process's
    own entries are in flight (a server's reconcile loop beside its requests), unless the
    entry is older than its start (the same pid reused: a container's pid 1 restarted)."""
    import os

    fields = dict(f.split("=", 1) for f in detail.split() if "=" in f)
    try:
        pid = int(fields.get("pid") or 0)
    except ValueError:
        return False
    if pid <= 0:
        return False
    if "start" not in fields:  # journaled by an older release: no start time to compare
        if pid == os.getpid():
            return False
    elif fields["start"] != _start_time(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_processes(rundir: Path) -> list[int]:
    """Kill every process whose command line names this box folder (its supervisor and
    VM), so nothing outlives a box whose record was lost. Returns the pids killed."""
    import os
    import signal

    needle = str(rundir).encode()
    killed: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        # the folder itself or a path inside it, never a sibling sharing its prefix
        if needle + b"/" in cmdline or needle + b"\0" in cmdline or needle + b"," in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except ProcessLookupError:
                pass
    return killed
