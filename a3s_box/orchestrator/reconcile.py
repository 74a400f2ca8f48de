"""The reconcile loop of `box serve`: the host converges by itself between applies.

Level-triggered, like kubelet's sync loop: every PERIOD seconds, and at once when woken
(an acquire or release in the server), one pass over every project in the state store:

- crash recovery: what an interrupted command left half done (the journal) is finished
  or undone;
- declared boxes and leased pool boxes (not idle members, not forks) whose VM ended while
  the store says running are started again as their `restart` policy says (always |
  on-failure | no; leased boxes: always),
  with back-off: at once the first time, then 2s doubling to 5m; a box that has run 10
  minutes since its last restart starts from zero again. `box ps` shows the count, the
  last exit and the next try (a RestartRecord in the state store);
- pools: refilled to min_ready, idle surplus reclaimed, leases past their lifetime ended
  (PoolKeeper.converge), instead of the filler processes acquire and release spawn when
  no server runs.

A pass takes the home's lock without waiting: while a `box` command changes the host,
the boxes are left to it until the next pass. `decide_restart` is pure and tested as a
table; the loop around it owns the clock and the I/O.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from a3s_box import audit
from a3s_box.drivers.base import VmState
from a3s_box.errors import BoxError, StateError
from a3s_box.home import Home
from a3s_box.orchestrator.lifecycle import BoxRuntime, ImageBackend
from a3s_box.orchestrator.lock import home_lock
from a3s_box.orchestrator.pools import PoolKeeper, pool_lock
from a3s_box.orchestrator.state import BoxRow, RestartRecord
from a3s_box.orchestrator.wakeup import registered

PERIOD = 2.0
BACKOFF_BASE = 2.0
BACKOFF_CAP = 300.0
RESET_AFTER = 600.0  # seconds of running after which the restart count starts again
RESTART_TIMEOUT = 120.0
POLICIES = ("always", "on-failure", "no")


def backoff(restarts: int) -> float:
    """Seconds before restart number RESTARTS+1: none for the first, then 2, 4, ... 300."""
    return 0.0 if restarts <= 0 else min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (restarts - 1))


def decide_restart(box_id: str, policy: str | None, clean: bool, reason: str,
                   record: RestartRecord | None, now: float) -> RestartRecord | None:
    """For a box whose VM is gone: the record to keep (its next_try says when to start it
    again), or None to leave it down (policy `no`, or `on-failure` after a clean power-off)."""
    policy = policy or "always"
    if policy == "no" or (policy == "on-failure" and clean):
        return None
    if record is not None and record.next_try > 0:
        return record  # this exit is known already: waiting for its turn
    count = record.count if record is not None else 0
    return RestartRecord(box_id, count, reason, now, now + backoff(count))


def after_restart(record: RestartRecord, now: float, error: str = "") -> RestartRecord:
    """The record once a restart was tried: counted; on ERROR, the next try backed off."""
    if error:
        return replace(record, count=record.count + 1, last_exit=f"restart failed: {error}",
                       exited_at=now, next_try=now + backoff(record.count + 1))
    return replace(record, count=record.count + 1, next_try=0.0)


def restart_summary(record: RestartRecord | None, now: float) -> str:
    """For `box ps`: "3 restarts, last exit: REASON[, next try in 8s]"."""
    if record is None:
        return ""
    text = f"{record.count} restart{'s' if record.count != 1 else ''}, last exit: {record.last_exit}"
    if record.next_try > 0:
        text += f", next try in {max(0.0, record.next_try - now):.0f}s"
    return text


class Reconciler:
    """One loop per home (`run` on a thread of `box serve`); `wake` runs a pass soon."""

    def __init__(self, home: Home, runtime: BoxRuntime, images: ImageBackend,
                 period: float = PERIOD, clock: Callable[[], float] = time.time,
                 log: Callable[[str], None] = lambda line: None) -> None:
        self.home, self.runtime, self.images = home, runtime, images
        self.period, self.clock, self.log = period, clock, log
        self._wake = threading.Event()
        self.passes = 0

    def wake(self) -> None:
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        with registered(self.home.root, self.wake):
            while not stop.is_set():
                try:
                    for line in self.pass_once():
                        self.log(line)
                except BoxError as e:  # the next pass tries again; a loop never dies of one box
                    self.log(f"reconcile: {e}")
                self._wake.wait(self.period)
                self._wake.clear()

    def pass_once(self) -> list[str]:
        """One pass; what it did, a line each."""
        self.passes += 1
        done: list[str] = []
        with _unless_busy(self.home.lock_file) as got:
            if got:
                done += self.runtime.recover(self.images)
                for row in self.runtime.store.boxes():
                    # declared boxes, and leased pool boxes (their holder's: after a host
                    # restart they come back rather than being replaced)
                    if row.origin is None and row.status == "running" and (row.pool is None or row.lease):
                        done += self._box(row)
        for pool in self.runtime.store.pools():
            with pool_lock(self.home.root, pool.project, pool.name, wait=False) as mine:
                if not mine:
                    continue  # a filler or an apply is at it
                keeper = PoolKeeper(self.runtime, self.images)
                for step, outcome in keeper.converge(pool.project, pool.name, restarts_leased=True):
                    done.append(f"pool {pool.project}.{pool.name}: {step.op} {step.member or 'member'} "
                                f"({step.reason}): {outcome}")
        return done

    def _box(self, row: BoxRow) -> list[str]:
        store, now = self.runtime.store, self.clock()
        seen = self.runtime.observe(row)
        record = store.restart_record(row.id)
        if seen is None or seen.state is VmState.RUNNING:
            if record is not None and record.next_try == 0 and now - record.exited_at > RESET_AFTER:
                store.delete_restart_record(row.id)  # it has run long enough: back-off from zero
            return []
        reason = seen.exit_reason or "the VM is gone"
        plan = decide_restart(row.id, row.restart, seen.clean, reason, record, now)
        if plan is None:
            if record is None or record.next_try > 0 or record.last_exit != reason:
                store.put_restart_record(RestartRecord(row.id, record.count if record else 0, reason, now, 0.0))
                return [f"box {row.id}: VM ended ({reason}); left down (restart: {row.restart or 'always'})"]
            return []
        if plan != record:
            store.put_restart_record(plan)
        if now < plan.next_try:
            return []
        try:
            self.runtime.start(row, RESTART_TIMEOUT)
        except BoxError as e:
            store.put_restart_record(after_restart(plan, self.clock(), str(e)))
            self._audit(row, f"failed: {e}", plan.count + 1, reason)
            return [f"box {row.id}: restart {plan.count + 1} failed: {e}"]
        store.put_restart_record(after_restart(plan, self.clock()))
        self._audit(row, "ok", plan.count + 1, reason)
        return [f"box {row.id}: restarted ({plan.count + 1}; it had ended: {reason})"]

    def _audit(self, row: BoxRow, result: str, count: int, reason: str) -> None:
        """A restart in the audit log, so in `box events` and the API's event stream:
        how a lease's holder learns that its box's VM was booted again (its processes and
        memory are gone; its disk is kept)."""
        with audit.acting_as("reconcile"):
            audit.record(self.home.root, "restart", row.id, result, restarts=count, exited=reason,
                         lease=row.lease or None)


@contextmanager
def _unless_busy(lock_file: Path) -> Iterator[bool]:
    """The home's lock if no `box` command holds it (True), else nothing (False)."""
    held = home_lock(lock_file, wait=False)
    try:
        held.__enter__()
    except StateError:
        yield False
        return
    try:
        yield True
    finally:
        held.__exit__(None, None, None)
