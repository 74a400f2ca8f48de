"""ImageStore: pull, import, keep and hand out images under Home.images.

    images/blobs/sha256/<hex>      every blob, verified, stored once (layers are shared)
    images/tmp/                    temp files and resumable partial downloads
    images/locks/                  one flock per blob being downloaded
    images/index.json (+ .lock)    name -> manifest digest, config, size, last used
    images/unpacked/<hex>/         the applied layers per manifest digest (virtio-fs roots)
    images/rootfs/<hex>.ext4       the read-only ext4 base per manifest digest
    images/pins.json               blobs kept though no image names them (the build cache)
Box disks are qcow2 overlays on a base, created wherever the caller says.

An image is registered only once all its blobs are verified and its layers applied
cleanly, so a failed pull/import leaves the index as it was. Garbage collection
(remove/prune/evict) sweeps blobs and caches no remaining record refers to; pulls and
imports in flight hold images/gc.lock shared, and a sweep takes it exclusively.

A full disk: a pull or import whose blobs (their sizes are in the manifest) would not
fit the free space is refused before it writes any; one that fills the disk anyway
(unpacking, or another writer) removes what it half wrote, sweeps the blobs it
fetched, then raises DiskFullError naming the home with the space now free
(a3s_box.disks.space). Removing images works on a disk full to the last byte (the
caches of what goes are dropped first when even the smaller index finds no room).
"""
from __future__ import annotations

import builtins
import fcntl
import functools
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Union

from a3s_box.disks import space
from a3s_box.disks.qcow2 import virtual_size
from a3s_box.errors import ImageError
from a3s_box.home import Home
from a3s_box.image.blobs import BlobStore
from a3s_box.image.layout import import_source, source_digest
from a3s_box.image.manifest import LAYER_TYPES, Manifest, choose_platform, parse_config, parse_manifest
from a3s_box.image.progress import layer_progress
from a3s_box.image.pins import Pins
from a3s_box.image.records import ImageRecord, RecordIndex
from a3s_box.image.reference import Reference, is_digest, parse_reference
from a3s_box.image.rootfs import build_ext4, create_overlay
from a3s_box.image.unpack import RootWriter

ImageSource = Union[str, Path]


