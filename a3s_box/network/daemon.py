"""The host-wide egress daemon: `python -m a3s_box.network.daemon HOME`.

One process, one asyncio loop, serving the egress proxy, DNS and published ports of
every box registered with it (registration.py is the boxes' side, wire.py the protocol).
A box's supervisor registers the box over HOME/run/egress-v2.sock and keeps that
connection open for the box's life; when it closes (the box ended, or its supervisor
died) the daemon ends the box's flows, DNS, published ports and log. The daemon exits
by itself once it has served no box for IDLE_EXIT seconds ($A3S_BOX_EGRESS_IDLE_EXIT),
so a host without connected boxes runs nothing. Boxes started by releases before this
one keep their own per-box helper (helper.py).

Who runs as what:
  - started by a supervisor (root), which waits for its first process: that one binds
    the socket (0600, in root's 0700 HOME/run), forks the daemon off and exits 0;
  - started by a user without root (rootless: netns.UserNetNamespace), it is that user's,
    in that user's HOME/run, and serves only that user's supervisors; it cannot change
    its uid, and keeps no_new_privs and the seccomp denylist;
  - the daemon then drops to DAEMON_UID:DAEMON_UID (wire.py) with no capability, no_new_privs
    and the seccomp denylist (privileges.py). A uid of its own, not nobody and not a box's:
    no other process may signal it, and the boxes' network folders it writes are that
    uid's alone. Fixed, not allocated from jail/ids.py's table: that table forgets a name
    whose box folder is gone, and would hand the daemon's uid to a box.
  - it makes no socket in a namespace (it could not): a box's listeners come with its
    registration, and a socket into the box's namespace for a published port's connection
    is asked of the box's supervisor on the box's own connection.

Threat model. The boxes' guests are hostile (see egress.py and policy.py for what one
box's proxy stops), and this process now holds every box's policy, secrets and CA:
  - one box's flows are never served under another box's policy, secrets or CA: each
    registration builds its own Egress (policy, SecretBook, CA, DNS address book, log),
    bound to the listeners that came with it; nothing is looked up across boxes, by
    address, name or placeholder. A published port's connection goes into the namespace
    of the box whose listener it arrived on, through that box's own connection;
  - only root may register a box: the socket is root's and 0600, and a peer whose
    SO_PEERCRED uid is not 0 is dropped before it is read;
  - a client's malformed or oversized message (wire.MAX_MESSAGE), or descriptors that are
    not what it says, close that client only; descriptors beyond those expected are closed;
  - bounded: MAX_BOXES boxes, MAX_PENDING published-port connections waiting per box, a
    registration read within HANDSHAKE_TIMEOUT, each box's flows capped by egress.py;
  - when a box ends, its log is closed before its folder's descriptor: nothing of a box
    is written through a descriptor number that another box's may reuse.
If this process is taken over, every box's secrets are exposed: it runs without root,
capabilities or a filesystem of its own to reach (the boxes' folders only through the
descriptors it holds), and sends only what its policies allow.
"""
from __future__ import annotations

import array
import asyncio
import concurrent.futures.thread  # noqa: F401 - loaded lazily by the loop's getaddrinfo, after root is dropped
import contextlib
import os
import resource
import socket
import ssl
import stat
import struct
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from a3s_box import rundaemon
from a3s_box.logs.writer import LogLimits
from a3s_box.network import wire
from a3s_box.network.ca import CaPem
from a3s_box.network.egress import DnsProtocol, Egress, relay_connected
from a3s_box.network.log import NetworkLog
from a3s_box.network.policy import NetworkPolicy
from a3s_box.network.privileges import drop_privileges
from a3s_box.network.secrets import SecretBook

IDLE_EXIT = 60.0
HANDSHAKE_TIMEOUT = 10.0
CONNECT_WAIT = 10.0  # for the supervisor's socket into the namespace
MAX_BOXES = 1024
MAX_PENDING = 64
NOFILE = 1 << 20


