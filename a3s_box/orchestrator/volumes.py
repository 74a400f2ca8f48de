"""`host.volumes`: the home's named volumes as people manage them (`box volume ls |
inspect | rm`, `box delete --volumes`, the API): what the volume store holds, and which
boxes of the state store mount each. It owns the rule that a volume a box still mounts
is not removed.
"""
from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import TYPE_CHECKING

from a3s_box.orchestrator.state import StateStore
from a3s_box.volumes import VolumeError, VolumeInfo, VolumeStore

if TYPE_CHECKING:
    from a3s_box.boxfile.model import Boxfile


class Volumes:
    def __init__(self, store: VolumeStore, state: StateStore) -> None:
        self._store = store
        self._state = state

    def list(self, project: str | None = None) -> builtins.list[VolumeInfo]:
        """Every named volume (of PROJECT), in name order."""
        return self._store.list(project)

    def find(self, name: str, project: str | None = None) -> VolumeInfo:
        """By NAME, or PROJECT.NAME; VolumeError when there is none, or one in several projects."""
        return self._store.find(name, project)

    def users(self, volume: VolumeInfo) -> builtins.list[str]:
        """The names of the boxes (of its project) that mount VOLUME, sorted."""
        return sorted(r.name for r in self._state.boxes(volume.project) if any(
            m.get("type") == "volume" and m.get("source") == volume.name
            for m in r.spec.get("volumes") or ()))

    def remove(self, name: str, project: str | None = None) -> VolumeInfo:
        """Remove a volume (NAME or PROJECT.NAME) and its data; VolumeError while a box
        mounts it."""
        v = self.find(name, project)
        users = self.users(v)
        if users:
            raise VolumeError(f"volume {v.name}: in use by box {', '.join(users)}; delete "
                              "that box first")
        self._store.remove(v.project, v.name)
        return v

    def remove_project(self, bf: "Boxfile", project: str | None = None,
                       on_removed: Callable[[VolumeInfo], None] = lambda v: None) -> builtins.list[VolumeInfo]:
        """Remove every named volume of the Boxfile's project and its data, calling
        ON_REMOVED after each. For after `Host.delete_project`: no box of the project is
        left to mount one, so nothing is checked."""
        from a3s_box.orchestrator.desired import project_name

        gone = []
        for v in self._store.list(project_name(bf, project)):
            self._store.remove(v.project, v.name)
            on_removed(v)
            gone.append(v)
        return gone
