"""spawn(): a child of HOME's fork server, running a module of wire.SPAWNABLE.

The server is found by its socket, whose name carries the fingerprint of what its
children inherit from it rather than from their caller: the Python and a3s_box it runs
(the newest source file's time included, so an edited checkout gets a new server), the
environment given, the uid and the cgroups. A caller that differs in any of these
reaches (or starts) another server, whose children are then what its own would be.
"""
from __future__ import annotations

import array
import functools
import hashlib
import os
import socket
import time
import sys
from collections.abc import Mapping
from pathlib import Path

from a3s_box import rundaemon
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
    for attempt in (1, 2):
        try:
            return _ask(home, request, stdio, env)
        except _ServerGone as e:
            # a server that was exiting (idle, or killed) when we connected: no child was
            # made (the child itself answers), so asking again, of a fresh one, is safe
            if attempt == 2:
                raise SpawnError(f"the fork server did not answer: {e}") from e
            time.sleep(0.1)  # for the exiting one's socket to stop answering
    raise AssertionError("unreachable")


class _ServerGone(Exception):
    pass


def _ask(home: Path, request: bytes, stdio: tuple[int, int, int], env: Mapping[str, str]) -> int:
    try:
        run = rundaemon.open_run_dir(home / "run")
    except rundaemon.DaemonSocketError as e:
        raise SpawnError(f"the fork server's folder: {e}") from e
    try:
        digest = fingerprint(env)
        sock = rundaemon.connect_or_start(run, wire.socket_name(digest), wire.LOCK_NAME,
                                          lambda: _start(home, run, digest, env))
    except rundaemon.DaemonSocketError as e:
        raise SpawnError(f"the fork server: {e}") from e
    finally:
        os.close(run)
    with sock:
        sock.settimeout(REPLY_TIMEOUT)
        try:
            sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", stdio))])
            data, _, flags, _ = sock.recvmsg(wire.MAX_MESSAGE + 1)
        except (ConnectionResetError, BrokenPipeError) as e:
            raise _ServerGone(str(e)) from e
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


def _start(home: Path, run: int, digest: str, env: Mapping[str, str]) -> None:
    idle = os.environ.get("A3S_BOX_FORKSERVER_IDLE_EXIT") or str(IDLE_EXIT)
    status = rundaemon.start_detached(
        [sys.executable, "-m", "a3s_box.forkserver.server", str(home), digest, idle], run, wire.LOG_NAME,
        timeout=START_TIMEOUT, max_log=MAX_LOG, env={**env, wire.ROOM_VARIABLE: "." * TITLE_ROOM})
    if status != 0:
        raise SpawnError(f"the fork server did not start (exit {status}); see {home / 'run' / wire.LOG_NAME}")
