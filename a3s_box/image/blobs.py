"""Content-addressed blobs: images/blobs/sha256/<hex>, each verified before it is kept.

A blob only appears under its final name after its bytes hashed to that name
(temp file, fsync, rename), so a crash never leaves a half blob that looks whole.
Partial downloads live under images/tmp/<hex>.partial so a pull can resume them.
A write that fails (a full disk) removes its temp file.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO

from a3s_box.errors import ImageError
from a3s_box.image.reference import is_digest

CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "blobs" / "sha256"
        self.tmp = root / "tmp"

    def path(self, digest: str) -> Path:
        if not is_digest(digest):
            raise ImageError(digest, "not a sha256 digest")
        return self.dir / digest.split(":", 1)[1]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def partial(self, digest: str) -> Path:
        return self.tmp / (digest.split(":", 1)[1] + ".partial")

    def lock_path(self, digest: str) -> Path:
        """Held while downloading `digest`; only swept when no pull is in flight."""
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return locks / (digest.split(":", 1)[1] + ".lock")

    def _mkdirs(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def put_bytes(self, data: bytes, expect: str | None = None, ref: str = "") -> str:
        digest = sha256_bytes(data)
        if expect is not None and digest != expect:
            raise ImageError(ref or expect, f"content does not match its digest {expect} (got {digest})")
        if not self.has(digest):
            self._mkdirs()
            fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix="put-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path(digest))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return digest

    def put_stream(self, chunks: Iterable[bytes], expect: str, ref: str = "") -> str:
        """Store a stream under `expect`; nothing is kept when the bytes hash to something else."""
        with self._spooled(chunks) as (tmp, digest):
            self.commit(tmp, digest, expect, ref)
        return expect

    def ingest(self, chunks: Iterable[bytes]) -> str:
        """Store a stream whose digest is not known beforehand; returns it."""
        with self._spooled(chunks) as (tmp, digest):
            os.replace(tmp, self.path(digest))
        return digest

    @contextmanager
    def _spooled(self, chunks: Iterable[bytes]) -> Iterator[tuple[Path, str]]:
        """The stream written and synced to a temp file in the store, with its digest;
        the temp file is gone afterwards, whatever happened."""
        self._mkdirs()
        h = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix="put-")
        try:
            with os.fdopen(fd, "wb") as f:
                for c in chunks:
                    h.update(c)
                    f.write(c)
                f.flush()
                os.fsync(f.fileno())
            yield Path(tmp), "sha256:" + h.hexdigest()
        finally:
            Path(tmp).unlink(missing_ok=True)

    def put_file(self, src: IO[bytes], expect: str, ref: str = "") -> str:
        return self.put_stream(iter(lambda: src.read(CHUNK), b""), expect, ref)

    def commit(self, tmp: Path, actual: str, expect: str, ref: str = "") -> None:
        """Move a fully written temp file into place if its hash is the expected one."""
        if actual != expect:
            tmp.unlink(missing_ok=True)
            raise ImageError(ref or expect, f"blob does not match its digest {expect} (got {actual})")
        os.replace(tmp, self.path(expect))

    def open(self, digest: str) -> BinaryIO:
        return open(self.path(digest), "rb")

    def all(self) -> Iterator[str]:
        if self.dir.is_dir():
            for p in sorted(self.dir.iterdir()):
                yield "sha256:" + p.name

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)
