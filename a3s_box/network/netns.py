"""A box's own network namespace, where its VMM runs and every flow meets the proxy.

Inside it there is a loopback and one veth whose far end leads nowhere: its default
route exists only so that the VMM's connect() gets as far as netfilter, where
    every TCP connection not to 127.0.0.0/8  -> REDIRECT to the egress proxy
    every UDP datagram to port 53            -> REDIRECT to the box's DNS
    everything else                          -> DROP
So the VMM (and the guest behind its user-mode network) cannot send one packet to the
host's network: whatever leaves does so through a socket the proxy opened in the
host's namespace after deciding.

Namespaces belong to threads: one dedicated thread unshares into the new namespace
and does everything that must happen there (the rules, the listening sockets, sockets
for published ports); sockets keep the namespace they were made in.

As root, the namespace can be used before its rules are in (NetNamespace.seal): until
then it has its loopback alone, so a connect() to anything else fails (no route), and
the rules go in before the veth and its route do. A box's VMM starts meanwhile; the
shim waits for the seal before it serves the guest.
"""
from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from a3s_box import subids
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
_PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS = 24, 38
_IP_FREEBIND = 15
PROXY_PORT = 15001
DNS_PORT = 53
_VETH_ADDR = "10.255.255.1/30"
_VETH_GW = "10.255.255.2"
T = TypeVar("T")


class NetnsError(RuntimeError):
    """The namespace or its rules could not be set up (the box must not start)."""


def missing_tools() -> list[str]:
    return [t for t in ("ip", "iptables-restore") if shutil.which(t) is None
            and not os.path.exists(f"/usr/sbin/{t}")]


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def bound_socket(kind: int, address: str, port: int, freebind: bool = False) -> socket.socket:
    """A non-blocking socket of the calling thread's namespace bound to ADDRESS:PORT, a
    TCP one listening: where the proxy's flows or DNS queries arrive. FREEBIND: the
    address may not exist yet."""
    s = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if freebind:
        s.setsockopt(socket.SOL_IP, _IP_FREEBIND, 1)
    s.bind((address, port))
    if kind == socket.SOCK_STREAM:
        s.listen(512)
    s.setblocking(False)
    return s


def _run(argv: list[str], stdin: str = "") -> None:
    try:
        r = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    except OSError as e:
        raise NetnsError(f"{argv[0]}: {e}") from e
    if r.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {r.stderr.strip()}")


