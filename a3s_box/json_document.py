"""A small JSON document shared by concurrent `box` processes: read under a shared flock,
edited under an exclusive one and replaced atomically (and durably), so no process loses
another's change and no reader sees half a file.

The image index, the build cache's pins and the jail's id table are such documents."""
from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from a3s_box.atomic import write_text_atomic

Document = dict[str, Any]


class CorruptDocument(ValueError):
    """The file is not a JSON object; callers say which file and what it holds."""


class JsonDocument:
    def __init__(self, path: Path, lock_path: Path) -> None:
        self.path = path
        self.lock_path = lock_path

    @contextmanager
    def edit(self, *, corrupt_as_empty: bool = False) -> Iterator[Document]:
        """The document ({} when absent) under LOCK_EX; saved on a clean exit if changed.
        CORRUPT_AS_EMPTY: for documents whose content can be rebuilt."""
        with self._lock(fcntl.LOCK_EX):
            try:
                doc = self._read()
            except CorruptDocument:
                if not corrupt_as_empty:
                    raise
                doc = {}
            before = None if not doc and self.path.exists() else json.dumps(doc, sort_keys=True)
            yield doc
            if json.dumps(doc, sort_keys=True) != before:
                write_text_atomic(self.path, json.dumps(doc, indent=1, sort_keys=True), durable=True)

    def read(self) -> Document:
        with self._lock(fcntl.LOCK_SH):
            return self._read()

    @contextmanager
    def _lock(self, how: int) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lk:
            fcntl.flock(lk, how)
            yield  # closing the file drops the lock

    def _read(self) -> Document:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise CorruptDocument(f"not JSON: {e}") from e
        if not isinstance(doc, dict):
            raise CorruptDocument("not a JSON object")
        return doc
