"""The fork server: `python -m a3s_box.forkserver.server HOME FINGERPRINT IDLE_EXIT`.

Started by client.py when its socket does not answer (one starter at a time): this
first process binds HOME/run/forkserver-v1-FINGERPRINT.sock, imports every module of
wire.SPAWNABLE, freezes what it holds out of the garbage collector's reach (a collection
in a child would otherwise write to every shared page), forks the server off and exits 0.
The server exits by itself once nobody asked it for IDLE_EXIT seconds; its children do
not depend on it (they are reparented like any orphan).

A request forks one child, which makes a session of its own, takes the three descriptors
it was sent as stdin, stdout and stderr, the caller's umask and folder, names itself in
/proc/PID/cmdline as "MODULE ARG..." (what supervision.py and `ps` look for), tells the
caller its pid, and runs MODULE's main(). What else it has is the server's: the
environment and the cgroups, which the fingerprint names (client.py), so it is what the
caller would have given a child of its own.

Threat model. The callers are the host's own code, running as the server's uid (root,
or one user: each home is one uid's); anything else on the host is hostile:
  - only the server's uid may ask: the socket is 0600 in that uid's 0700 HOME/run, and a
    peer whose SO_PEERCRED uid differs is dropped before a byte of it is read;
  - only the modules of wire.SPAWNABLE run, each with its own argument check; a request is
    decoded by wire.py (sans-IO, bounded, fuzzed) and a malformed one closes that
    connection only, as do descriptors beyond the three expected (closed unread);
  - one thread only, so fork() never copies a lock another thread held; a caller that
    says nothing is dropped after HANDSHAKE_TIMEOUT, the longest it can hold the others.
The children share the server's memory copy-on-write and so its secrets, of which it
holds none: it reads no box's configuration, only the request.
"""
from __future__ import annotations

import contextlib
import gc
import importlib
import os
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
from pathlib import Path

from a3s_box import rundaemon
from a3s_box.forkserver import wire

HANDSHAKE_TIMEOUT = 2.0


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} forkserver: {message}", file=sys.stderr, flush=True)


def _peer_uid(conn: socket.socket) -> int:
    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                           struct.calcsize("3i")))
    return int(uid)


def _receive(conn: socket.socket) -> tuple[bytes, bool, list[int]]:
    """One packet and the descriptors that came with it (all of them, to close)."""
    fd_size = struct.calcsize("i")
    data, ancillary, flags, _ = conn.recvmsg(wire.MAX_MESSAGE + 1,
                                             socket.CMSG_SPACE(fd_size * (wire.STDIO_FDS + 1)),
                                             socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % fd_size
            fds.extend(struct.unpack(f"{usable // fd_size}i", payload[:usable]))
    truncated = bool(flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC))
    return data, truncated, fds


class Server:
    def __init__(self, listener: socket.socket, idle_exit: float) -> None:
        self._listener = listener
        self._idle_exit = idle_exit
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def run(self) -> None:
        signal.set_wakeup_fd(self._wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a wakeup: children are reaped below
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        last_asked = time.monotonic()
        while True:
            left = self._idle_exit - (time.monotonic() - last_asked)
            if left <= 0:
                return
            for key, _ in self._selector.select(left):
                if key.fileobj is self._listener:
                    last_asked = time.monotonic()
                    self._accept()
                else:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._wake_read, 512):
                            pass
            self._reap()

    @staticmethod
    def _reap() -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        fds: list[int] = []
        try:
            if _peer_uid(conn) != os.geteuid():
                return  # not one of ours: not a byte of it is read
            conn.settimeout(HANDSHAKE_TIMEOUT)
            data, truncated, fds = _receive(conn)
            try:
                request = wire.decode_request(data, truncated)
                if len(fds) != wire.STDIO_FDS:
                    raise wire.WireError(f"{len(fds)} descriptors, not {wire.STDIO_FDS}")
            except wire.WireError as e:
                with contextlib.suppress(OSError):
                    conn.send(wire.encode_reply(wire.Reply(error=str(e))))
                return
            sys.stdout.flush()
            sys.stderr.flush()
            if os.fork() == 0:
                self._become(request, fds, conn)  # never returns
        except OSError as e:
            _log(f"a request failed: {e}")
        finally:
            for fd in fds:
                os.close(fd)
            conn.close()

    def _become(self, request: wire.Request, fds: list[int], conn: socket.socket) -> None:
        """In the child: the process REQUEST asks for, then its module's main()."""
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh interpreter has
            self._selector.close()
            self._listener.close()
            os.close(self._wake_read)
            os.close(self._wake_write)
            os.setsid()
            for number, fd in enumerate(fds):
                os.dup2(fd, number)
            for fd in fds:
                os.close(fd)
            os.umask(request.umask)
            try:
                os.chdir(request.cwd)
            except OSError:
                os.chdir("/")
            import setproctitle
            setproctitle.setproctitle(" ".join((request.module, *request.args)))
            sys.argv = [request.module, *request.args]
            conn.settimeout(HANDSHAKE_TIMEOUT)
            conn.send(wire.encode_reply(wire.Reply(pid=os.getpid())))
            conn.close()
            main = importlib.import_module(request.module).main
            argv = list(request.args) if wire.SPAWNABLE[request.module] == "args" else sys.argv
            status = int(main(argv) or 0)
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)


def _one_malloc_arena() -> None:
    """A shim's threads (its namespace's, its registration's) would each get a malloc
    arena of their own, every page of it private to that shim; one arena for all keeps
    them within what the shim writes. Measured: 6.4 -> see README (bench/boot.py)."""
    import ctypes

    m_arena_max = -8
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(m_arena_max, 1)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: python -m a3s_box.forkserver.server HOME FINGERPRINT IDLE_EXIT", file=sys.stderr)
        return 2
    home, fingerprint = Path(argv[1]), argv[2]
    try:
        import setproctitle
        # claims argv's and the environment's memory (the room variable's too) for titles
        setproctitle.setproctitle(f"a3s_box.forkserver.server {home}")
        os.environ.pop(wire.ROOM_VARIABLE, None)
        idle_exit = float(argv[3])
        listener = rundaemon.bind_listening(home / "run", wire.socket_name(fingerprint), 64)
        for module in wire.SPAWNABLE:
            importlib.import_module(module)
    except Exception as e:
        _log(f"cannot start: {e!r}")
        return 1
    _one_malloc_arena()
    gc.collect()
    gc.freeze()
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() != 0:
        os._exit(0)  # the starter waits for this: the socket answers from now on
    _log(f"pid {os.getpid()} serving {home / 'run' / wire.socket_name(fingerprint)}")
    Server(listener, idle_exit).run()
    _log(f"pid {os.getpid()}: not asked for {idle_exit:g}s, exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