def _log(line: str) -> None:
    sys.stderr.write(f"a3s-box egress daemon: {line}\n")
    sys.stderr.flush()


def _fds_of(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    out: list[int] = []
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(raw[:len(raw) - len(raw) % fds.itemsize])
            out.extend(fds)
    return out


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)
    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


async def receive(sock: socket.socket, limit: int, max_fds: int) -> tuple[dict[str, Any] | None, list[int]]:
    """The next packet on SOCK (non-blocking) as (message, descriptors); (None, []) at
    its end. WireError for what is not a message, its descriptors closed."""
    while True:
        try:
            data, ancillary, flags, _ = sock.recvmsg(limit + 1, socket.CMSG_SPACE(max_fds * 4),
                                                     socket.MSG_CMSG_CLOEXEC)
            break
        except BlockingIOError:
            await _readable(sock)
    fds = _fds_of(ancillary)
    if not data and not fds:
        return None, []
    try:
        if flags & socket.MSG_CTRUNC:
            raise wire.WireError(f"more than {max_fds} descriptors")
        return wire.decode(data, bool(flags & socket.MSG_TRUNC), limit), fds
    except wire.WireError:
        _close_fds(fds)
        raise


def _socket_of(fd: int, kind: int, what: str, listening: bool) -> socket.socket:
    """FD as the socket it must be (WireError otherwise, FD closed)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        os.close(fd)
        raise wire.WireError(f"{what}: not a socket ({e.strerror})") from None
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != kind or \
            (listening and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
        sock.close()
        raise wire.WireError(f"{what}: not the socket expected")
    sock.setblocking(False)
    return sock


@dataclass(eq=False)  # a session is itself, not its fields
class BoxSession:
    """One registered box: its Egress and everything serving it, until its connection ends."""

    conn: socket.socket
    box_id: str
    egress: Egress | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    sockets: list[socket.socket] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)  # the folder and the activity file
    dns: asyncio.BaseTransport | None = None
    servers: list[asyncio.Server] = field(default_factory=list)
    pending: dict[int, asyncio.Future[int]] = field(default_factory=dict)
    next_id: int = 0
    closed: bool = False

    async def start(self, reg: wire.Registration, fds: list[int], upstream_tls: ssl.SSLContext) -> None:
        """Serves the box from now on, owning FDS (wire.py's order); WireError,
        ValueError... when its registration cannot be served (close() undoes the rest)."""
        tcp_fd, udp_fd, folder, activity, *published = fds
        self.fds = [folder, activity]
        wanted = [(tcp_fd, socket.SOCK_STREAM, "the TCP listener", True),
                  (udp_fd, socket.SOCK_DGRAM, "the UDP socket", False)]
        wanted += [(fd, socket.SOCK_STREAM, f"published port {i}", True) for i, fd in enumerate(published)]
        for n, (fd, kind, what, listening) in enumerate(wanted):
            try:
                self.sockets.append(_socket_of(fd, kind, what, listening))
            except wire.WireError:
                _close_fds([fd for fd, *_ in wanted[n + 1:]])  # _socket_of closed its own
                raise
        if not stat.S_ISDIR(os.fstat(folder).st_mode) or not stat.S_ISREG(os.fstat(activity).st_mode):
            raise wire.WireError("the network folder or the activity file is not one")
        here = Path(f"/proc/self/fd/{folder}")
        if not os.access(here, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot write the box's network folder (uid {os.getuid()})")
        policy = NetworkPolicy.from_json(reg.policy)
        secrets = SecretBook.from_json(reg.secrets)
        ca = CaPem(reg.ca_cert, reg.ca_key) if reg.ca_cert is not None and reg.ca_key is not None else None
        log = NetworkLog(here / "network.log", reg.box_id, LogLimits.from_json(reg.logging), activity=activity)
        self.egress = Egress(policy, secrets, log, None, upstream_tls, leaves=here / "leaves", ca=ca)
        loop = asyncio.get_running_loop()
        tcp, udp, *listeners = self.sockets
        self._task(self.egress.serve(tcp))
        egress = self.egress
        self.dns, _ = await loop.create_datagram_endpoint(lambda: DnsProtocol(egress), sock=udp)
        for listener, port in zip(listeners, reg.published):
            async def on_published(r: asyncio.StreamReader, w: asyncio.StreamWriter, port: int = port) -> None:
                await self._published(r, w, port)
            self.servers.append(await asyncio.start_server(on_published, sock=listener))

    def _task(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _published(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        """A host connection to one of the box's published ports, into the box's
        namespace through a socket its supervisor connects there."""
        task = asyncio.current_task()
        if task is not None:  # ended with the box
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        if self.closed or len(self.pending) >= MAX_PENDING:
            writer.close()
            return
        loop = asyncio.get_running_loop()
        self.next_id += 1
        request_id = self.next_id
        answer: asyncio.Future[int] = loop.create_future()
        self.pending[request_id] = answer
        fd = -1
        try:
            await loop.sock_sendall(self.conn, wire.encode(wire.connect_request(request_id, port)))
            fd = await asyncio.wait_for(answer, CONNECT_WAIT)
        except (OSError, asyncio.TimeoutError):
            writer.close()
            return
        finally:
            self.pending.pop(request_id, None)
            if fd < 0 and answer.done() and not answer.cancelled() and answer.exception() is None:
                os.close(answer.result())  # answered, but this connection gave up (or the box ended)
        try:
            inner = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            writer.close()
            return
        await relay_connected(reader, writer, inner)

    def set_secrets(self, secrets: dict[str, Any]) -> None:
        """The box's secrets from now on, for flows that start after this."""
        assert self.egress is not None
        self.egress.set_secrets(SecretBook.from_json(secrets))

    def on_message(self, message: dict[str, Any], fds: list[int]) -> None:
        """The supervisor's answer to a connect request (WireError for anything else)."""
        request_id, error = wire.parse_connected(message, len(fds))
        answer = self.pending.get(request_id)
        if answer is None or answer.done():
            _close_fds(fds)  # an answer come too late: its request gave up
            return
        if error is not None:
            answer.set_exception(ConnectionRefusedError(error))
        else:
            answer.set_result(fds[0])

    async def close(self) -> None:
        """Ends everything of the box; the log before the folder's descriptor."""
        if self.closed:
            return
        self.closed = True
        for server in self.servers:
            server.close()
        if self.dns is not None:
            self.dns.close()
        flows = self.egress.close() if self.egress is not None else []
        for answer in self.pending.values():
            answer.cancel()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        tasks += flows  # a flow's last line (bytes each way) is still written
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        for sock in self.sockets:
            sock.close()
        if self.egress is not None:
            self.egress.log.close()
        _close_fds(self.fds)
        self.fds = []
        self.conn.close()


class Daemon:
    def __init__(self, listener: socket.socket, upstream_tls: ssl.SSLContext, idle_exit: float = IDLE_EXIT,
                 owner: int = 0) -> None:
        self.listener = listener
        self.owner = owner  # the uid whose supervisors register boxes: root, or the user without root
        self.upstream_tls = upstream_tls
        self.idle_exit = idle_exit
        self.sessions: set[BoxSession] = set()
        self.clients = 0  # connections being served or read (idle: none)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Serves until no client has been connected for idle_exit seconds."""
        loop = asyncio.get_running_loop()
        self.listener.setblocking(False)
        accepting = asyncio.create_task(self._accept())
        idle_since = loop.time()
        try:
            while True:
                await asyncio.sleep(min(1.0, self.idle_exit / 4))
                if self.clients:
                    idle_since = loop.time()
                elif loop.time() - idle_since >= self.idle_exit:
                    return
        finally:
            accepting.cancel()
            self.listener.close()  # a client connecting now sees its connection end, and starts another daemon
            for session in list(self.sessions):
                await session.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.listener)
            task = asyncio.create_task(self._client(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _client(self, conn: socket.socket) -> None:
        self.clients += 1
        try:
            await self._serve_client(conn)
        except Exception:  # noqa: BLE001 - one client's trouble never stops the others'
            _log("a client failed:\n" + traceback.format_exc())
        finally:
            self.clients -= 1
            conn.close()

    async def _serve_client(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid != self.owner:
            return  # not read, not answered: only its starter's uid registers boxes
        try:
            message, fds = await asyncio.wait_for(receive(conn, wire.MAX_MESSAGE, wire.MAX_FDS), HANDSHAKE_TIMEOUT)
        except (wire.WireError, asyncio.TimeoutError, OSError):
            return
        if message is None:
            return
        try:
            reg = wire.parse_registration(message, len(fds))
        except wire.WireError as e:
            _close_fds(fds)
            await self._say(conn, wire.refused(str(e)))
            return
        if len(self.sessions) >= MAX_BOXES:
            _close_fds(fds)
            await self._say(conn, wire.refused(f"the egress daemon serves {MAX_BOXES} boxes already"))
            return
        session = BoxSession(conn, reg.box_id)
        self.sessions.add(session)
        try:
            try:
                await session.start(reg, fds, self.upstream_tls)
            except (wire.WireError, OSError, ValueError, KeyError, TypeError, AssertionError) as e:
                await self._say(conn, wire.refused(f"{type(e).__name__}: {e}"))
                return  # the session's close() closes what came with the registration
            await self._say(conn, wire.ok(os.getpid()))
            while True:
                try:  # a secrets update may be as long as a registration
                    message, fds = await receive(conn, wire.MAX_MESSAGE, 1)
                except wire.WireError:
                    return
                except OSError:
                    return
                if message is None:
                    return  # the box's supervisor closed: the box ends here
                try:
                    if message.get("op") == "secrets":
                        session.set_secrets(wire.parse_secrets_update(message, len(fds)))
                        await self._say(conn, wire.secrets_applied())
                    else:
                        session.on_message(message, fds)
                except (wire.WireError, KeyError, ValueError, TypeError, AssertionError):
                    _close_fds(fds)
                    return  # the box's supervisor sent what it never would: the box ends here
        finally:
            self.sessions.discard(session)
            await session.close()

    async def _say(self, conn: socket.socket, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(conn, wire.encode(message)),
                                   HANDSHAKE_TIMEOUT)


def _raise_nofile() -> None:
    """Every box's flows are this process's descriptors: as many as the host allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, NOFILE), max(hard, NOFILE)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m a3s_box.network.daemon HOME", file=sys.stderr)
        return 2
    home = Path(argv[1])
    starter = os.geteuid()
    try:
        idle_exit = float(os.environ.get("A3S_BOX_EGRESS_IDLE_EXIT") or IDLE_EXIT)
        listener = rundaemon.bind_listening(wire.run_dir(home), wire.SOCKET_NAME, 128)  # as root: root's
        _raise_nofile()
        upstream_tls = ssl.create_default_context()  # the host's trust store, read as root, shared
    except (OSError, ValueError) as e:
        _log(f"cannot start: {e}")
        return 1
    if os.fork() != 0:
        os._exit(0)  # the starter waits for this: the socket answers from now on
    try:
        drop_privileges(wire.daemon_uid(), wire.daemon_uid())  # as a user: no_new_privs, seccomp
    except OSError as e:
        _log(f"cannot drop root: {e}")
        os._exit(1)
    _log(f"pid {os.getpid()} serving {wire.socket_path(home)}")
    try:
        asyncio.run(Daemon(listener, upstream_tls, idle_exit, owner=starter).run())
    except KeyboardInterrupt:
        pass
    _log(f"pid {os.getpid()}: no box for {idle_exit:g}s, exiting")
    os._exit(0)  # flows' threads are the boxes' and over: nothing to wait for


if __name__ == "__main__":
    sys.exit(main(sys.argv))
