"""envd's Filesystem service (filesystem.Filesystem, Connect RPC) over BoxFiles: the
guest's own /.a3s/fs and /.a3s/tar do the work in the box's agent namespace, whatever
the image has. Watchers (streamed, or polled through CreateWatcher) are this server's,
each with a bounded event buffer, and end with their stream or RemoveWatcher."""
from __future__ import annotations

import asyncio
import posixpath
import secrets
import stat as st
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from protobuf import Oneof
from protobuf.wkt import Timestamp

from a3s_box.api.e2b.envd.filesystem import filesystem_connect
from a3s_box.api.e2b.envd.filesystem import filesystem_pb as pb
from a3s_box.api.e2b.gate import Opener, Target, connect_error
from a3s_box.errors import BoxError
from a3s_box.files.box_files import BoxFiles
from a3s_box.files.records import FsEntry
from a3s_box.guest.protocol import Namespace

T = TypeVar("T")
WATCH_EVENTS = 4096  # buffered per watcher; past it, events are dropped (the watch lives on)
MAX_WATCHERS = 64  # polled watchers per sandbox

_TYPES = {"file": pb.FileType.FILE, "dir": pb.FileType.DIRECTORY, "symlink": pb.FileType.SYMLINK}
_EVENTS = {"create": pb.EventType.CREATE, "write": pb.EventType.WRITE, "remove": pb.EventType.REMOVE,
           "rename": pb.EventType.RENAME, "chmod": pb.EventType.CHMOD}


def files_of(target: Target) -> BoxFiles:
    return BoxFiles(target.client, target.row.name, ns=Namespace.AGENT)


