"""The image a build has made so far: its OCI config document and its layers, written
to the store's blobs as an image manifest after each step (what the build cache keys
the next step by).

Pure but for `load` and `write`, which read and write blobs."""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from typing import Any

from a3s_box.imagebuild.diff import LayerFile
from a3s_box.image.blobs import BlobStore
from a3s_box.image.manifest import OCI_MANIFEST, host_platform

LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA = "application/vnd.oci.image.config.v1+json"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class ImageState:
    doc: dict[str, Any]  # the OCI image config document
    layers: tuple[dict[str, Any], ...] = ()  # manifest layer descriptors
    digest: str = ""  # the manifest's, once written
    blobs_of: tuple[str, ...] = field(default=())  # manifest, config, layers: once written

    @classmethod
    def scratch(cls) -> "ImageState":
        osname, arch = host_platform()
        # no time in it: `FROM scratch` must key the next step the same way in every build
        return cls({"architecture": arch, "os": osname, "created": "1970-01-01T00:00:00Z", "config": {},
                    "rootfs": {"type": "layers", "diff_ids": []}, "history": []})

    @classmethod
    def load(cls, blobs: BlobStore, manifest_digest: str) -> "ImageState":
        manifest = json.loads(blobs.read(manifest_digest))
        config_digest = manifest["config"]["digest"]
        doc = json.loads(blobs.read(config_digest))
        doc.setdefault("config", {})
        doc.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        doc.setdefault("history", [])
        layers = tuple({"mediaType": d["mediaType"], "digest": d["digest"], "size": int(d["size"])}
                       for d in manifest.get("layers", []))
        return cls(doc, layers, manifest_digest,
                   (manifest_digest, config_digest, *(d["digest"] for d in layers)))

    @property
    def config(self) -> dict[str, Any]:
        """The runtime part (Env, Cmd, WorkingDir...): read only, see `changed`."""
        c: dict[str, Any] = self.doc.get("config") or {}
        return c

    @property
    def diff_ids(self) -> list[str]:
        return list(self.doc["rootfs"]["diff_ids"])

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.config.get("Env") or []:
            k, _, v = str(item).partition("=")
            out[k] = v
        return out

    def changed(self, created_by: str, **config: Any) -> "ImageState":
        """A config-only step: CONFIG's keys set (a None value removes one)."""
        doc = _configured(self.doc, config)
        doc["history"].append({"created": _now(), "created_by": created_by, "empty_layer": True})
        doc["created"] = _now()
        return ImageState(doc, self.layers)

    def with_layer(self, layer: LayerFile, created_by: str, **config: Any) -> "ImageState":
        """A step that made LAYER (and set CONFIG's keys, as `changed` does)."""
        doc = _configured(self.doc, config)
        doc["rootfs"]["diff_ids"].append(layer.diff_id)
        doc["history"].append({"created": _now(), "created_by": created_by})
        doc["created"] = _now()
        return ImageState(doc, (*self.layers, {"mediaType": LAYER_MEDIA, "digest": layer.digest,
                                               "size": layer.size}))

    def write(self, blobs: BlobStore) -> "ImageState":
        """Config and manifest into the blobs; the state with its manifest digest."""
        config = json.dumps(self.doc, sort_keys=True, separators=(",", ":")).encode()
        config_digest = blobs.put_bytes(config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": CONFIG_MEDIA, "digest": config_digest, "size": len(config)},
            "layers": list(self.layers)}, sort_keys=True, separators=(",", ":")).encode()
        digest = blobs.put_bytes(manifest)
        return ImageState(self.doc, self.layers, digest,
                          (digest, config_digest, *(d["digest"] for d in self.layers)))


def _configured(doc: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A copy of DOC with CONFIG's keys set in its runtime config (None removes one)."""
    out = copy.deepcopy(doc)
    c = out.setdefault("config", {})
    for k, v in config.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return out
