"""Files of a running box, through its guest init: single files with PUT/GET, trees as
tar streams through /.a3s/tar, the rest through /.a3s/fs (the guest init's own applets,
so any image works). Paths are as the box's agent sees them (its mount namespace: the
image's root and its volumes).

The names (write, read, upload, download, list, remove) are the ones the HTTP API and
the TypeScript SDK mirror; stat, walk, make_dir, move and watch serve the E2B API.
"""
from __future__ import annotations

import builtins
import os
import posixpath
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from a3s_box.disks import space
from a3s_box.errors import BoxError, GuestError
from a3s_box.files import records
from a3s_box.files.errors import FilesError
from a3s_box.files.records import FsEntry
from a3s_box.files.tarstream import QueueReader, TarError, extract_tar, run_in_thread, write_tar
from a3s_box.files.watch import EventHandler, Watch
from a3s_box.guest.protocol import ExecRequest, ExitKind, Namespace

APPLETS = "/.a3s"  # where the guest init puts its applets (tar, fs)
GUEST_TAR = f"{APPLETS}/tar"
NO_TIMEOUT = None
MAX_ENTRIES = 100_000  # entries one walk returns
MAX_DEPTH = 4096  # PATH_MAX: no path has more levels
MAX_STDERR = 64 << 10  # bytes of an applet's complaints kept
Records = list[tuple[bytes, ...]]  # (BoxFiles.list hides the builtin in the class)
Entries = list[FsEntry]


class ByteSource(Protocol):
    """What a tar stream into a box is read from (a file, a pipe, the API's request body)."""

    def read(self, n: int = -1, /) -> bytes: ...


class ByteSink(Protocol):
    """What a tar stream out of a box is written to."""

    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class FileEntry:
    name: str
    kind: str  # "file", "dir", "symlink", "other"
    size: int
    mode: int
    mtime: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


_KINDS = {"f": "file", "d": "dir", "l": "symlink", "o": "other"}


def _split(path: str) -> tuple[str, str]:
    path = posixpath.normpath(path)
    if not path.startswith("/"):
        raise ValueError(f"{path!r}: a path in the box must be absolute")
    parent, name = posixpath.split(path)
    return parent or "/", name