def entry_info(e: FsEntry) -> pb.EntryInfo:
    kind = {"file": st.S_IFREG, "dir": st.S_IFDIR, "symlink": st.S_IFLNK}.get(e.kind, 0)
    return pb.EntryInfo(
        name=posixpath.basename(e.path) or "/", type=_TYPES.get(e.kind, pb.FileType.UNSPECIFIED), path=e.path,
        size=e.size, mode=e.mode, permissions=_permissions(kind | e.mode), owner=e.owner, group=e.group,
        modified_time=Timestamp(seconds=e.mtime_ns // 1_000_000_000, nanos=e.mtime_ns % 1_000_000_000),
        symlink_target=e.target)


def _permissions(mode: int) -> str:
    """As Go's os.FileMode.String() writes it (what envd sends): 'drwxr-xr-x', 'Lrwxrwxrwx'."""
    text = st.filemode(mode)
    return ("L" + text[1:]) if text.startswith("l") else text


def _absolute(path: str) -> str:
    if not path.startswith("/"):
        raise ConnectError(Code.INVALID_ARGUMENT, f"{path!r}: a path in the sandbox must be absolute")
    return posixpath.normpath(path)


@dataclass
class Watcher:
    stop: Callable[[], None]
    events: list[pb.FilesystemEvent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FilesystemService(filesystem_connect.Filesystem):
    def __init__(self, open_: Opener) -> None:
        self.open = open_
        self._lock = threading.Lock()
        self._watchers: dict[str, dict[str, Watcher]] = {}  # box id -> watcher id -> watcher

    async def _call(self, ctx: RequestContext[Any, Any], fn: Callable[[BoxFiles, Target], T]) -> T:
        headers = {k.lower(): v for k, v in ctx.request_headers.items()}

        def work() -> T:
            target = self.open(headers)
            return fn(files_of(target), target)
        try:
            return await asyncio.to_thread(work)
        except BoxError as e:
            raise connect_error(e) from e

    async def stat(self, request: pb.StatRequest, ctx: RequestContext[pb.StatRequest, pb.StatResponse]
                   ) -> pb.StatResponse:
        path = _absolute(request.path)
        e = await self._call(ctx, lambda f, _t: f.stat(path))
        return pb.StatResponse(entry=entry_info(e))

    async def make_dir(self, request: pb.MakeDirRequest, ctx: RequestContext[pb.MakeDirRequest, pb.MakeDirResponse]
                       ) -> pb.MakeDirResponse:
        path = _absolute(request.path)

        def work(f: BoxFiles, _t: Target) -> FsEntry:
            if not f.make_dir(path):
                raise ConnectError(Code.ALREADY_EXISTS, f"{path}: already exists")
            return f.stat(path)
        e = await self._call(ctx, work)
        return pb.MakeDirResponse(entry=entry_info(e))

    async def move(self, request: pb.MoveRequest, ctx: RequestContext[pb.MoveRequest, pb.MoveResponse]
                   ) -> pb.MoveResponse:
        src, dst = _absolute(request.source), _absolute(request.destination)
        e = await self._call(ctx, lambda f, _t: f.move(src, dst))
        return pb.MoveResponse(entry=entry_info(e))

    async def list_dir(self, request: pb.ListDirRequest, ctx: RequestContext[pb.ListDirRequest, pb.ListDirResponse]
                       ) -> pb.ListDirResponse:
        path = _absolute(request.path)
        depth = max(1, request.depth or 1)
        entries = await self._call(ctx, lambda f, _t: f.walk(path, depth))
        return pb.ListDirResponse(entries=[entry_info(e) for e in entries])

    async def remove(self, request: pb.RemoveRequest, ctx: RequestContext[pb.RemoveRequest, pb.RemoveResponse]
                     ) -> pb.RemoveResponse:
        path = _absolute(request.path)

        def work(f: BoxFiles, _t: Target) -> None:
            f.stat(path)  # NOT_FOUND for what is not there, as envd answers
            f.remove(path)
        await self._call(ctx, work)
        return pb.RemoveResponse()

    # --- watching -------------------------------------------------------------------
    def _start_watch(self, f: BoxFiles, path: str, recursive: bool,
                     on_event: Callable[[pb.FilesystemEvent], None]) -> Callable[[], None]:
        def seen(kind: str, name: str) -> None:
            if kind in _EVENTS:
                on_event(pb.FilesystemEvent(name=name, type=_EVENTS[kind]))
        if f.stat(path).kind != "dir":
            raise ConnectError(Code.INVALID_ARGUMENT, f"{path}: not a folder")
        return f.watch(path, recursive, seen).stop

    async def watch_dir(self, request: pb.WatchDirRequest,
                        ctx: RequestContext[pb.WatchDirRequest, pb.WatchDirResponse]
                        ) -> AsyncIterator[pb.WatchDirResponse]:
        path = _absolute(request.path)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[pb.FilesystemEvent] = asyncio.Queue(WATCH_EVENTS)

        def on_event(ev: pb.FilesystemEvent) -> None:
            loop.call_soon_threadsafe(lambda: None if queue.full() else queue.put_nowait(ev))
        stop = await self._call(ctx, lambda f, _t: self._start_watch(f, path, request.recursive, on_event))
        try:
            yield pb.WatchDirResponse(event=Oneof("start", pb.WatchDirResponse.StartEvent()))  # type: ignore[arg-type]
            while True:
                try:
                    ev = await asyncio.wait_for(queue.get(), 30.0)
                except TimeoutError:
                    yield pb.WatchDirResponse(event=Oneof("keepalive", pb.WatchDirResponse.KeepAlive()))  # type: ignore[arg-type]
                    continue
                yield pb.WatchDirResponse(event=Oneof("filesystem", ev))  # type: ignore[arg-type]
        finally:
            await asyncio.to_thread(stop)

    async def create_watcher(self, request: pb.CreateWatcherRequest,
                             ctx: RequestContext[pb.CreateWatcherRequest, pb.CreateWatcherResponse]
                             ) -> pb.CreateWatcherResponse:
        path = _absolute(request.path)
        wid = secrets.token_hex(8)
        holder: list[Watcher] = []

        def on_event(ev: pb.FilesystemEvent) -> None:
            w = holder[0] if holder else None
            if w is not None:
                with w.lock:
                    if len(w.events) < WATCH_EVENTS:
                        w.events.append(ev)

        def work(f: BoxFiles, t: Target) -> str:
            with self._lock:
                if len(self._watchers.get(t.row.id, {})) >= MAX_WATCHERS:
                    raise ConnectError(Code.RESOURCE_EXHAUSTED, f"at most {MAX_WATCHERS} watchers per sandbox")
            w = Watcher(stop=lambda: None)
            holder.append(w)
            w.stop = self._start_watch(f, path, request.recursive, on_event)
            with self._lock:
                self._watchers.setdefault(t.row.id, {})[wid] = w
            return wid
        await self._call(ctx, work)
        return pb.CreateWatcherResponse(watcher_id=wid)

    def _watcher(self, t: Target, wid: str) -> Watcher:
        with self._lock:
            w = self._watchers.get(t.row.id, {}).get(wid)
        if w is None:
            raise ConnectError(Code.NOT_FOUND, f"watcher {wid}: not found")
        return w

    async def get_watcher_events(self, request: pb.GetWatcherEventsRequest,
                                 ctx: RequestContext[pb.GetWatcherEventsRequest, pb.GetWatcherEventsResponse]
                                 ) -> pb.GetWatcherEventsResponse:
        def work(_f: BoxFiles, t: Target) -> list[pb.FilesystemEvent]:
            w = self._watcher(t, request.watcher_id)
            with w.lock:
                out, w.events = w.events, []
            return out
        events = await self._call(ctx, work)
        return pb.GetWatcherEventsResponse(events=events)

    async def remove_watcher(self, request: pb.RemoveWatcherRequest,
                             ctx: RequestContext[pb.RemoveWatcherRequest, pb.RemoveWatcherResponse]
                             ) -> pb.RemoveWatcherResponse:
        def work(_f: BoxFiles, t: Target) -> None:
            w = self._watcher(t, request.watcher_id)
            with self._lock:
                self._watchers.get(t.row.id, {}).pop(request.watcher_id, None)
            w.stop()
        await self._call(ctx, work)
        return pb.RemoveWatcherResponse()

    def close(self) -> None:
        with self._lock:
            watchers = [w for ws in self._watchers.values() for w in ws.values()]
            self._watchers.clear()
        for w in watchers:
            try:
                w.stop()
            except BoxError:
                pass
