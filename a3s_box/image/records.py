"""The image index: which names point at which manifest, under images/index.json.

The store owns this file (not the state database): JSON written atomically
(temp file + rename) while holding an flock on images/index.lock, so concurrent
`box` processes never lose each other's records.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from a3s_box.errors import ImageError
from a3s_box.json_document import CorruptDocument, Document, JsonDocument
from a3s_box.image.manifest import ImageConfig


@dataclass(frozen=True)
class ImageRecord:
    name: str  # canonical reference, --tag name, or the absolute path imported
    digest: str  # manifest digest "sha256:..."
    config: ImageConfig
    size: int  # bytes of compressed blobs (manifest + config + layers)
    last_used: float  # unix time
    config_digest: str = ""
    layers: tuple[str, ...] = ()
    source: str = ""  # the reference pulled, or the path imported
    source_digest: str = ""  # for imports: what identified the source's content
    blobs: tuple[str, ...] = field(default=())  # every blob this image needs

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "digest": self.digest, "config": self.config.to_json(),
                "size": self.size, "last_used": self.last_used, "config_digest": self.config_digest,
                "layers": list(self.layers), "source": self.source,
                "source_digest": self.source_digest, "blobs": list(self.blobs)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ImageRecord":
        return cls(d["name"], d["digest"], ImageConfig.from_json(d.get("config", {})),
                   int(d.get("size", 0)), float(d.get("last_used", 0)), d.get("config_digest", ""),
                   tuple(d.get("layers", ())), d.get("source", ""), d.get("source_digest", ""),
                   tuple(d.get("blobs", ())))


class RecordIndex:
    def __init__(self, root: Path) -> None:
        self.path = root / "index.json"
        self._doc = JsonDocument(self.path, root / "index.lock")

    @contextmanager
    def locked(self) -> Iterator[dict[str, ImageRecord]]:
        """Read-modify-write under the lock; the dict yielded is saved on clean exit."""
        try:
            with self._doc.edit() as doc:
                records = self._decode(doc)
                before = dict(records)
                yield records
                if records != before:
                    doc.update({"version": 1,
                                "images": [r.to_json() for _, r in sorted(records.items())]})
        except CorruptDocument as e:
            raise self._corrupt(e) from e

    def snapshot(self) -> dict[str, ImageRecord]:
        try:
            return self._decode(self._doc.read())
        except CorruptDocument as e:
            raise self._corrupt(e) from e

    def _decode(self, doc: Document) -> dict[str, ImageRecord]:
        try:
            return {d["name"]: ImageRecord.from_json(d) for d in doc.get("images", [])}
        except (ValueError, KeyError, TypeError) as e:
            raise self._corrupt(e) from e

    def _corrupt(self, why: object) -> ImageError:
        return ImageError(str(self.path), f"image index is corrupt: {why}")


def touched(r: ImageRecord, now: float) -> ImageRecord:
    return replace(r, last_used=now)