class ImageStore:
    def __init__(self, home: Home, *, insecure: frozenset[str] | None = None, retries: int = 5,
                 backoff: float = 0.2, parallel: int = 4, docker_config: Path | None = None) -> None:
        self.home = home
        self.root = home.images
        self.blobs = BlobStore(self.root)
        self.index = RecordIndex(self.root)
        self.pins = Pins(self.root)  # the build cache's blobs: live though no record names them
        self.insecure = insecure  # None: A3S_BOX_INSECURE_REGISTRIES, read when pulling
        self.retries = retries
        self.backoff = backoff
        self.parallel = parallel
        self.docker_config = docker_config

    # --- lookups (no network) ------------------------------------------------------------
    def list(self) -> list[ImageRecord]:
        return [r for _, r in sorted(self.index.snapshot().items())]

    def get(self, name_or_ref_or_digest: str) -> ImageRecord | None:
        return _find(self.index.snapshot(), name_or_ref_or_digest)

    # --- getting images ------------------------------------------------------------------
    def ensure(self, source: ImageSource, progress: bool = False) -> ImageRecord:
        """The image for a Boxfile source: pulled/imported only when missing or changed."""
        if isinstance(source, Path):
            name = str(source.absolute())
            have = self.index.snapshot().get(name)
            if have and have.source_digest == source_digest(source, name) and self._complete(have):
                return self._touch(have)
            return self._import(source, name)
        have = self.get(source)
        if have and self._complete(have):
            return self._touch(have)
        return self.pull(source, progress=progress)

    def pull(self, ref: str, progress: bool = False) -> ImageRecord:
        r = parse_reference(ref)
        with self._full_disk(str(r)):  # outside the sweep: the free space said is after it
            try:
                with self._in_flight():
                    return self._pull(r, progress)
            finally:
                self._sweep(wait=False)  # an older version of this name, or a failed pull's blobs

    def _pull(self, r: Reference, progress: bool) -> ImageRecord:
        name = str(r)
        # on use: httpx costs ~0.1 s to import, and most applies pull nothing
        from a3s_box.image.registry import RegistryClient, insecure_from_env

        insecure = insecure_from_env() if self.insecure is None else self.insecure
        with RegistryClient(r, insecure=insecure, retries=self.retries, backoff=self.backoff,
                            docker_config=self.docker_config) as c:
            data, ctype, digest = c.manifest(r.reference)
            m = parse_manifest(data, name, ctype)
            if not isinstance(m, Manifest):
                desc = choose_platform(m, name)
                data, ctype, digest = c.manifest(desc.digest)
                m = parse_manifest(data, name, ctype)
                if not isinstance(m, Manifest):
                    raise ImageError(name, "index points at another index, not an image")
            # the blobs' sizes are known now: refuse before writing any if they cannot fit
            self._room(name, (0 if self.blobs.has(digest) else len(data)) + self._missing_bytes(m))
            c.fetch_blob(m.config, self.blobs)
            self.blobs.put_bytes(data, digest, name)
            with layer_progress(progress, f"pulling {name}") as bars, \
                    ThreadPoolExecutor(max_workers=self.parallel) as pool:
                unique = {layer.digest: layer for layer in m.layers}  # a layer may repeat
                futures = {d: pool.submit(c.fetch_blob, layer, self.blobs,
                                          bars.layer(d[7:19], layer.size))
                           for d, layer in unique.items()}
                try:
                    # Apply each layer as soon as it is in: unpacking overlaps the downloads.
                    self._unpack(name, digest, ready=lambda d: futures[d].result())
                    for f in futures.values():
                        f.result()
                finally:
                    for f in futures.values():
                        f.cancel()
        return self._register(name, digest, source=name, source_digest="")

    def register(self, name: str, digest: str, *, source: str, source_digest: str) -> ImageRecord:
        """An image whose blobs are in the store already (a build's) under NAME."""
        with self._full_disk(name):
            try:
                with self._in_flight():
                    return self._register(name, digest, source=source, source_digest=source_digest)
            finally:
                self._sweep(wait=False)  # what NAME pointed at before, if nothing else holds it

    @contextmanager
    def holding(self) -> Iterator[None]:
        """No sweep while held: for blobs written before they are registered or pinned."""
        with self._in_flight():
            yield

    def import_path(self, path: Path, tag: str | None = None) -> ImageRecord:
        return self._import(path, tag)

    def _import(self, path: Path, name: str | None) -> ImageRecord:
        with self._full_disk(str(path)):
            try:
                with self._in_flight():
                    return self._import_locked(path, name)
            finally:
                self._sweep(wait=False)

    def _import_locked(self, path: Path, name: str | None) -> ImageRecord:
        imported = import_source(path, self.blobs, room=lambda n: self._room(str(path), n))
        if name is None:
            name = str(path.absolute())
            # A ref.name that is only a tag ("latest") names nothing; "repo:tag" does.
            if imported.suggested_name and any(c in imported.suggested_name for c in "/:@"):
                try:
                    name = str(parse_reference(imported.suggested_name))
                except ImageError:
                    name = imported.suggested_name
        return self._register(name, imported.manifest_digest, source=str(path.absolute()),
                              source_digest=imported.source_digest)

    def _register(self, name: str, digest: str, *, source: str, source_digest: str) -> ImageRecord:
        m = parse_manifest(self.blobs.read(digest), name)
        if not isinstance(m, Manifest):
            raise ImageError(name, "expected an image manifest, found an index")
        config, _ = parse_config(self.blobs.read(m.config.digest), name)
        blobs = (digest, m.config.digest, *(x.digest for x in m.layers))
        missing = [b for b in blobs if not self.blobs.has(b)]
        if missing:
            raise ImageError(name, f"blob {missing[0]} is missing")
        self._unpack(name, digest)  # refuse bad layers before the image becomes visible
        record = ImageRecord(name=name, digest=digest, config=config,
                             size=sum(self.blobs.size(b) for b in set(blobs)), last_used=time.time(),
                             config_digest=m.config.digest, layers=tuple(x.digest for x in m.layers),
                             source=source, source_digest=source_digest, blobs=blobs)
        with self.index.locked() as records:
            records[name] = record
        return record

    # --- roots and disks -----------------------------------------------------------------
    def unpacked_dir(self, record: ImageRecord) -> Path:
        with self._full_disk(record.name):
            return self._unpack(record.name, record.digest)

    def rootfs_base(self, record: ImageRecord) -> Path:
        dest = self.root / "rootfs" / f"{record.digest[7:]}.ext4"
        if dest.exists():
            return dest
        with self._full_disk(record.name), self._building(dest):
            if not dest.exists():
                build_ext4(self.unpacked_dir(record), dest, record.name,
                           room=lambda n: self._room(record.name, n))
        return dest

    def create_box_disk(self, record: ImageRecord, dest: Path, size: int | None = None) -> Path:
        """A qcow2 overlay on the image's base at `dest` (atomic): a copy of a per-base
        template, since every overlay of one base is byte-identical when new. SIZE: the
        disk the guest sees, if bigger than the base (its init grows the file system)."""
        template = self.root / "rootfs" / f"{record.digest[7:]}.qcow2"
        if not template.exists():
            base = self.rootfs_base(record)
            with self._building(template):
                if not template.exists():
                    create_overlay(base, template, record.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(template, tmp)
            if size is not None and size > virtual_size(tmp):
                r = subprocess.run(["qemu-img", "resize", "-q", str(tmp), str(size)], capture_output=True,
                                   text=True, timeout=60)
                if r.returncode != 0:
                    raise ImageError(record.name, f"cannot size box disk {dest}: {r.stderr.strip()}")
            os.replace(tmp, dest)
        except OSError as e:
            if space.is_full(e):
                tmp.unlink(missing_ok=True)
                raise space.disk_full(f"image {record.name}: box disk {dest}", self.home.root) from e
            raise ImageError(record.name, f"cannot create box disk {dest}: {e.strerror or e}") from e
        finally:
            tmp.unlink(missing_ok=True)
        self._touch(record)
        return dest

    def remove_box_disk(self, dest: Path) -> None:
        dest.unlink(missing_ok=True)

    def _unpack(self, name: str, digest: str,
                ready: Callable[[str], object] | None = None) -> Path:
        """Apply the layers into unpacked/<hex>; `ready(layer_digest)` waits for a download."""
        dest = self.root / "unpacked" / digest[7:]
        if dest.is_dir():
            return dest
        with self._building(dest):
            if dest.is_dir():
                return dest
            m = parse_manifest(self.blobs.read(digest), name)
            assert isinstance(m, Manifest)
            _, diff_ids = parse_config(self.blobs.read(m.config.digest), name)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            _rmtree(tmp)
            tmp.mkdir(mode=0o755)
            try:
                with RootWriter(str(tmp), name) as w:
                    for i, layer in enumerate(m.layers):
                        if ready is not None:
                            ready(layer.digest)
                        with self.blobs.open(layer.digest) as f:
                            w.apply(f, LAYER_TYPES[layer.media_type],
                                    diff_ids[i] if i < len(diff_ids) else None,
                                    what=f"layer {i + 1} ({layer.digest[:19]})")
                os.replace(tmp, dest)
            finally:
                _rmtree(tmp)
        return dest

    @contextmanager
    def _building(self, dest: Path) -> Iterator[None]:
        """One builder per cache entry across processes."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest.with_name(f".{dest.name}.lock"), "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            yield

    # --- removal and eviction ------------------------------------------------------------
    def remove(self, name_or_digest: str) -> builtins.list[ImageRecord]:
        def pick(records: dict[str, ImageRecord]) -> builtins.list[ImageRecord]:
            hit = _find(records, name_or_digest)
            if hit is None:
                raise ImageError(name_or_digest, "no such image in the store")
            return [r for r in records.values()
                    if r.name == hit.name or (is_digest(name_or_digest) and r.digest == hit.digest)]

        with self._full_disk(name_or_digest):
            gone = self._unrecord(pick)
            self._sweep()
        return gone

    def prune(self, in_use: set[str]) -> builtins.list[ImageRecord]:
        """Remove every image no box uses (by digest or name) and the build cache, then
        unreferenced blobs."""
        with self._full_disk("prune"):
            gone = self._unrecord(lambda records: [r for r in records.values()
                                                   if r.digest not in in_use and r.name not in in_use])
            self._sweep()  # room for the pins' smaller file on a full disk
            with self.pins.locked() as pins:
                pins.clear()
            self._sweep(partials=True)
        return gone

    def evict_to(self, cap_bytes: int, in_use: set[str]) -> builtins.list[ImageRecord]:
        """Drop least-recently-used images until the store fits in cap_bytes; never one in use."""
        evicted: builtins.list[ImageRecord] = []
        for r in sorted(self.list(), key=lambda r: (r.last_used, r.name)):
            if self.disk_usage() <= cap_bytes:
                break
            if r.digest in in_use or r.name in in_use:
                continue
            with self._full_disk(r.name):
                self._unrecord(functools.partial(_named, r.name))
                self._sweep()
            evicted.append(r)
        return evicted

    def _unrecord(self, pick: Callable[[dict[str, ImageRecord]], builtins.list[ImageRecord]]
                  ) -> builtins.list[ImageRecord]:
        """Drop the records PICK chooses from the index. On a disk too full even for the
        smaller index (it is written whole, then renamed), the caches of what goes
        (unpacked roots, ext4 bases: rebuilt on use) are removed first, under the sweep's
        lock, and it is written again: removing images is how a full home is freed."""
        def drop(records: dict[str, ImageRecord]) -> builtins.list[ImageRecord]:
            gone = pick(records)
            for r in gone:
                del records[r.name]
            return gone

        try:
            with self.index.locked() as records:
                return drop(records)
        except OSError as e:
            if not space.is_full(e):
                raise
        with self._gc_locked(), self.index.locked() as records:
            gone = drop(records)
            self._drop_caches({r.digest[7:] for r in records.values()})
            return gone

    def disk_usage(self) -> int:
        """Bytes allocated on disk by blobs, unpacked roots and ext4 bases."""
        total = 0
        for d in ("blobs", "unpacked", "rootfs"):
            for dirpath, _dirs, files in os.walk(self.root / d):
                for f in files:
                    total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
        return total

    @contextmanager
    def _in_flight(self) -> Iterator[None]:
        """Held (shared) while blobs are written but not yet registered: no sweep meanwhile."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "gc.lock", "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_SH)
            yield

    def _sweep(self, partials: bool = False, wait: bool = True) -> None:
        """Delete blobs and caches no record refers to; when not waiting, skip if busy."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "gc.lock", "a") as lk:
            try:
                fcntl.flock(lk, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                return  # a pull/import is in flight; a later sweep collects this garbage
            self._sweep_locked(partials)

    @contextmanager
    def _gc_locked(self) -> Iterator[None]:
        """The sweep's lock, exclusively: no pull, import or build holds blobs meanwhile."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "gc.lock", "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            yield

    def _sweep_locked(self, partials: bool) -> None:
        with self.index.locked() as records:
            live_blobs = {b for r in records.values() for b in r.blobs} | self.pins.blobs()
            live = {r.digest[7:] for r in records.values()}
            for digest in list(self.blobs.all()):
                if digest not in live_blobs:
                    self.blobs.remove(digest)
            for p in _children(self.root / "unpacked") + _children(self.root / "rootfs"):
                if p.name.startswith(".") and p.name.endswith(".lock") \
                        and p.name[1:].split(".")[0] not in live:
                    p.unlink(missing_ok=True)  # the build lock of a swept cache entry
            self._drop_caches(live)
            for p in _children(self.root / "locks"):  # nobody holds these: gc.lock is ours
                p.unlink(missing_ok=True)
            if partials:
                for p in _children(self.root / "tmp"):
                    p.unlink(missing_ok=True)

    def _drop_caches(self, live: set[str]) -> None:
        """Unpacked roots and ext4 bases of manifests (hex digests) not in LIVE; the sweep's
        lock is held."""
        for p in _children(self.root / "unpacked"):
            if not p.name.startswith(".") and p.name not in live:
                _rmtree(p)
        for p in _children(self.root / "rootfs"):
            if p.suffix in (".ext4", ".qcow2") and not p.name.startswith(".") and p.stem not in live:
                p.unlink(missing_ok=True)

    # --- helpers -------------------------------------------------------------------------
    def _full_disk(self, name: str) -> "AbstractContextManager[None]":
        """ENOSPC/EDQUOT inside becomes DiskFullError naming image NAME and the home."""
        return space.full_disk_is_error(f"image {name}", self.home.root)

    def _room(self, name: str, needed: int) -> None:
        """Refuse image NAME before it writes NEEDED bytes that the home has no room for."""
        space.require(f"image {name}", self.home.root, needed)

    def _missing_bytes(self, m: Manifest) -> int:
        """What the config and layers of M not in the store yet will take, less what
        partial downloads of them hold already."""
        unique = {d.digest: d for d in (m.config, *m.layers)}
        total = 0
        for d in unique.values():
            if not self.blobs.has(d.digest):
                part = self.blobs.partial(d.digest)
                have = part.stat().st_size if part.is_file() else 0
                total += max(0, d.size - have)
        return total

    def _complete(self, r: ImageRecord) -> bool:
        return all(self.blobs.has(b) for b in r.blobs)

    def _touch(self, r: ImageRecord) -> ImageRecord:
        """R, marked used now (for eviction); on a full disk, R as it was: a timestamp is
        not worth failing for."""
        now = time.time()
        try:
            with self.index.locked() as records:
                if r.name in records:
                    records[r.name] = replace(records[r.name], last_used=now)
                    return records[r.name]
        except OSError as e:
            if not space.is_full(e):
                raise
        return r


def _find(records: dict[str, ImageRecord], key: str) -> ImageRecord | None:
    if key in records:
        return records[key]
    if key.startswith("sha256:"):
        hits = sorted((r for r in records.values() if r.digest.startswith(key) and len(key) >= 19),
                      key=lambda r: r.name)
        return hits[0] if hits else None
    try:
        canonical = str(parse_reference(key))
    except ImageError:
        canonical = ""
    if canonical in records:
        return records[canonical]
    p = Path(key)
    if p.exists():
        return records.get(str(p.absolute()))
    return None


def _named(name: str, records: dict[str, ImageRecord]) -> list[ImageRecord]:
    return [records[name]] if name in records else []


def _children(d: Path) -> list[Path]:
    return sorted(d.iterdir()) if d.is_dir() else []


def _rmtree(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()

