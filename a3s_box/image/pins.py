"""Pins: blobs the store must keep though no image record names them (the build cache's
intermediate images), under images/pins.json as NAME -> {blobs, data}.

Written like the image index: JSON replaced atomically under an flock. The store's
garbage collection treats every pinned blob as live; unpinning lets the next sweep take
what nothing else holds."""
from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from a3s_box.atomic import write_text_atomic
from a3s_box.errors import ImageError

Pin = dict[str, Any]  # {"blobs": [digest, ...], "data": {...}}


class Pins:
    def __init__(self, root: Path) -> None:
        self.path = root / "pins.json"
        self.lock_path = root / "pins.lock"

    @contextmanager
    def locked(self) -> Iterator[dict[str, Pin]]:
        """Read-modify-write under the lock; saved on a clean exit when changed."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            pins = self._read()
            before = json.dumps(pins, sort_keys=True)
            yield pins
            if json.dumps(pins, sort_keys=True) != before:
                self._write(pins)

    def snapshot(self) -> dict[str, Pin]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_SH)
            return self._read()

    def blobs(self) -> set[str]:
        return {b for p in self.snapshot().values() for b in p.get("blobs", ())}

    def _read(self) -> dict[str, Pin]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise ImageError(str(self.path), f"pins are corrupt: {e}") from e
        pins = doc.get("pins") if isinstance(doc, dict) else None
        if not isinstance(pins, dict):
            raise ImageError(str(self.path), "pins are corrupt: no `pins` mapping")
        return pins

    def _write(self, pins: dict[str, Pin]) -> None:
        write_text_atomic(self.path, json.dumps({"version": 1, "pins": pins}, indent=1, sort_keys=True))
