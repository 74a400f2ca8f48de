"""The host's disk budget: a box is created only if every disk on the host that could
still grow (declared size minus what is written) fits, with a margin, in the free space
of the home's file system. A guest that fills its disk then finds its own disk full,
never the host's. The overcommit factor (A3S_BOX_DISK_OVERCOMMIT, default 1: none)
lets an operator bet that boxes never fill their disks."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from a3s_box.disks.qcow2 import allocated, virtual_size

MARGIN = 256 << 20  # kept free for the state store, logs and the host itself


@dataclass(frozen=True)
class Budget:
    free: int
    may_write: int  # what the other disks may still grow by
    needed: int  # this disk's declared size
    overcommit: float

    @property
    def fits(self) -> bool:
        return self.may_write + self.needed + MARGIN <= self.free * self.overcommit


def overcommit() -> float:
    try:
        return max(1.0, float(os.environ.get("A3S_BOX_DISK_OVERCOMMIT", "1")))
    except ValueError:
        return 1.0


def budget(new_disk: Path, others: list[Path], where: Path) -> Budget:
    may_write = sum(max(0, virtual_size(d) - allocated(d)) for d in others if d != new_disk)
    return Budget(free=shutil.disk_usage(where).free, may_write=may_write,
                  needed=max(0, virtual_size(new_disk) - allocated(new_disk)), overcommit=overcommit())