_SETUP = "\n".join(["link set lo up", "link add a3s0 type veth peer name a3s1", "link set a3s1 up",
                    "link set a3s0 up", f"addr add {_VETH_ADDR} dev a3s0",
                    f"route add default via {_VETH_GW} dev a3s0"]) + "\n"
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def _join_network(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns(CLONE_NEWNET): {os.strerror(err)}")


def _loopback_up() -> None:
    """`ip link set lo up` without a process: an ioctl in the calling thread's namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        req = bytearray(struct.pack("16sH14x", b"lo", 0))
        fcntl.ioctl(s, _SIOCGIFFLAGS, req)
        flags = struct.unpack_from("H", req, 16)[0]
        struct.pack_into("H", req, 16, flags | _IFF_UP)
        fcntl.ioctl(s, _SIOCSIFFLAGS, req)


def rules(proxy_port: int = PROXY_PORT, dns_port: int = DNS_PORT) -> str:
    """The namespace's netfilter rules, in iptables-restore form (pure)."""
    return "\n".join([
        "*nat",
        "-A OUTPUT -p tcp -d 127.0.0.0/8 -j RETURN",
        f"-A OUTPUT -p tcp -j REDIRECT --to-ports {proxy_port}",
        f"-A OUTPUT -p udp --dport 53 -j REDIRECT --to-ports {dns_port}",
        "COMMIT",
        "*filter",
        ":OUTPUT DROP [0:0]",
        "-A OUTPUT -o lo -j ACCEPT",
        "-A OUTPUT -m conntrack --ctstate DNAT -j ACCEPT",
        "COMMIT",
        "",
    ])


class NetNamespace:
    user_fd: int | None = None  # a root's namespace belongs to the host's user namespace

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="netns", initializer=self._enter)
        try:
            self.fd = self.call(lambda: os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
        except OSError as e:
            raise NetnsError(f"cannot create a network namespace: {e}") from e

    @staticmethod
    def _enter() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")

    def call(self, fn: Callable[..., T], *args: object) -> T:
        return self._thread.submit(fn, *args).result()


    def configure(self, proxy_port: int = PROXY_PORT, dns_port: int = DNS_PORT) -> None:
        self.seal(proxy_port, dns_port).result()

    def seal(self, proxy_port: int = PROXY_PORT, dns_port: int = DNS_PORT) -> "Future[None]":
        """The loopback up now (listeners can be bound); then, in a thread of its own
        that joins the namespace, the rules and only after them the veth and its route
        (NetnsError from the future). Until the future is done nothing but the loopback
        can be reached."""
        missing = missing_tools()
        if missing:
            raise NetnsError(f"{', '.join(missing)} not found: install iproute2 and iptables")
        try:
            self.call(_loopback_up)
        except OSError as e:
            raise NetnsError(f"loopback: {e}") from e

        sealed: Future[None] = Future()
        fd = os.dup(self.fd)  # its own: the namespace's may be closed before it runs

        def sealing() -> None:  # a thread of its own: the namespace's serves meanwhile
            try:
                try:
                    _join_network(fd)
                finally:
                    os.close(fd)
                _run([_tool("iptables-restore"), "-w"], rules(proxy_port, dns_port))
                _run([_tool("ip"), "-batch", "-"], _SETUP)
            except BaseException as e:  # noqa: BLE001 - the waiter's to raise
                sealed.set_exception(e if isinstance(e, NetnsError) else NetnsError(str(e)))
            else:
                sealed.set_result(None)
        threading.Thread(target=sealing, name="netns-seal", daemon=True).start()
        return sealed

    def listener(self, kind: int, port: int) -> socket.socket:
        """A socket bound to 127.0.0.1:PORT inside the namespace (TCP listening)."""
        return self.call(bound_socket, kind, "127.0.0.1", port)

    def stream_socket(self) -> socket.socket:
        """A TCP socket of the namespace, to reach the VMM's forwarded ports."""
        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            s.setblocking(False)
            return s
        return self.call(make)

    def close(self) -> None:
        self._thread.shutdown(wait=False)
        os.close(self.fd)


class UserNetNamespace:
    """The same namespace for a user without root: it belongs to a user namespace of its
    own, where the user is root and the other ids are the user's subordinate ones
    (a3s_box/subids.py: the parent maps them with newuidmap once the child has unshared;
    a jailed VMM runs as one of them), or, where the user has none, no other id exists.
    Either way it grants nothing on the host the user could not do. A user namespace can only be made by
    a single-threaded process, so a child forked for the purpose makes both, sets up the
    rules and the proxy's listeners in them, and hands back the namespaces and sockets as
    descriptors (the namespaces live on as long as they are held). The VMM joins both
    (enter()). A box with published ports needs sockets made in the namespace later
    (one per host connection), which the user's own threaded process cannot enter: the
    child then stays, holding nothing but its end of a socket pair, and makes each one
    (it dies with its parent, and ends when the pair closes)."""

    def __init__(self, sockets_later: bool = False) -> None:
        self.fd = -1
        self.user_fd: int | None = None
        self._sockets: dict[tuple[int, int], socket.socket] = {}
        self._sockets_later = sockets_later
        self._maker: socket.socket | None = None
        self._maker_pid = 0
        self._lock = threading.Lock()

    def configure(self, proxy_port: int = PROXY_PORT, dns_port: int = DNS_PORT) -> None:
        missing = missing_tools()
        if missing:
            raise NetnsError(f"{', '.join(missing)} not found: install iproute2 and iptables")
        fds = self._make(proxy_port, dns_port)
        self.user_fd, self.fd = fds[0], fds[1]
        self._sockets = {(socket.SOCK_STREAM, proxy_port): socket.socket(fileno=fds[2]),
                         (socket.SOCK_DGRAM, dns_port): socket.socket(fileno=fds[3])}
        for s in self._sockets.values():
            s.setblocking(False)

    def make_empty(self) -> None:
        """The namespaces alone, the network one empty but for loopback (a box without a
        network whose VMM is jailed in the user namespace)."""
        self.user_fd, self.fd = self._make(None, None)

    def _make(self, proxy_port: int | None, dns_port: int | None) -> list[int]:
        ids = subids.subordinate_ids()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child, which exits
            ours.close()
            code = 1
            try:
                made = _make_user_namespace(proxy_port, dns_port, theirs if ids else None)
                theirs.sendmsg([b"ok"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", made))])
                for fd in made:
                    os.close(fd)
                if self._sockets_later:
                    _make_sockets_on_request(theirs)
                code = 0
            except BaseException as e:  # noqa: BLE001 - said to the parent, whatever it is
                with contextlib.suppress(OSError):
                    theirs.send(f"{type(e).__name__}: {e}".encode()[:2000])
            finally:
                os._exit(code)
        theirs.close()
        try:
            if ids is not None:  # the child unshared its user namespace: its ids are mapped here
                if ours.recv(16) != b"unshared":
                    raise OSError("the child did not make its user namespace")
                try:
                    subids.map_ids(pid, ids)
                    ours.send(b"mapped")
                except subids.SubIdError as e:
                    ours.send(b"not mapped")
                    raise OSError(str(e)) from e
            msg, ancillary, _flags, _addr = ours.recvmsg(4096, socket.CMSG_SPACE(4 * array.array("i").itemsize))
        except OSError as e:
            msg, ancillary = str(e).encode(), []
        fds = _fds_of(ancillary)
        if msg != b"ok" or len(fds) != (2 if proxy_port is None else 4):
            for fd in fds:
                os.close(fd)
            ours.close()
            os.waitpid(pid, 0)
            raise NetnsError(f"cannot make a network namespace in a user namespace: {msg.decode(errors='replace')}")
        if self._sockets_later:
            self._maker, self._maker_pid = ours, pid
        else:
            ours.close()
            os.waitpid(pid, 0)
        return fds

    def listener(self, kind: int, port: int) -> socket.socket:
        try:
            return self._sockets.pop((kind, port))
        except KeyError:
            raise NetnsError(f"no listener for port {port} was made in the namespace") from None

    def stream_socket(self) -> socket.socket:
        """A TCP socket of the namespace, made by the child that stayed for it."""
        with self._lock:
            if self._maker is None:
                raise NetnsError("this namespace makes no sockets later (the box publishes no port)")
            try:
                self._maker.send(b"tcp")
                msg, ancillary, _flags, _addr = self._maker.recvmsg(16, socket.CMSG_SPACE(array.array("i").itemsize))
            except OSError as e:
                raise NetnsError(f"the namespace's socket maker: {e}") from e
        fds = _fds_of(ancillary)
        if msg != b"s" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise NetnsError("the namespace's socket maker is gone")
        s = socket.socket(fileno=fds[0])
        s.setblocking(False)
        return s

    def close(self) -> None:
        for s in self._sockets.values():
            s.close()
        for fd in (self.fd, self.user_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.fd, self.user_fd = -1, None
        with self._lock:
            if self._maker is not None:
                self._maker.close()  # the child reads the end and exits
                self._maker = None
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self._maker_pid, 0)


def _fds_of(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    return list(fds)


def _make_sockets_on_request(pair: socket.socket) -> None:  # pragma: no cover - in the child
    """The child's life once the namespace is made: nothing of its parent's but PAIR (its
    other descriptors closed), killed with its parent, a TCP socket of the namespace for
    each request until PAIR closes."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    if os.getppid() == 1:
        return
    try:  # not its parent's title (a shim's, which the supervisor checks and `ps` shows)
        import setproctitle

        setproctitle.setproctitle("a3s-box: a rootless box's namespace socket maker")
    except ImportError:
        pass
    keep = pair.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, 65536)
    while pair.recv(16):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            pair.sendmsg([b"s"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [s.fileno()]))])
        finally:
            s.close()


def _make_user_namespace(proxy_port: int | None, dns_port: int | None,
                         mapper: socket.socket | None) -> list[int]:
    """In a just-forked child: a user namespace and a network namespace in it, set up
    (without PROXY_PORT: empty but for loopback); [user ns, net ns] and, with ports,
    [TCP listener, UDP socket]. MAPPER: the parent maps the user's subordinate range
    (subids.py; the user is root in it, the range ids 1..); without, the namespace maps
    only this user, to root."""
    uid, gid = os.geteuid(), os.getegid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWUSER): {os.strerror(err)}")
    if mapper is not None:
        mapper.send(b"unshared")
        if mapper.recv(16) != b"mapped":
            raise OSError("the user's subordinate ids could not be mapped")
    else:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
    out = [os.open("/proc/self/ns/user", os.O_RDONLY), os.open("/proc/self/ns/net", os.O_RDONLY)]
    if proxy_port is None or dns_port is None:
        _run([_tool("ip"), "link", "set", "lo", "up"])
        return out
    _run([_tool("ip"), "-batch", "-"], _SETUP)
    _run([_tool("iptables-restore"), "-w"], rules(proxy_port, dns_port))
    for kind, port in ((socket.SOCK_STREAM, proxy_port), (socket.SOCK_DGRAM, dns_port)):
        out.append(bound_socket(kind, "127.0.0.1", port).detach())
    return out


def new_box_namespace(sockets_later: bool = False) -> NetNamespace | UserNetNamespace:
    """A namespace for a box's network: its own as root, in a user namespace otherwise
    (SOCKETS_LATER: stream_socket() will be asked for, for published ports)."""
    return NetNamespace() if os.geteuid() == 0 else UserNetNamespace(sockets_later)


def enter(fd: int, user_fd: int | None = None) -> None:
    """Move the calling (single-threaded, just forked) process into the namespace (and
    first into the user namespace that owns it, when it is a user's)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if user_fd is not None and libc.setns(user_fd, CLONE_NEWUSER) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWUSER): {os.strerror(err)}")
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")
    if user_fd is not None:
        # root of the user namespace, but with no capability there once it execs (root's
        # caps after exec are the bounding set): it cannot touch the namespace's rules
        for cap in range(64):
            if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
                err = ctypes.get_errno()
                raise OSError(err, f"dropping capabilities: {os.strerror(err)}")
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"no_new_privs: {os.strerror(err)}")
