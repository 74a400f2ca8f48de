"""`host.snapshots`: the snapshot templates boxes start from and the frozen disk layers
forks share (`box snapshot ls | rm | prune`), each with the boxes whose disks sit on it
(read from their disks' backing chains, for the boxes of the state store). It owns the
rule that a template or layer a box's disk sits on is not removed.

The drivers that keep snapshots hand over their stores through drivers.registry (today
QEMU's alone).
"""
from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from a3s_box.errors import BoxError
from a3s_box.home import Home
from a3s_box.orchestrator.state import StateStore

if TYPE_CHECKING:
    from a3s_box.drivers.base import SnapshotStore


@dataclass(frozen=True)
class SnapshotInfo:
    """A template or fork layer, as its meta.json says (values as written there)."""

    key: str  # its folder: "<snapshot key>.<build>", or "fork-<time>-<random>"
    kind: str  # "template", "retired" (failed to restore: only its disk is left) or "fork"
    image: str  # the image digest a template was booted from ("" for a fork layer)
    source: str  # the box a fork layer was frozen from ("" for a template)
    vcpus: int | None
    memory_mib: int | None
    accel: str | None
    bytes: int  # disk and memory it holds on the host
    created: float  # seconds since the epoch (0 when unknown)
    boxes: tuple[str, ...]  # the boxes whose disks sit on it, sorted


class Snapshots:
    def __init__(self, home: Home, state: StateStore) -> None:
        self._home = home
        self._state = state

    def _store(self) -> "SnapshotStore":
        from a3s_box.drivers.registry import snapshot_stores

        (store,) = snapshot_stores(self._home).values()  # one driver keeps snapshots today
        return store

    def _users(self, store: "SnapshotStore") -> dict[str, builtins.list[str]]:
        """Folder name -> the boxes whose disks sit on it."""
        disks = {r.name: self._home.box_dir(r.id) / "disk.qcow2" for r in self._state.boxes()}
        return store.users(disks)

    def list(self) -> builtins.list[SnapshotInfo]:
        """Templates and fork layers, in key order, with the boxes on each."""
        store = self._store()
        users = self._users(store)
        return [SnapshotInfo(key=t["key"], kind=t["kind"], image=str(t.get("image", "")),
                             source=t.get("source", ""), vcpus=t.get("vcpus"),
                             memory_mib=t.get("memory_mib"), accel=t.get("accel"),
                             bytes=t["disk_and_memory_bytes"], created=t.get("created", 0),
                             boxes=tuple(sorted(users.get(t["key"], []))))
                for t in store.entries()]

    def remove(self, keys: Sequence[str],
               on_removed: Callable[[str], None] = lambda key: None) -> builtins.list[str]:
        """Remove templates or fork layers, each named by its key or a prefix unique when
        this is called, in order, calling ON_REMOVED with each key removed. BoxError at
        the first that is unknown, ambiguous or under a box's disk (the ones before it
        are removed)."""
        store = self._store()
        users = self._users(store)
        known = [t["key"] for t in store.entries()]
        gone = []
        for k in keys:
            match = [x for x in known if x.startswith(k)]
            if len(match) != 1:
                raise BoxError(f"snapshot {k}: {'no such snapshot' if not match else 'ambiguous prefix'} "
                               "(see `box snapshot ls`)")
            boxes = users.get(match[0], [])
            if boxes:
                raise BoxError(f"snapshot {match[0][:12]}: the disks of boxes {', '.join(sorted(boxes))} "
                               "sit on it; delete them first")
            store.remove(match[0])
            on_removed(match[0])
            gone.append(match[0])
        return gone

    def prune(self, on_removed: Callable[[str], None] = lambda key: None) -> builtins.list[str]:
        """Remove every template and fork layer no box's disk sits on (and what a crashed
        fork left), calling ON_REMOVED with each key removed."""
        store = self._store()
        gone = []
        for key in store.unused(self._users(store)):
            store.remove(key)
            on_removed(key)
            gone.append(key)
        return gone