class BoxFiles:
    """APPLETS: the guest's folder of applets (/.a3s in a VM; a local guest's state dir)."""

    def __init__(self, client: Any, box: str, ns: Namespace = Namespace.AGENT,
                 applets: str = APPLETS) -> None:
        self.client = client
        self.box = box
        self.ns = ns
        self.applets = applets

    def _fail(self, path: str, why: str) -> FilesError:
        return FilesError(f"box {self.box}: {path}: {why.strip() or 'failed'}")

    def _tar(self, args: list[str], stdin: Any = None, on_stdout: Any = None,
             timeout: float | None = NO_TIMEOUT, started: Any = None) -> tuple[int, bytes]:
        """STARTED(session): called with the guest's session as soon as it exists."""
        err: list[bytes] = []
        out: list[bytes] = []
        req = ExecRequest(argv=(f"{self.applets}/tar", *args), ns=self.ns, stdin=stdin is not None)
        s = self.client.start(req, on_stdout or out.append, err.append)
        if started is not None:
            started(s)
        if stdin is not None:
            try:
                for chunk in stdin:
                    s.write(chunk)
            finally:
                s.close_stdin()
        status = s.wait(timeout)
        if on_stdout is None and status.code == 0:
            return 0, b"".join(out)
        return status.code, b"".join(err)

    # --- single files --------------------------------------------------------------
    def write(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        """Write a whole file (atomically: it appears whole or not at all)."""
        _split(path)
        try:
            self.client.put(path, data.encode() if isinstance(data, str) else data, mode, ns=self.ns)
        except BoxError as e:
            raise self._fail(path, str(e).split(": ", 1)[-1]) from e

    def read(self, path: str) -> bytes:
        _split(path)
        try:
            return bytes(self.client.get(path, ns=self.ns))
        except BoxError as e:
            raise self._fail(path, str(e).split(": ", 1)[-1]) from e

    def list(self, path: str) -> list[FileEntry]:
        """The entries of a folder (or the entry of a file)."""
        parent, name = _split(path)
        code, out = self._tar(["l", "-C", parent, name or "."], timeout=60)
        if code != 0:
            raise self._fail(path, out.decode(errors="replace").split(": ", 1)[-1])
        entries = []
        for line in out.decode(errors="replace").splitlines():
            kind, mode, size, mtime, n = line.split("\t", 4)
            entries.append(FileEntry(n, _KINDS.get(kind, "other"), int(size), int(mode, 8), int(mtime)))
        return entries

    def is_dir(self, path: str) -> bool:
        try:
            first = self.list(path)[:1]
        except FilesError:
            return False
        return bool(first) and first[0].name == "." and first[0].kind == "dir"

    def remove(self, path: str) -> None:
        """Remove a file or a whole tree (symlinks are removed, never followed)."""
        parent, name = _split(path)
        if not name:
            raise self._fail(path, "refusing to remove /")
        code, err = self._tar(["r", "-C", parent, name], timeout=300)
        if code != 0:
            raise self._fail(path, err.decode(errors="replace").split(": ", 1)[-1])

    # --- through /.a3s/fs -------------------------------------------------------------
    def _fs(self, args: builtins.list[str], path: str, fields: int = 0, limit: int = 0,
            timeout: float = 60.0) -> tuple[int, Records]:
        """Run `fs ARGS`: its exit code and records (of FIELDS fields, at most LIMIT). A
        failure that is not a plain exit code names the box and PATH."""
        parser = records.RecordParser(fields or 1)
        got: Records = []
        err = bytearray()
        bad: builtins.list[Exception] = []
        session: builtins.list[Any] = []

        def out(data: bytes) -> None:  # on the client's reader thread: must not raise
            if bad:
                return
            try:
                got.extend(parser.feed(data) if fields else ())
                if fields == 0 and data:
                    raise FilesError("the guest wrote what nobody asked for")
                if len(got) > limit:
                    raise FilesError(f"more than {limit} entries")
            except FilesError as e:
                bad.append(e)
                if session:
                    session[0].signal(signal.SIGKILL)

        def complain(data: bytes) -> None:
            err.extend(data[:MAX_STDERR - len(err)])
        s = self.client.start(ExecRequest(argv=(f"{self.applets}/fs", *args), ns=self.ns), out, complain)
        session.append(s)
        if bad:  # it went wrong before `out` could see the session
            s.signal(signal.SIGKILL)
        try:
            status = s.wait(timeout)
        except GuestError as e:
            if s.done:  # the connection went, or the guest dropped the session
                raise self._fail(path, str(e).removeprefix(f"box {self.box}: ")) from e
            s.signal(signal.SIGKILL)  # leave no runaway behind our timeout
            raise self._fail(path, f"no answer after {timeout}s") from e
        if not bad and status.code == 0:
            try:
                parser.close()
            except FilesError as e:
                bad.append(e)
        if bad:
            raise self._fail(path, str(bad[0])) from bad[0]
        if status.kind is not ExitKind.EXITED or status.code not in (0, 3):
            raise self._fail(path, records.failure(bytes(err), status))
        return status.code, got

    def stat(self, path: str) -> FsEntry:
        """PATH itself (a symlink is not followed)."""
        _split(path)
        path = posixpath.normpath(path)
        _, got = self._fs(["stat", path], path, records.ENTRY_FIELDS, limit=1)
        if len(got) != 1:
            raise self._fail(path, "the guest sent no entry")
        return self._entry(path, got[0])

    def walk(self, path: str, depth: int = 1, limit: int = MAX_ENTRIES) -> Entries:
        """What is under folder PATH, DEPTH levels down (1: its entries), sorted by path.
        Symlinks are listed, never followed. More than LIMIT entries is an error."""
        _split(path)
        if depth < 1:
            raise ValueError(f"depth {depth}: must be at least 1")
        path = posixpath.normpath(path)
        depth = min(depth, MAX_DEPTH)  # deeper than any path can go
        _, got = self._fs(["ls", str(depth), path], path, records.ENTRY_FIELDS, limit, timeout=300)
        return sorted((self._entry(path, r) for r in got), key=lambda e: e.path)

    def make_dir(self, path: str) -> bool:
        """mkdir -p PATH: True if it made it, False if a folder was there already."""
        _split(path)
        path = posixpath.normpath(path)
        code, _ = self._fs(["mkdir", path], path)
        return code == 0

    def move(self, src: str, dst: str) -> FsEntry:
        """Rename SRC to DST (replacing a file there, as rename(2) does); DST's entry."""
        _split(src)
        _split(dst)
        src, dst = posixpath.normpath(src), posixpath.normpath(dst)
        code, _ = self._fs(["mv", src, dst], src)
        if code != 0:
            raise self._fail(src, "failed (exit 3)")
        return self.stat(dst)

    def watch(self, path: str, recursive: bool, on_event: EventHandler,
              timeout: float = 30.0) -> Watch:
        """Watch folder PATH (RECURSIVE: every folder below it too): ON_EVENT(kind, name)
        for each change, kind one of create write remove rename chmod, name under PATH.
        Returns once the guest watches, so later changes are seen; `stop()` ends it.
        ON_EVENT runs on the guest client's reader thread: it must not block. The client
        must stay open while the watch runs."""
        _split(path)
        path = posixpath.normpath(path)
        argv = (f"{self.applets}/fs", "watch", *(("-r",) if recursive else ()), path)
        return Watch.start(self.client, ExecRequest(argv=argv, ns=self.ns), self.box, path, on_event, timeout)

    def _entry(self, path: str, fields: tuple[bytes, ...]) -> FsEntry:
        try:
            return records.entry(fields)
        except FilesError as e:
            raise self._fail(path, str(e)) from e

    # --- trees -------------------------------------------------------------------
    def upload(self, local: Path | str, remote: str) -> str:
        """Copy a host file or tree into the box, as `docker cp` does: into REMOTE when it
        is an existing folder, else as REMOTE. Returns the path it now has in the box."""
        local = Path(local)
        if not local.exists() and not local.is_symlink():
            raise FilesError(f"{local}: no such file or folder on the host")
        if self.is_dir(remote):
            parent, name = posixpath.normpath(remote), local.name
        else:
            parent, name = _split(remote)
        chunks: QueueReader = QueueReader()

        def produce() -> None:
            try:
                write_tar(local, name, chunks.feed)
            finally:
                chunks.close_feed()
        t, errors = run_in_thread(produce)

        def feed() -> Any:
            while True:
                item = chunks.q.get()
                if item is None:
                    return
                yield item
        try:
            code, err = self._tar(["x", "-C", parent], stdin=feed())
        finally:
            t.join()
        if errors:
            raise FilesError(f"{local}: {errors[0]}") from errors[0]
        if code != 0:
            raise self._fail(posixpath.join(parent, name), err.decode(errors="replace").replace("tar: ", ""))
        return posixpath.join(parent, name)

    def upload_tar(self, stream: ByteSource, remote_dir: str) -> None:
        """A tar stream (`box cp - BOX:DIR`) extracted into a folder of the box."""
        def feed() -> Any:
            while chunk := stream.read(1 << 20):
                yield chunk
        code, err = self._tar(["x", "-C", posixpath.normpath(remote_dir)], stdin=feed())
        if code != 0:
            raise self._fail(remote_dir, err.decode(errors="replace").replace("tar: ", ""))

    def download_tar(self, remote: str, sink: ByteSink) -> None:
        """REMOTE (a file or tree) as a tar stream into SINK (`box cp BOX:PATH -`). A SINK
        that cannot take it (a full disk under a redirected stdout) stops the guest's tar,
        and its OSError is raised as it was, once the session is over."""
        parent, name = _split(remote)
        session: list[Any] = []
        failed: list[OSError] = []

        def out(data: bytes) -> None:  # on the client's reader thread: must not raise
            if failed:
                return
            try:
                sink.write(data)
            except OSError as e:
                failed.append(e)
                if session:
                    session[0].signal(signal.SIGKILL)
        code, err = self._tar(["c", "-C", parent, name], on_stdout=out, started=session.append)
        if failed:
            raise failed[0]
        if code != 0:
            raise self._fail(remote, err.decode(errors="replace").split(": ", 1)[-1])

    def download(self, remote: str, local: Path | str) -> Path:
        """Copy a file or tree out of the box: into LOCAL when it is an existing folder,
        else as LOCAL. Nothing appears there unless the whole copy succeeded. A host disk
        that fills stops the guest's tar and is a DiskFullError naming LOCAL's folder."""
        local = Path(local)
        parent, name = _split(remote)
        final = local / name if local.is_dir() else local
        if not final.parent.is_dir():
            raise FilesError(f"{final.parent}: no such folder on the host")
        stage = Path(tempfile.mkdtemp(prefix=".a3s-cp.", dir=final.parent))
        reader = QueueReader()
        result: list[list[str]] = []
        session: list[Any] = []
        stopped: list[bool] = []

        def extract() -> None:
            try:
                result.append(extract_tar(reader, stage))
            except BaseException:
                if session:  # its output has nowhere to go now: stop it rather than drain it all
                    session[0].signal(signal.SIGKILL)
                    stopped.append(True)
                reader.discard()  # the client's reader thread must never block on us
                raise
        t, errors = run_in_thread(extract)
        try:
            code, err = self._tar(["c", "-C", parent, name], on_stdout=reader.feed, started=session.append)
        finally:
            reader.close_feed()
            t.join()
        # outside the clean-up: the free space it says is with the half-copied tree gone
        with space.full_disk_is_error(f"box {self.box}: {remote}", final.parent):
            try:
                if errors and space.is_full(errors[0]):
                    raise errors[0]
                # the guest's own failure: it said why (a tar we killed says nothing), or we
                # did not kill it. Its words win over the empty stream it left us.
                if code != 0 and (err.strip() or not stopped):
                    raise self._fail(remote, err.decode(errors="replace").split(": ", 1)[-1])
                if errors:
                    e = errors[0]
                    if isinstance(e, OSError):
                        raise FilesError(f"{final}: {e.strerror or e}") from e
                    if isinstance(e, TarError):
                        raise FilesError(f"box {self.box}: {remote}: {e}") from e
                    raise e
                got = stage / name
                if final.is_dir() and not final.is_symlink() and got.is_dir():
                    shutil.rmtree(final)
                os.replace(got, final)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
        return final


def stdout_sink() -> IO[bytes]:
    return sys.stdout.buffer
