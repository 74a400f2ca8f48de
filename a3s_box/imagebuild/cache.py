"""The build cache: a step's key (its parent image's digest, the instruction as it runs,
the content of what it copies) -> the image that step made. Entries are pins in the
image store, so their blobs outlive garbage collection until `box image prune`.

Keys are computed by the builder (steps.py says what goes in); this only stores them."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from a3s_box.imagebuild.oci import ImageState
from a3s_box.image.store import ImageStore

PREFIX = "build-cache/"


def step_key(parent_digest: str, instruction: str, extra: Any = None) -> str:
    canonical = json.dumps([parent_digest, instruction, extra], sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


class BuildCache:
    def __init__(self, store: ImageStore) -> None:
        self.store = store

    def get(self, key: str) -> str | None:
        """The manifest digest a step with KEY made, if all its blobs are still here."""
        pin = self.store.pins.snapshot().get(PREFIX + key)
        if not pin:
            return None
        if not all(self.store.blobs.has(b) for b in pin.get("blobs", ())):
            return None
        digest = pin.get("data", {}).get("manifest")
        return str(digest) if digest else None

    def put(self, key: str, state: ImageState) -> None:
        assert state.digest, "write the state before caching it"
        with self.store.pins.locked() as pins:
            pins[PREFIX + key] = {"blobs": list(state.blobs_of), "data": {"manifest": state.digest}}
