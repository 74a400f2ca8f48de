"""spawn(): a child of HOME's fork server, running a module of wire.SPAWNABLE.

The server is found by its socket, whose name carries the fingerprint of what its
children inherit from it rather than from their caller: the Python and a3s_box it runs
(the newest source file's time included, so an edited checkout gets a new server), the
environment given, the uid and the cgroups. A caller that differs in any of these
reaches (or starts) another server, whose children are then what its own would be.
"""
from __future__ import annotations

import array
import fcntl
import functools
import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from a3s_box.forkserver import wire
from a3s_box.version import __version__

IDLE_EXIT = 300.0  # seconds without a request ($A3S_BOX_FORKSERVER_IDLE_EXIT)
START_TIMEOUT = 30.0  # the server imported what its children run and listens
REPLY_TIMEOUT = 30.0  # a loaded host may take long to schedule the child
TITLE_ROOM = 1024  # bytes of environment the server keeps for its children's titles
MAX_LOG = 1 << 20


class SpawnError(OSError):
    """The fork server could not be started or asked (the message says why)."""


@functools.cache
def _code_identity() -> str:
    package = Path(__file__).resolve().parent.parent  # a3s_box
    newest = 0
    for folder, _dirs, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                newest = max(newest, os.stat(os.path.join(folder, name)).st_mtime_ns)
    # "bench/../.venv/bin/python" and ".venv/bin/python" are one Python (not realpath:
    # a venv's python is a link to the base interpreter, whose packages differ)
    return f"{os.path.abspath(sys.executable)}\0{package}\0{__version__}\0{newest}"


def fingerprint(env: Mapping[str, str]) -> str:
    digest = hashlib.sha256(_code_identity().encode())
    for key in sorted(env):
        digest.update(f"\0{key}={env[key]}".encode())
    digest.update(f"\0{os.geteuid()}\0{os.getegid()}\0".encode())
    try:
        digest.update(Path("/proc/self/cgroup").read_bytes())
    except OSError:
        pass
    return digest.hexdigest()[:16]


def spawn(home: Path, module: str, args: list[str], stdio: tuple[int, int, int],
          env: Mapping[str, str]) -> int:
    """Fork MODULE's main(ARGS) off HOME's fork server for ENV (started first if none
    answers); its stdin, stdout and stderr are STDIO. Returns its pid, once its
    /proc/PID/cmdline reads "MODULE ARG...". It is in a session of its own."""
    request = wire.encode_request(wire.Request(module, tuple(args), os.getcwd(), _current_umask()))
    run = _run_dir(home)
    try:
        digest = fingerprint(env)
        sock = _try_connect(run, wire.socket_name(digest))
        if sock is None:
            sock = _start(home, run, digest, env)
    finally:
        os.close(run)
    with sock:
        sock.settimeout(REPLY_TIMEOUT)
        try:
            sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", stdio))])
            data, _, flags, _ = sock.recvmsg(wire.MAX_MESSAGE + 1)
        except OSError as e:
            raise SpawnError(f"the fork server did not answer: {e}") from e
        if not data:
            raise SpawnError(f"the fork server's child ended before it started (see {home / 'run' / wire.LOG_NAME})")
        try:
            reply = wire.decode_reply(data, bool(flags & socket.MSG_TRUNC))
        except wire.WireError as e:
            raise SpawnError(f"the fork server said something else: {e}") from e
    if reply.pid is None:
        raise SpawnError(f"the fork server refused: {reply.error}")
    return reply.pid


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _run_dir(home: Path) -> int:
    path = home / "run"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    owner = os.fstat(fd).st_uid
    if owner != os.geteuid():
        os.close(fd)
        raise SpawnError(f"{path} belongs to uid {owner}, not to this one")
    return fd


def _try_connect(run: int, name: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{run}/{name}")
        return sock
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except OSError as e:
        sock.close()
        raise SpawnError(f"the fork server's socket: {e}") from e


def _start(home: Path, run: int, digest: str, env: Mapping[str, str]) -> socket.socket:
    name = wire.socket_name(digest)
    lock = os.open(f"/proc/self/fd/{run}/{wire.LOCK_NAME}",
                   os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = _try_connect(run, name)  # another starter may have been first
        if sock is not None:
            return sock
        log = os.open(f"/proc/self/fd/{run}/{wire.LOG_NAME}",
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            if os.fstat(log).st_size > MAX_LOG:
                os.ftruncate(log, 0)
            idle = os.environ.get("A3S_BOX_FORKSERVER_IDLE_EXIT") or str(IDLE_EXIT)
            proc = subprocess.Popen(
                [sys.executable, "-m", "a3s_box.forkserver.server", str(home), digest, idle],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, close_fds=True,
                start_new_session=True, cwd="/", env={**env, wire.ROOM_VARIABLE: "." * TITLE_ROOM})
        except OSError as e:
            raise SpawnError(f"cannot start the fork server: {e}") from e
        finally:
            os.close(log)
        try:
            status = proc.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise SpawnError(f"the fork server did not start within {START_TIMEOUT:g}s") from None
        if status != 0:
            raise SpawnError(f"the fork server did not start (exit {status}); see {home / 'run' / wire.LOG_NAME}")
        sock = _try_connect(run, name)
        if sock is None:
            raise SpawnError("the fork server started but does not answer")
        return sock
    finally:
        os.close(lock)
