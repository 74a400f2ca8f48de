"""Host-side codec of the guest protocol (docs/guest-protocol.md), version 1.

Pure: bytes in, values out. The transports (shim, vsock, stdio test mode) and the
session client live elsewhere; this module only frames and parses.
"""
from __future__ import annotations

import builtins
import enum
import struct
from dataclasses import dataclass, field

VERSION = 1
MAGIC = b"\xa3\xb0"
HEADER = struct.Struct(">2sIBI")  # magic, length, type, stream
HEADER_SIZE = HEADER.size  # 11
MAX_PAYLOAD = 1 << 20
MAX_LENGTH = 5 + MAX_PAYLOAD


class MsgType(enum.IntEnum):
    HELLO = 0x01
    PING = 0x02
    PONG = 0x03
    CONFIG = 0x04
    SHUTDOWN = 0x05
    MOUNT = 0x06
    SEED = 0x07
    PREPARE = 0x08
    TRUST = 0x09
    NET = 0x0A
    RESULT = 0x0F
    EXEC = 0x10
    STARTED = 0x11
    STDIN = 0x12
    STDOUT = 0x13
    STDERR = 0x14
    EXIT = 0x15
    SIGNAL = 0x16
    RESIZE = 0x17
    PUT = 0x20
    GET = 0x21
    DATA = 0x22
    STATUS = 0x30
    STATUS_REPLY = 0x31
    ERROR = 0x7F


# Stream-0 requests a host client makes, each answered by one RESULT (PING by PONG) in the
# order asked: the shim's loop (loop/shim_loop.c) routes those answers by this list.
CONTROL_REQUESTS = frozenset({MsgType.CONFIG, MsgType.SHUTDOWN, MsgType.MOUNT, MsgType.SEED,
                              MsgType.PREPARE, MsgType.TRUST, MsgType.NET, MsgType.PING})


class Namespace(enum.IntEnum):
    AGENT = 0
    BUSINESS = 1
    ROOT = 2


class Isolate(enum.IntFlag):
    MOUNT = 1
    PID = 2
    IPC = 4
    UTS = 8
    NET = 16


class Restart(enum.IntEnum):
    NEVER = 0
    ON_FAILURE = 1
    ALWAYS = 2


class ExitKind(enum.IntEnum):
    EXITED = 0
    SIGNALED = 1
    NOT_STARTED = 2


EXEC_TTY = 1
EXEC_STDIN = 2


class ProtocolError(Exception):
    """A frame or payload that does not follow the protocol."""


@dataclass(frozen=True)
class Frame:
    type: int
    stream: int
    payload: bytes = b""


