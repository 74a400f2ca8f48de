"""Where a3s-box keeps its state and caches: everything lives under one folder.

$A3S_BOX_HOME (default ~/.local/share/a3s-box), overridable with `box --home`.
"""
from __future__ import annotations

import os
import sys
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
        """Makes the home (0700: its state, tokens, keys and logs are its owner's
        alone); an existing home open to others is closed, and said so on stderr."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = self.root.stat().st_mode & 0o777
        if mode & 0o077:
            self.root.chmod(0o700)
            sys.stderr.write(f"a3s-box: {self.root} was open to other users (mode {mode:04o}); "
                             "made it 0700\n")
        for d in (self.images, self.boxes, self.cache):
            d.mkdir(exist_ok=True)
        return self
