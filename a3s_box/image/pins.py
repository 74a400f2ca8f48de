"""Pins: blobs the store must keep though no image record names them (the build cache's
intermediate images), under images/pins.json as NAME -> {blobs, data}.

A JsonDocument like the image index. The store's garbage collection treats every pinned
blob as live; unpinning lets the next sweep take what nothing else holds."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from a3s_box.errors import ImageError
from a3s_box.json_document import CorruptDocument, Document, JsonDocument

Pin = dict[str, Any]  # {"blobs": [digest, ...], "data": {...}}


class Pins:
    def __init__(self, root: Path) -> None:
        self.path = root / "pins.json"
        self._doc = JsonDocument(self.path, root / "pins.lock")

    @contextmanager
    def locked(self) -> Iterator[dict[str, Pin]]:
        """Read-modify-write under the lock; saved on a clean exit when changed."""
        try:
            with self._doc.edit() as doc:
                pins = self._decode(doc)
                yield pins
                if pins or doc:
                    doc.update({"version": 1, "pins": pins})
        except CorruptDocument as e:
            raise self._corrupt(e) from e

    def snapshot(self) -> dict[str, Pin]:
        try:
            return self._decode(self._doc.read())
        except CorruptDocument as e:
            raise self._corrupt(e) from e

    def blobs(self) -> set[str]:
        return {b for p in self.snapshot().values() for b in p.get("blobs", ())}

    def _decode(self, doc: Document) -> dict[str, Pin]:
        if not doc:
            return {}
        pins = doc.get("pins")
        if not isinstance(pins, dict):
            raise self._corrupt("no `pins` mapping")
        return pins

    def _corrupt(self, why: object) -> ImageError:
        return ImageError(str(self.path), f"pins are corrupt: {why}")
