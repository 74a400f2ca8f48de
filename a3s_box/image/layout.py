"""Import from disk: an OCI image layout folder (or tar of one) and a `docker save` tarball.

Every blob is copied into the store and verified against its digest on the way in.
A `docker save` image (manifest.json + uncompressed layer tars) is turned into an
OCI manifest written here, so the rest of the store sees one format.
"""
from __future__ import annotations

import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from a3s_box.disks import space
from a3s_box.errors import ImageError
from a3s_box.image.blobs import CHUNK, BlobStore, sha256_bytes, sha256_file
from a3s_box.image.manifest import (
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    choose_platform,
    parse_manifest,
)

_REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Imported:
    manifest_digest: str
    source_digest: str  # identifies the source's content, to notice when it changed
    suggested_name: str | None  # a tag the source carries (RepoTags / ref.name annotation)


def source_digest(path: Path, ref: str) -> str:
    """Cheap identity of a source: the layout's index.json, or the whole tar file."""
    try:
        if path.is_dir():
            return sha256_bytes((path / "index.json").read_bytes())
        return sha256_file(path)
    except OSError as e:
        raise ImageError(ref, f"cannot read {path}: {e.strerror or e}") from e


Room = Callable[[int], None]


def import_source(path: Path, blobs: BlobStore, room: Room = lambda n: None) -> Imported:
    """ROOM(bytes) is asked, before the image's config and layers are copied, for what
    they will take; it raises if the store has no room for them."""
    ref = str(path)
    if not path.exists():
        raise ImageError(ref, "no such file or folder")
    if path.is_dir():
        if not (path / "index.json").is_file():
            raise ImageError(ref, "not an OCI image layout (no index.json)")
        return _import_oci(ref, lambda n: _open_dir_file(path, n, ref), blobs,
                           source_digest(path, ref), room)
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise ImageError(ref, f"not a folder or a tar archive: {e}") from e
    with tar:
        names = {m.name.removeprefix("./") for m in tar.getmembers()}
        sd = source_digest(path, ref)

        def opener(n: str) -> IO[bytes]:
            try:
                f = tar.extractfile(tar.getmember(n if n in tar.getnames() else f"./{n}"))
            except KeyError as e:
                raise ImageError(ref, f"archive has no {n}") from e
            if f is None:
                raise ImageError(ref, f"{n} in the archive is not a file")
            return f

        def size(n: str) -> int:
            try:
                return int(tar.getmember(n if n in tar.getnames() else f"./{n}").size)
            except KeyError:
                return 0  # said when it is opened

        if "manifest.json" in names:
            return _import_docker(ref, opener, blobs, sd, lambda ns: room(sum(size(n) for n in ns)))
        if "index.json" in names:
            return _import_oci(ref, opener, blobs, sd, room)
        raise ImageError(ref, "archive is neither an OCI layout nor a docker save tarball")


def _open_dir_file(root: Path, name: str, ref: str) -> IO[bytes]:
    p = root / name
    if p.is_symlink() or not p.is_file():
        raise ImageError(ref, f"layout has no file {name}")
    return open(p, "rb")


def _blob_name(digest: str) -> str:
    algo, hexd = digest.split(":", 1)
    return f"blobs/{algo}/{hexd}"


def _copy(opener: Callable[[str], IO[bytes]], d: Descriptor, blobs: BlobStore, ref: str) -> None:
    if blobs.has(d.digest):
        return
    with opener(_blob_name(d.digest)) as f:
        blobs.put_file(f, d.digest, ref)


def _import_oci(ref: str, opener: Callable[[str], IO[bytes]], blobs: BlobStore,
                sd: str, room: Room) -> Imported:
    with opener("index.json") as f:
        raw = f.read()
    try:
        doc = json.loads(raw)
        entries = doc["manifests"]
        name = next((m.get("annotations", {}).get(_REF_NAME) for m in entries
                     if m.get("annotations", {}).get(_REF_NAME)), None)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ImageError(ref, f"index.json is not an OCI index: {e}") from e
    top = parse_manifest(raw, ref, "application/vnd.oci.image.index.v1+json")
    assert isinstance(top, Index)
    desc = choose_platform(top, ref) if len(top.manifests) != 1 else top.manifests[0]
    for _ in range(4):  # nested indexes: follow until a manifest
        _copy(opener, desc, blobs, ref)
        m = parse_manifest(blobs.read(desc.digest), ref, desc.media_type)
        if isinstance(m, Manifest):
            unique = {d.digest: d for d in (m.config, *m.layers)}
            room(sum(d.size for d in unique.values() if not blobs.has(d.digest)))
            for d in (m.config, *m.layers):
                _copy(opener, d, blobs, ref)
            return Imported(desc.digest, sd, name)
        desc = choose_platform(m, ref)
    raise ImageError(ref, "indexes nested too deeply")


def _import_docker(ref: str, opener: Callable[[str], IO[bytes]], blobs: BlobStore,
                   sd: str, room: Callable[[list[str]], None]) -> Imported:
    with opener("manifest.json") as f:
        try:
            entries: Any = json.load(f)
            entry = entries[0]
            config_name, layer_names = str(entry["Config"]), [str(x) for x in entry["Layers"]]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ImageError(ref, f"manifest.json is not a docker save manifest: {e}") from e
    tags = entry.get("RepoTags") or []
    room([config_name, *layer_names])  # the layers' digests are not known before they are read
    with opener(config_name) as f:
        config = f.read()
    config_digest = blobs.put_bytes(config)
    layers = []
    for ln in layer_names:
        with opener(ln) as f:
            digest = blobs.ingest(iter(lambda: f.read(CHUNK), b""))
        with blobs.open(digest) as f:
            gz = f.read(2) == b"\x1f\x8b"  # some tools save compressed layers
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gz else ""),
                       "digest": digest, "size": blobs.size(digest)})
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": layers}, sort_keys=True, separators=(",", ":")).encode()
    return Imported(blobs.put_bytes(manifest), sd, str(tags[0]) if tags else None)


def export_layout(blobs: BlobStore, name: str, manifest_digest: str, dest: Path) -> None:
    """The image as an OCI image layout folder at DEST (made whole in a temp folder, then
    renamed): its manifest, config and layers, named NAME in index.json."""
    import json
    import os
    import shutil

    from a3s_box.image.manifest import OCI_MANIFEST, Manifest, parse_manifest

    if dest.exists():
        raise ImageError(name, f"export: {dest} exists already")
    m = parse_manifest(blobs.read(manifest_digest), name)
    if not isinstance(m, Manifest):
        raise ImageError(name, "export: not an image manifest")
    digests = sorted({manifest_digest, m.config.digest, *(layer.digest for layer in m.layers)})
    what = f"image {name}: export to {dest}"
    space.require(what, dest.parent, sum(blobs.size(d) for d in digests))
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with space.full_disk_is_error(what, dest.parent):  # said with the temp folder gone
        try:
            (tmp / "blobs" / "sha256").mkdir(parents=True)
            for digest in digests:
                shutil.copyfile(blobs.path(digest), tmp / "blobs" / "sha256" / digest.split(":", 1)[1])
            (tmp / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
            (tmp / "index.json").write_text(json.dumps({
                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [{"mediaType": OCI_MANIFEST, "digest": manifest_digest,
                               "size": blobs.size(manifest_digest),
                               "annotations": {"org.opencontainers.image.ref.name": name}}]}, sort_keys=True))
            os.replace(tmp, dest)
        except OSError as e:
            if space.is_full(e):
                raise
            raise ImageError(name, f"export to {dest}: {e.strerror or e}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
