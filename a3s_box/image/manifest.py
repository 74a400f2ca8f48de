"""OCI / Docker v2 manifests, indexes and image configs: parsing and platform choice (pure)."""
from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from typing import Any

from a3s_box.errors import ImageError
from a3s_box.image.reference import is_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join(MANIFEST_TYPES + INDEX_TYPES)

LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gz",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gz",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gz",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gz",
}


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Index:
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageConfig:
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def argv(self) -> list[str]:
        """What a box without `command` runs: Entrypoint + Cmd."""
        return [*self.entrypoint, *self.cmd]

    def box_labels(self) -> dict[str, str]:
        """Box defaults carried by the image: labels under dev.a3s.box.* (box_labels.py reads them)."""
        return {k: v for k, v in sorted(self.labels.items()) if k.startswith("dev.a3s.box.")}

    def to_json(self) -> dict[str, Any]:
        return {"env": list(self.env), "entrypoint": list(self.entrypoint), "cmd": list(self.cmd),
                "workdir": self.workdir, "user": self.user, "labels": dict(self.labels)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ImageConfig":
        return cls(tuple(d.get("env", ())), tuple(d.get("entrypoint", ())), tuple(d.get("cmd", ())),
                   d.get("workdir", ""), d.get("user", ""), dict(d.get("labels", {})))


def _load(data: bytes, ref: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ImageError(ref, f"{what} is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ImageError(ref, f"{what} must be a JSON object")
    return doc


def _descriptor(d: Any, ref: str) -> Descriptor:
    if not isinstance(d, dict) or not isinstance(d.get("digest"), str) or not is_digest(d["digest"]):
        raise ImageError(ref, f"manifest has a bad descriptor: {json.dumps(d)[:120]}")
    size = d.get("size")
    if not isinstance(size, int) or size < 0:
        raise ImageError(ref, f"descriptor {d['digest']} has no valid size")
    plat = d.get("platform") or {}
    return Descriptor(str(d.get("mediaType", "")), d["digest"], size,
                      {k: str(v) for k, v in plat.items() if isinstance(v, str)})


def parse_manifest(data: bytes, ref: str, content_type: str = "") -> Manifest | Index:
    """An image manifest or an index; the media type comes from the document, else the header."""
    doc = _load(data, ref, "manifest")
    mt = doc.get("mediaType") or content_type.split(";")[0].strip()
    if not mt:  # OCI allows omitting mediaType: tell them apart by shape
        mt = OCI_INDEX if "manifests" in doc else OCI_MANIFEST if "config" in doc else ""
    if mt in INDEX_TYPES:
        ms = doc.get("manifests")
        if not isinstance(ms, list):
            raise ImageError(ref, "index has no manifests list")
        return Index(tuple(_descriptor(m, ref) for m in ms))
    if mt in MANIFEST_TYPES:
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise ImageError(ref, "manifest has no layers list")
        m = Manifest(_descriptor(doc.get("config"), ref), tuple(_descriptor(x, ref) for x in layers))
        for layer in m.layers:
            if layer.media_type not in LAYER_TYPES:
                raise ImageError(ref, f"layer {layer.digest} has unsupported media type {layer.media_type!r}")
        return m
    raise ImageError(ref, f"unsupported manifest media type {mt!r} "
                          f"(expected an OCI or Docker v2 manifest or index)")


def host_platform() -> tuple[str, str]:
    m = platform.machine().lower()
    return "linux", {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(m, m)


def choose_platform(index: Index, ref: str, want: tuple[str, str] | None = None) -> Descriptor:
    os_, arch = want or host_platform()
    fits = [d for d in index.manifests if d.media_type in MANIFEST_TYPES or not d.media_type]
    for d in fits:
        if d.platform.get("os") == os_ and d.platform.get("architecture") == arch:
            if arch != "arm64" or d.platform.get("variant", "v8") == "v8":
                return d
    # A single-image index without platform fields (as `skopeo copy` to oci: writes) is it.
    bare = [d for d in fits if not d.platform]
    if len(bare) == 1 and len(fits) == 1:
        return bare[0]
    have = sorted({f"{d.platform.get('os')}/{d.platform.get('architecture')}" for d in fits})
    raise ImageError(ref, f"no image for {os_}/{arch} (index has {', '.join(have) or 'nothing'})")


def parse_config(data: bytes, ref: str) -> tuple[ImageConfig, tuple[str, ...]]:
    """The run config, and the diff_ids (digests of the uncompressed layers)."""
    doc = _load(data, ref, "image config")
    c = doc.get("config") or {}

    def strs(v: Any) -> tuple[str, ...]:
        return tuple(str(x) for x in v) if isinstance(v, list) else ()

    labels = c.get("Labels") or {}
    cfg = ImageConfig(strs(c.get("Env")), strs(c.get("Entrypoint")), strs(c.get("Cmd")),
                      str(c.get("WorkingDir") or ""), str(c.get("User") or ""),
                      {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {})
    diff_ids = strs((doc.get("rootfs") or {}).get("diff_ids"))
    return cfg, diff_ids
