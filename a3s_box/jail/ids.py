"""Per-box uids and per-template gids, from a range reserved for a3s-box.

A VMM runs as a uid no other process on the host has, so a VMM taken over by its guest
can touch only files given to that uid: its own disk overlay, its console log, its
sockets. Clones of one template share the template's gid (QEMU 7.2 opens a template's
RAM file read-write even to map it privately; docs/security.md says what that leaves).

HOME/jail-ids.json maps names to ids under an flock; an entry whose owner is gone (the
`alive` test) is free again.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

from a3s_box.json_document import JsonDocument

# Far above what distributions hand out (useradd: 1000-60000; systemd's dynamic users
# 61184-65519; container sub-uid ranges usually start at 100000 with 65536 each).
UID_BASE = 1_610_000_000
UID_SPAN = 1_000_000


class IdTable:
    def __init__(self, path: Path, base: int = UID_BASE, span: int = UID_SPAN) -> None:
        """BASE, SPAN: the ids handed out (without root: the box user namespace's 1..,
        a3s_box/subids.py)."""
        self._doc = JsonDocument(path, path.with_suffix(".lock"))
        self._base, self._span = base, span

    def allocate(self, name: str, alive: Callable[[str], bool]) -> int:
        """NAME's id: the one it has, or a free one (first probing from a hash of NAME).
        A table that cannot be read is rebuilt: its owners are asked again (`alive`)."""
        with self._doc.edit(corrupt_as_empty=True) as table:
            live = {k: int(v) for k, v in table.items() if k == name or alive(k)}
            if name not in live:
                taken = set(live.values())
                slot = zlib.crc32(name.encode()) % self._span
                while self._base + slot in taken:
                    slot = (slot + 1) % self._span
                live[name] = self._base + slot
            table.clear()
            table.update(live)
            return live[name]

    def release(self, name: str) -> None:
        with self._doc.edit(corrupt_as_empty=True) as table:
            table.pop(name, None)
