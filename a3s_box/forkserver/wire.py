"""What a caller and the fork server say to each other (sans-IO).

The socket: HOME/run/forkserver-FINGERPRINT.sock (the caller's uid's, 0600, in its 0700
HOME/run), AF_UNIX SOCK_SEQPACKET, one UTF-8 JSON object per packet. FINGERPRINT names
everything a child inherits from the server instead of from its caller (the Python and
the code it runs, the environment, the cgroups), so a caller only ever reaches a server
whose children would be the same as if it had started them itself; a server of other
code or another environment is another socket, idle until it exits.

    caller -> server   {"v": 1, "module": NAME, "args": [str], "cwd": str, "umask": int}
                       with three descriptors: the child's stdin, stdout and stderr
    child  -> caller   {"pid": PID}  (sent by the child itself, once its title names it)
    server -> caller   {"error": str}  (the request was refused)

Decoding never raises anything but WireError on what a peer sent.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

VERSION = 1
MAX_MESSAGE = 16 << 10
MAX_ARGS = 16
STDIO_FDS = 3
LOCK_NAME = "forkserver.lock"  # one starter at a time
LOG_NAME = "forkserver.log"  # the server's own errors (its stderr)
# Set (to TITLE_ROOM bytes) only in the server's starting environment: setproctitle
# reuses the environment's memory for titles, and a child's title names its box folder.
ROOM_VARIABLE = "A3S_BOX_FORKSERVER_ROOM"

# What a child may run, and how its main() takes its arguments: "args" is main(argv[1:]),
# "argv" is main(argv) (argv[0] the module). The server preloads exactly these.
SPAWNABLE: dict[str, str] = {
    "a3s_box.drivers.qemu.shim": "args",
}


class WireError(ValueError):
    """A message that is not one this protocol has: its sender is dropped."""


def socket_name(fingerprint: str) -> str:
    return f"forkserver-v{VERSION}-{fingerprint}.sock"


@dataclass(frozen=True)
class Request:
    module: str
    args: tuple[str, ...]
    cwd: str = "/"
    umask: int = 0o022


_REQUEST_FIELDS = frozenset({"v", "module", "args", "cwd", "umask"})


def encode_request(r: Request) -> bytes:
    return _encode({"v": VERSION, "module": r.module, "args": list(r.args), "cwd": r.cwd, "umask": r.umask})


def decode_request(data: bytes, truncated: bool = False) -> Request:
    m = _decode(data, truncated)
    if m.get("v") != VERSION:
        raise WireError(f"protocol version {m.get('v')!r}, this server speaks {VERSION}")
    if set(m) - _REQUEST_FIELDS:
        raise WireError(f"unknown fields: {sorted(set(m) - _REQUEST_FIELDS)}")
    module, args, cwd, umask = (m.get(k) for k in ("module", "args", "cwd", "umask"))
    if not isinstance(module, str) or module not in SPAWNABLE:
        raise WireError(f"not a module this server runs: {module!r}")
    if (not isinstance(args, list) or len(args) > MAX_ARGS
            or not all(isinstance(a, str) and "\0" not in a for a in args)):
        raise WireError("args: a list of at most 16 strings without NUL")
    if not isinstance(cwd, str) or not cwd.startswith("/") or "\0" in cwd:
        raise WireError("cwd: an absolute path")
    if not isinstance(umask, int) or isinstance(umask, bool) or not 0 <= umask <= 0o777:
        raise WireError("umask: an integer from 0 to 0o777")
    return Request(module, tuple(args), cwd, umask)


@dataclass(frozen=True)
class Reply:
    pid: int | None = None
    error: str | None = None


def encode_reply(r: Reply) -> bytes:
    return _encode({k: v for k, v in (("pid", r.pid), ("error", r.error)) if v is not None})


def decode_reply(data: bytes, truncated: bool = False) -> Reply:
    m = _decode(data, truncated)
    if len(m) != 1:
        raise WireError("a reply has exactly one field")
    (key, value), = m.items()
    if key == "pid" and isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise WireError(f"pid {value}")
        return Reply(pid=value)
    if key == "error" and isinstance(value, str):
        return Reply(error=value[:1000])
    raise WireError(f"not a reply: {key!r}")


def _encode(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, sort_keys=True, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise WireError(f"a message of {len(data)} bytes (at most {MAX_MESSAGE})")
    return data


def _decode(data: bytes, truncated: bool) -> dict[str, Any]:
    if truncated or len(data) > MAX_MESSAGE:
        raise WireError(f"a message longer than {MAX_MESSAGE} bytes")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise WireError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise WireError("not a JSON object")
    return value
