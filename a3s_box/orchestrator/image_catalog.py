"""`host.image_catalog`: the home's images as people manage them (`box image pull |
import | ls | inspect | export | rm | prune`): the image store, plus what needs the
host's boxes. It owns the rule that pruning never removes an image a box uses (the
state store says which), and what `inspect` shows of an image beyond its record.

(`host.images` stays the ImageStore itself, which plan and apply hand to the executor.)
"""
from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from a3s_box.orchestrator.state import StateStore

if TYPE_CHECKING:
    from a3s_box.image import ImageRecord, ImageStore


class ImageCatalog:
    def __init__(self, store: "ImageStore", state: StateStore) -> None:
        self._store = store
        self._state = state

    def pull(self, ref: str, progress: bool = False) -> "ImageRecord":
        """Pull REF (host[:port]/repo:tag, repo@sha256:..., or a Docker Hub name)."""
        return self._store.pull(ref, progress=progress)

    def import_path(self, path: Path, tag: str | None = None) -> "ImageRecord":
        """Import an OCI image layout folder or a `docker save` tarball, named TAG."""
        return self._store.import_path(path, tag=tag)

    def list(self) -> builtins.list["ImageRecord"]:
        return self._store.list()

    def get(self, name: str) -> "ImageRecord | None":
        """By name, reference or digest; None when the store has no such image."""
        return self._store.get(name)

    def inspect(self, record: "ImageRecord") -> dict[str, Any]:
        """What an image's record does not carry: its layers, where it came from, its
        OCI config (labels included) and the box defaults its dev.a3s.box.* labels give."""
        from a3s_box.image.box_labels import box_defaults

        config = json.loads(self._store.blobs.read(record.config_digest)) if record.config_digest else {}
        return {"layers": list(record.layers), "source": record.source, "config": config,
                "box_defaults": box_defaults(record.name, record.config.labels)}

    def export(self, record: "ImageRecord", dest: Path) -> None:
        """Write the image as an OCI image layout folder DEST."""
        from a3s_box.image.layout import export_layout

        export_layout(self._store.blobs, record.name, record.digest, dest)

    def remove(self, name_or_digest: str) -> builtins.list["ImageRecord"]:
        """Remove an image by name, or every name of a digest; ImageError when unknown."""
        return self._store.remove(name_or_digest)

    def in_use(self) -> set[str]:
        """The images (digests or names) boxes use."""
        return set(self._state.images_in_use())

    def prune(self, max_size: int | None = None) -> builtins.list["ImageRecord"]:
        """Remove the images no box uses and every blob no image needs; with MAX_SIZE
        (bytes), only least recently used ones until the store fits in it."""
        if max_size is None:
            return self._store.prune(self.in_use())
        return self._store.evict_to(max_size, self.in_use())
