"""Many host clients on the guest's one virtio-serial stream: the shim's routing rules.

Pure: frames in, (destination, frame) out; no sockets. Each client speaks the guest
protocol as if alone. The mux gives every client session a guest-wide stream id and
rewrites ids both ways; answers HELLO itself from what the guest said at boot; hands
stream-0 replies (RESULT to CONFIG/MOUNT/SEED/SHUTDOWN, PONG to a PING on 0) to the clients that
asked, in order; and kills what a client started when it goes away.
"""
from __future__ import annotations

import itertools
import signal
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from a3s_box.guest import protocol as p
from a3s_box.guest.protocol import Frame, MsgType

ClientId = int
GUEST = -1  # destination: the guest channel

# client frames that open a session on a new stream
_OPENERS = {MsgType.EXEC, MsgType.PUT, MsgType.GET, MsgType.STATUS, MsgType.PING}
# guest frames after which a session's stream is finished
_TERMINAL = {MsgType.EXIT, MsgType.RESULT, MsgType.STATUS_REPLY, MsgType.PONG, MsgType.ERROR}


@dataclass(frozen=True)
class Out:
    dest: int  # GUEST or a ClientId
    data: bytes


class Mux:
    def __init__(self, guest_hello: Frame) -> None:
        self._hello = p.encode_frame(Frame(MsgType.HELLO, 0, guest_hello.payload))
        self._ids = self._id_source()
        self._to_guest: dict[tuple[ClientId, int], int] = {}
        self._to_client: dict[int, tuple[ClientId, int]] = {}
        self._ctl_waiting: deque[ClientId | None] = deque()  # who gets the next stream-0 reply

    @staticmethod
    def _id_source() -> Iterator[int]:
        for i in itertools.cycle(range(1, 1 << 32)):
            yield i

    def _new_guest_id(self) -> int:
        while True:
            sid = next(self._ids)
            if sid not in self._to_client:
                return sid

    def from_client(self, cid: ClientId, f: Frame) -> list[Out]:
        if f.stream == 0:
            if f.type == MsgType.HELLO:
                return [Out(cid, self._hello)]  # the guest said hello once, at boot
            if f.type in (MsgType.CONFIG, MsgType.MOUNT, MsgType.SEED, MsgType.SHUTDOWN, MsgType.PING):
                self._ctl_waiting.append(cid)
            return [Out(GUEST, p.encode_frame(f))]
        key = (cid, f.stream)
        gid = self._to_guest.get(key)
        if gid is None:
            if f.type not in _OPENERS:
                return []  # a late STDIN/SIGNAL for a finished session: nothing to do
            gid = self._new_guest_id()
            self._to_guest[key] = gid
            self._to_client[gid] = key
        return [Out(GUEST, p.encode(f.type, gid, f.payload))]

    def from_guest(self, f: Frame) -> list[Out]:
        if f.stream == 0:
            if f.type in (MsgType.RESULT, MsgType.PONG) or (
                    f.type == MsgType.ERROR and self._ctl_waiting):
                cid = self._ctl_waiting.popleft() if self._ctl_waiting else None
                return [] if cid is None else [Out(cid, p.encode_frame(f))]
            return []  # e.g. a stray HELLO or a resync ERROR no client asked for
        key = self._to_client.get(f.stream)
        if key is None:
            return []
        if f.type in _TERMINAL:
            del self._to_client[f.stream]
            del self._to_guest[key]
        cid, stream = key
        return [Out(cid, p.encode(f.type, stream, f.payload))]

    def drop_client(self, cid: ClientId) -> list[Out]:
        """The client is gone: kill what it started (the guest only does so when the
        whole channel closes), and forget its pending stream-0 requests."""
        out: list[Out] = []
        for key in sorted(k for k in self._to_guest if k[0] == cid):
            gid = self._to_guest.pop(key)
            del self._to_client[gid]
            out.append(Out(GUEST, p.signal_frame(gid, int(signal.SIGKILL))))
        self._ctl_waiting = deque(None if c == cid else c for c in self._ctl_waiting)
        return out

    def end_all(self, why: str) -> list[Out]:
        """The guest broke the protocol: every open session ends with an ERROR to its
        client (what the guest said on them can no longer be trusted)."""
        payload = p.Writer().i32(71).str(why).bytes()  # EPROTO
        out = [Out(cid, p.encode(MsgType.ERROR, stream, payload))
               for (cid, stream) in sorted(self._to_guest)]
        for key in sorted(self._to_guest):
            gid = self._to_guest.pop(key)
            del self._to_client[gid]
            out.append(Out(GUEST, p.signal_frame(gid, int(signal.SIGKILL))))
        return out

    def sessions(self, cid: ClientId) -> int:
        return sum(1 for k in self._to_guest if k[0] == cid)
