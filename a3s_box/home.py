"""Where a3s-box keeps its state and caches: everything lives under one folder.

$A3S_BOX_HOME (default ~/.local/share/a3s-box), overridable with `box --home`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = Path("~/.local/share/a3s-box")


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def resolve(cls, explicit: str | os.PathLike[str] | None = None) -> "Home":
        raw = explicit or os.environ.get("A3S_BOX_HOME") or DEFAULT_HOME
        return cls(Path(raw).expanduser().absolute())

    # --- state -----------------------------------------------------------
    @property
    def state_db(self) -> Path:
        return self.root / "state.db"

    @property
    def lock_file(self) -> Path:
        return self.root / "apply.lock"

    # --- images ----------------------------------------------------------
    @property
    def images(self) -> Path:
        """Content-addressed blobs, image index, unpacked roots and base disks."""
        return self.root / "images"

    # --- boxes -----------------------------------------------------------
    @property
    def boxes(self) -> Path:
        return self.root / "boxes"

    def box_dir(self, box_id: str) -> Path:
        """Per-box runtime folder: disk overlay, sockets, pid files, console log."""
        return self.boxes / box_id

    # --- host artifacts (kernel, guest init, initramfs, probe results) ----
    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def ensure(self) -> "Home":
        for d in (self.root, self.images, self.boxes, self.cache):
            d.mkdir(parents=True, exist_ok=True)
        return self