def encode(type_: int, stream: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(MAGIC, 5 + len(payload), type_, stream) + payload


def encode_frame(frame: Frame) -> bytes:
    return encode(frame.type, frame.stream, frame.payload)


class FrameReader:
    """Incremental decoder: feed bytes, take whole frames.

    On a bad magic or length it records the error and resynchronises at the next
    magic, like the guest does, so one corrupt frame does not poison the stream.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.errors: list[str] = []

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while True:
            if len(self._buf) < HEADER_SIZE:
                self._drop_garbage_prefix()
                return frames
            magic, length, type_, stream = HEADER.unpack_from(self._buf)
            if magic != MAGIC or not 5 <= length <= MAX_LENGTH:
                self.errors.append("bad frame header" if magic == MAGIC else "bad magic")
                self._resync()
                continue
            end = 6 + length
            if len(self._buf) < end:
                return frames
            frames.append(Frame(type_, stream, bytes(self._buf[HEADER_SIZE:end])))
            del self._buf[:end]

    def _resync(self) -> None:
        at = self._buf.find(MAGIC, 1)
        if at < 0:
            # keep a trailing 0xA3: it may be the first half of the next magic
            keep = 1 if self._buf[-1:] == MAGIC[:1] else 0
            del self._buf[: len(self._buf) - keep]
        else:
            del self._buf[:at]

    def _drop_garbage_prefix(self) -> None:
        if self._buf and not MAGIC.startswith(bytes(self._buf[:2])):
            self.errors.append("bad magic")
            self._resync()


# --- payload fields ----------------------------------------------------------


class Writer:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, v: int) -> "Writer":
        self._parts.append(struct.pack(">B", v))
        return self

    def u16(self, v: int) -> "Writer":
        self._parts.append(struct.pack(">H", v))
        return self

    def u32(self, v: int) -> "Writer":
        self._parts.append(struct.pack(">I", v))
        return self

    def i32(self, v: int) -> "Writer":
        self._parts.append(struct.pack(">i", v))
        return self

    def u64(self, v: int) -> "Writer":
        self._parts.append(struct.pack(">Q", v))
        return self

    def str(self, v: str | bytes) -> "Writer":
        b = v.encode() if isinstance(v, str) else v
        self._parts.append(struct.pack(">I", len(b)) + b)
        return self

    def strlist(self, vs: list[builtins.str] | tuple[builtins.str, ...]) -> "Writer":
        self.u32(len(vs))
        for v in vs:
            self.str(v)
        return self

    def bytes(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def _take(self, n: int) -> bytes:
        if self._at + n > len(self._data):
            raise ProtocolError("payload too short")
        out = self._data[self._at : self._at + n]
        self._at += n
        return out

    def u8(self) -> int:
        return int(self._take(1)[0])

    def u16(self) -> int:
        return int(struct.unpack(">H", self._take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self._take(4))[0])

    def i32(self) -> int:
        return int(struct.unpack(">i", self._take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self._take(8))[0])

    def str(self) -> str:
        return self._take(self.u32()).decode("utf-8", "replace")

    def strlist(self) -> list[builtins.str]:
        return [self.str() for _ in range(self.u32())]

    def end(self) -> None:
        if self._at != len(self._data):
            raise ProtocolError("trailing bytes in payload")


def parse_kv(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


# --- messages ----------------------------------------------------------------


@dataclass(frozen=True)
class BoxConfig:
    """What the guest init needs to run a box's agent (the CONFIG message)."""

    hostname: str
    env: tuple[str, ...] = ()
    argv: tuple[str, ...] = ()
    workdir: str = ""
    agent_isolate: Isolate = Isolate.MOUNT | Isolate.PID | Isolate.IPC | Isolate.UTS
    business_isolate: Isolate = Isolate(0)
    restart: Restart = Restart.ALWAYS
    memory_max: int = 0
    pids_max: int = 0
    # Business code (docs/security.md): contained (its own read-only root, /tmp and
    # /dev, no capabilities, seccomp) as this uid/gid, with these agent paths writable
    business_contained: bool = True
    business_uid: int = 65534
    business_gid: int = 65534
    business_share: tuple[str, ...] = ()
    business_memory_max: int = 0  # its own cgroup's limits (0: only the agent's)
    business_pids_max: int = 0

    def encode(self) -> bytes:
        return (
            Writer()
            .str(self.hostname)
            .strlist(self.env)
            .strlist(self.argv)
            .str(self.workdir)
            .u32(int(self.agent_isolate))
            .u32(int(self.business_isolate))
            .u8(int(self.restart))
            .u64(self.memory_max)
            .u32(self.pids_max)
            .u8(int(self.business_contained))
            .u32(self.business_uid)
            .u32(self.business_gid)
            .strlist(self.business_share)
            .u64(self.business_memory_max)
            .u32(self.business_pids_max)
            .bytes()
        )

    @classmethod
    def decode(cls, payload: bytes) -> "BoxConfig":
        r = Reader(payload)
        cfg = cls(
            hostname=r.str(),
            env=tuple(r.strlist()),
            argv=tuple(r.strlist()),
            workdir=r.str(),
            agent_isolate=Isolate(r.u32()),
            business_isolate=Isolate(r.u32()),
            restart=Restart(r.u8()),
            memory_max=r.u64(),
            pids_max=r.u32(),
            business_contained=bool(r.u8()),
            business_uid=r.u32(),
            business_gid=r.u32(),
            business_share=tuple(r.strlist()),
            business_memory_max=r.u64(),
            business_pids_max=r.u32(),
        )
        r.end()
        return cfg


@dataclass(frozen=True)
class ExecRequest:
    argv: tuple[str, ...]
    ns: Namespace = Namespace.AGENT
    env: tuple[str, ...] = ()
    workdir: str = ""
    tty: bool = False
    stdin: bool = False
    rows: int = 24
    cols: int = 80

    def encode(self) -> bytes:
        flags = (EXEC_TTY if self.tty else 0) | (EXEC_STDIN if self.stdin else 0)
        return (
            Writer()
            .u8(int(self.ns))
            .u8(flags)
            .u16(self.rows)
            .u16(self.cols)
            .strlist(self.argv)
            .strlist(self.env)
            .str(self.workdir)
            .bytes()
        )


@dataclass(frozen=True)
class ExitStatus:
    kind: ExitKind
    value: int
    message: str = ""

    @property
    def code(self) -> int:
        """The shell convention: the exit code, 128+signal, or 127/126 when not started."""
        if self.kind is ExitKind.EXITED:
            return self.value
        if self.kind is ExitKind.SIGNALED:
            return 128 + self.value
        return 127 if self.value == 2 else 126  # ENOENT -> 127, anything else -> 126

    @classmethod
    def decode(cls, payload: bytes) -> "ExitStatus":
        r = Reader(payload)
        st = cls(ExitKind(r.u8()), r.i32(), r.str())
        r.end()
        return st


@dataclass(frozen=True)
class Result:
    errno: int
    message: str

    @classmethod
    def decode(cls, payload: bytes) -> "Result":
        r = Reader(payload)
        res = cls(r.i32(), r.str())
        r.end()
        return res


@dataclass(frozen=True)
class GuestStatus:
    values: dict[str, str] = field(default_factory=dict)

    @property
    def agent_state(self) -> str:
        return self.values.get("agent_state", "unknown")

    @property
    def restarts(self) -> int:
        return int(self.values.get("restarts", "0") or 0)

    @classmethod
    def decode(cls, payload: bytes) -> "GuestStatus":
        """Every field as the guest wrote it, checked: the guest is hostile, and these
        words end up in `box ps` (a terminal) and in API responses."""
        r = Reader(payload)
        values = parse_kv(r.str())
        if len(values) > 64:
            raise ProtocolError(f"status: {len(values)} fields (at most 64)")
        for key, value in values.items():
            if not (key.isascii() and key.isprintable() and value.isascii() and value.isprintable()) \
                    or len(key) > 64 or len(value) > 256:
                raise ProtocolError(f"status: field {key[:64]!r} is not short printable ASCII")
        if not values.get("restarts", "0").isdigit():
            raise ProtocolError(f"status: restarts {values['restarts'][:32]!r} is not a number")
        return cls(values)


def hello() -> bytes:
    return encode(MsgType.HELLO, 0, Writer().u16(VERSION).bytes())


def exec_frame(stream: int, req: ExecRequest) -> bytes:
    return encode(MsgType.EXEC, stream, req.encode())


MOUNT_READ_ONLY = 1
MOUNT_WAIT_SOURCE = 2  # a hot-plugged device: the guest waits (at most 10 s) for it to appear


def seed_frame(entropy: bytes, now_ns: int) -> bytes:
    return encode(MsgType.SEED, 0, Writer().str(entropy).u64(now_ns).bytes())


# the commands a template's page cache is warmed with (guest/init/warm.c reads no more),
# and the volume targets it makes
PREPARE_MAX_WARM = 8
PREPARE_MAX_TARGETS = 64


def prepare_frame(agent_isolation: int, path: str = "", warm: tuple[str, ...] = (),
                  targets: tuple[str, ...] = ()) -> bytes:
    return encode(MsgType.PREPARE, 0, Writer().u32(agent_isolation).str(path).strlist(warm)
                  .strlist(targets).bytes())


@dataclass(frozen=True)
class Prepared:
    """PREPARE's answer: what the template's guest read into its page cache, and the
    uptime it settled at (None from a guest that is not a VM's PID 1)."""

    warmed_kib: int
    settled_ms: int | None

    @classmethod
    def parse(cls, message: str) -> "Prepared":
        said = dict(part.partition("=")[::2] for part in message.split())
        settled = said.get("settled_ms", "")
        warmed = said.get("warmed_kib", "")
        return cls(warmed_kib=int(warmed) if warmed.isdigit() else 0,
                   settled_ms=int(settled) if settled.isdigit() else None)


def trust_frame(ca_pem: bytes, cert: str, bundle: str, store: str) -> bytes:
    return encode(MsgType.TRUST, 0, Writer().str(ca_pem).str(cert).str(bundle).str(store).bytes())


def net_frame(spec: str) -> bytes:
    """NET: the guest's eth0 configured as a3s.net=SPEC would at boot (ADDR/PREFIX,GATEWAY,DNS[,MTU])."""
    return encode(MsgType.NET, 0, Writer().str(spec).bytes())


def mount_frame(fstype: str, source: str, target: str, read_only: bool = False, data: str = "",
                wait: bool = False) -> bytes:
    flags = (MOUNT_READ_ONLY if read_only else 0) | (MOUNT_WAIT_SOURCE if wait else 0)
    return encode(MsgType.MOUNT, 0, Writer().str(fstype).str(source).str(target).u32(flags).str(data).bytes())


def put_frame(stream: int, path: str, mode: int, ns: Namespace = Namespace.ROOT) -> bytes:
    return encode(MsgType.PUT, stream, Writer().u8(int(ns)).u32(mode).str(path).bytes())


def get_frame(stream: int, path: str, ns: Namespace = Namespace.ROOT) -> bytes:
    return encode(MsgType.GET, stream, Writer().u8(int(ns)).str(path).bytes())


def signal_frame(stream: int, signo: int) -> bytes:
    return encode(MsgType.SIGNAL, stream, Writer().u32(signo).bytes())


def resize_frame(stream: int, rows: int, cols: int) -> bytes:
    return encode(MsgType.RESIZE, stream, Writer().u16(rows).u16(cols).bytes())


def shutdown_frame(reboot: bool = False) -> bytes:
    return encode(MsgType.SHUTDOWN, 0, Writer().u8(1 if reboot else 0).bytes())
