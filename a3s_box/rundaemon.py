"""A per-home daemon on a socket in HOME/run: found, or started, and listening.

The egress daemon and the fork server are both reached the same way, and this module
is that way, written once:

    run = open_run_dir(home / "run")                 # the caller's uid's, 0700
    sock = connect_or_start(run, "x.sock", "x.lock", start=lambda: start_detached(...))
    ... the daemon itself:  listener = bind_listening(home / "run", "x.sock")

Threat: another local user. The folder must be the calling uid's (it is made 0700 and
opened without following links, and every name in it is reached through
/proc/self/fd/RUN, which also keeps socket paths short whatever HOME is); a socket is
bound 0600 under umask 0177, so no other uid can connect even for an instant. Whoever
the daemon serves, it still checks its peers itself (SO_PEERCRED). Starters take a lock
in the folder, so two callers never start two daemons on one name, and a stale socket
(its daemon died) is replaced only by the lock's holder.

Errors: DaemonSocketError (an OSError) saying what failed; each caller words it as its
own error type.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class DaemonSocketError(OSError):
    """The run folder, the socket or the daemon's start failed (the message says how)."""


def open_run_dir(path: Path) -> int:
    """PATH made (0700) and opened; it must belong to this uid."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        raise DaemonSocketError(f"{path}: {e.strerror}") from e
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        os.close(fd)
        raise DaemonSocketError(f"{path} belongs to uid {st.st_uid}, not to this one")
    if st.st_mode & 0o077:
        os.fchmod(fd, 0o700)
    return fd


def try_connect(run: int, name: str) -> socket.socket | None:
    """A connection to RUN/NAME, or None when nobody listens there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{run}/{name}")
        return sock
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except OSError as e:
        sock.close()
        raise DaemonSocketError(f"{name}: {e.strerror}") from e


def connect_or_start(run: int, name: str, lock_name: str, start: Callable[[], None]) -> socket.socket:
    """A connection to RUN/NAME; when nobody answers, START() is called (under RUN/LOCK_NAME,
    once for all concurrent callers) and must return once the daemon listens."""
    sock = try_connect(run, name)
    if sock is not None:
        return sock
    lock = os.open(f"/proc/self/fd/{run}/{lock_name}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = try_connect(run, name)  # another starter may have been first
        if sock is None:
            start()
            sock = try_connect(run, name)
        if sock is None:
            raise DaemonSocketError(f"the daemon on {name} started but does not answer")
        return sock
    finally:
        os.close(lock)


def start_detached(argv: Sequence[str], run: int, log_name: str, *, timeout: float, max_log: int,
                   env: Mapping[str, str] | None = None) -> int:
    """Runs ARGV (a daemon's starter: it binds, forks the daemon off and exits) in a
    session of its own with stderr appended to RUN/LOG_NAME (emptied past MAX_LOG bytes),
    and returns its exit status. A starter that takes longer than TIMEOUT is killed."""
    log = os.open(f"/proc/self/fd/{run}/{log_name}",
                  os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        if os.fstat(log).st_size > max_log:
            os.ftruncate(log, 0)
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                close_fds=True, start_new_session=True, cwd="/",
                                env=dict(env) if env is not None else None)
    except OSError as e:
        raise DaemonSocketError(f"cannot start {argv[0]}: {e.strerror}") from e
    finally:
        os.close(log)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise DaemonSocketError(f"the daemon did not start within {timeout:g}s") from None


def log_tail(run: int, log_name: str) -> str:
    """The last line of RUN/LOG_NAME (a daemon's reason for not starting), or ""."""
    try:
        with open(f"/proc/self/fd/{run}/{log_name}", "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 1000))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def bind_listening(run_path: Path, name: str, backlog: int) -> socket.socket:
    """RUN_PATH/NAME, this uid's and 0600, listening. A stale socket there is replaced:
    the caller is a starter holding the lock, which found nobody answering it."""
    dfd = open_run_dir(run_path)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dfd)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            sock.bind(f"/proc/self/fd/{dfd}/{name}")
        finally:
            os.umask(old)
        os.chmod(name, 0o600, dir_fd=dfd)
        sock.listen(backlog)
        return sock
    finally:
        os.close(dfd)
