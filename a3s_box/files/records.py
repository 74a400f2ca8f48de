"""What the guest's `/.a3s/fs` writes, parsed without I/O: bytes in, records out.

A record is a fixed number of fields, each ended by a NUL, so a name may hold any byte
but NUL (a newline, a tab, bytes that are not UTF-8):

    stat, ls   type (f d l o), mode (octal), size, mtime_ns, uid, gid, owner, group,
               path (absolute), symlink target ("" unless a symlink)
    watch      kind (ready, then create write remove rename chmod), name under the folder

Threat: the guest is hostile, and so is every byte it writes. `RecordParser.feed` takes
any bytes in any pieces and either returns whole records or raises FilesError; it never
holds more than MAX_RECORD bytes of an unfinished record. The converters check every
field strictly (no int() leniency: "+1", " 1", "1_0", "0o7" are all refused). Names are
decoded as UTF-8 with bad bytes replaced (U+FFFD), as the rest of the API does: such a
name is shown, but cannot be named back exactly.
"""
from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass

from a3s_box.files.errors import FilesError
from a3s_box.guest.protocol import ExitKind, ExitStatus

MAX_RECORD = 64 << 10  # bytes of one record, NULs included
ENTRY_FIELDS = 10
EVENT_FIELDS = 2
EVENT_KINDS = frozenset({"create", "write", "remove", "rename", "chmod"})
_KINDS = {b"f": "file", b"d": "dir", b"l": "symlink", b"o": "other"}
_OCTAL = re.compile(rb"[0-7]{1,4}")
_UNSIGNED = re.compile(rb"[0-9]{1,20}")
_SIGNED = re.compile(rb"-?[0-9]{1,19}")


@dataclass(frozen=True)
class FsEntry:
    """One file, folder, symlink or other entry of a box's file system (its lstat)."""

    kind: str  # "file", "dir", "symlink", "other"
    mode: int  # permission bits, st_mode & 0o7777
    size: int
    mtime_ns: int
    uid: int
    gid: int
    owner: str  # the uid's name in the box's /etc/passwd, else the number
    group: str  # the gid's name in the box's /etc/group, else the number
    path: str  # absolute
    target: str | None  # a symlink's target, None for anything else

    @property
    def name(self) -> str:
        return posixpath.basename(self.path) or "/"


class RecordParser:
    """Records of FIELDS NUL-ended fields from a stream fed in pieces of any size."""

    def __init__(self, fields: int, max_record: int = MAX_RECORD) -> None:
        self.fields = fields
        self.max_record = max_record
        self._done: list[bytes] = []  # the fields of the record under way
        self._size = 0  # their bytes, NULs included
        self._rest = b""  # an unfinished field
        self._broken: str | None = None

    def feed(self, data: bytes) -> list[tuple[bytes, ...]]:
        if self._broken is not None:
            raise FilesError(self._broken)
        buf = self._rest + data if self._rest else bytes(data)
        out: list[tuple[bytes, ...]] = []
        start = 0
        while (nul := buf.find(b"\0", start)) >= 0:
            self._done.append(buf[start:nul])
            self._size += nul - start + 1
            start = nul + 1
            if self._size > self.max_record:
                break
            if len(self._done) == self.fields:
                out.append(tuple(self._done))
                self._done, self._size = [], 0
        self._rest = buf[start:]
        if self._size + len(self._rest) > self.max_record:
            self._rest, self._done = b"", []
            self._broken = f"the guest sent a record over {self.max_record >> 10} KiB"
            raise FilesError(self._broken)
        return out

    def close(self) -> None:
        """The stream ended: anything left over is a record cut short."""
        if self._broken is None and (self._done or self._rest):
            self._broken = "the guest's answer ends in the middle of a record"
        if self._broken is not None:
            raise FilesError(self._broken)


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def _number(b: bytes, pattern: re.Pattern[bytes], what: str) -> int:
    if not pattern.fullmatch(b):
        raise FilesError(f"the guest sent a bad {what}: {b[:40]!r}")
    return int(b)


def entry(fields: tuple[bytes, ...]) -> FsEntry:
    """An FsEntry from one stat/ls record, every field checked."""
    if len(fields) != ENTRY_FIELDS:
        raise FilesError(f"the guest sent an entry of {len(fields)} fields, not {ENTRY_FIELDS}")
    kind, mode, size, mtime, uid, gid, owner, group, path, target = fields
    if kind not in _KINDS:
        raise FilesError(f"the guest sent a bad entry type: {kind[:40]!r}")
    if not _OCTAL.fullmatch(mode):
        raise FilesError(f"the guest sent a bad mode: {mode[:40]!r}")
    if not path.startswith(b"/"):
        raise FilesError(f"the guest sent a path that is not absolute: {path[:80]!r}")
    if target and kind != b"l":  # a symlink's may be "" (replaced while it was read)
        raise FilesError(f"the guest sent a symlink target for a {_KINDS[kind]}")
    return FsEntry(kind=_KINDS[kind], mode=int(mode, 8), size=_number(size, _UNSIGNED, "size"),
                   mtime_ns=_number(mtime, _SIGNED, "mtime"), uid=_number(uid, _UNSIGNED, "uid"),
                   gid=_number(gid, _UNSIGNED, "gid"), owner=_text(owner), group=_text(group),
                   path=_text(path), target=_text(target) if kind == b"l" else None)


def event(fields: tuple[bytes, ...]) -> tuple[str, str]:
    """(kind, name) from one watch record after `ready`."""
    if len(fields) != EVENT_FIELDS:
        raise FilesError(f"the guest sent an event of {len(fields)} fields, not {EVENT_FIELDS}")
    kind, name = _text(fields[0]), fields[1]
    if kind not in EVENT_KINDS:
        raise FilesError(f"the guest sent an unknown event: {fields[0][:40]!r}")
    if not name or name.startswith(b"/"):
        raise FilesError(f"the guest sent an event for a bad name: {name[:80]!r}")
    return kind, _text(name)


def is_ready(fields: tuple[bytes, ...]) -> bool:
    return fields == (b"ready", b"")


def failure(stderr: bytes, status: ExitStatus) -> str:
    """Why an fs command failed, in a few words: the last line it wrote to stderr less
    the path it begins with (the caller names the path), else how it ended."""
    lines = stderr.decode("utf-8", errors="replace").strip().splitlines()
    if lines:
        return lines[-1].rsplit(": ", 1)[-1][:300]
    if status.kind is ExitKind.NOT_STARTED:
        return f"the guest cannot run its fs applet: {status.message or os.strerror(status.value)}"
    if status.kind is ExitKind.SIGNALED:
        return f"killed by signal {status.value}"
    return f"failed (exit {status.value})"
