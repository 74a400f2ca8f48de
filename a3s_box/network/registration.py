"""A box's side of the host-wide egress daemon: register_box(), in the box's supervisor.

    net = register_box(home, rundir, conf, on_failure=stop_the_vm)
    ... start the VMM inside net.netns_fd ...
    net.close()                              # when the VM has ended

register_box, as root in the calling process: makes the box's network namespace
(netns.py: veth, REDIRECT rules) and the proxy's TCP listener and DNS socket inside it,
binds the published ports on the host, hands the box's network folder and activity
file to the daemon's uid, makes sure the daemon runs (it starts `python -m
a3s_box.network.daemon HOME` when its socket does not answer: one starter at a time,
under HOME/run/egress.lock; it inherits the starter's environment, SSL_CERT_FILE
included, which a shim's is already cut down to) and registers the box with it: the box's policy, secrets,
CA and log limits, and those sockets and folders as descriptors (wire.py). It returns
once the daemon said it serves the box.

The connection stays open for the box's life, and a thread of the returned BoxNetwork
reads it:
  - the daemon, which cannot make sockets in a namespace, asks for one when a host
    connection arrives on a published port: the thread connects a socket of the box's
    namespace to that port (only the box's own published ports) and hands it over;
  - when the connection ends while the box lives (the daemon was killed or crashed), the
    thread registers the box again with a freshly started daemon (it still holds the
    sockets and folders). If that fails, `failure` says why, on_failure is called with it
    and alive() is False: the supervisor stops the VM rather than run it without its
    policy. Until then the box's flows wait in the listeners' queues: fail closed.

Threat: the supervisor is trusted (root); what it sends the daemon is the box's own,
and the daemon answers only on this box's connection. Errors: EgressError (a
RuntimeError, as NetnsError is) for anything that keeps the box's network from
starting; the box must not start.
"""
from __future__ import annotations

import array
import json
import os
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass, replace
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

from a3s_box import rundaemon
from a3s_box.network import wire
from a3s_box.network.log import network_dir
from a3s_box.network.netns import DNS_PORT, PROXY_PORT, NetNamespace, NetnsError, new_box_namespace
from a3s_box.network.policy import NetworkPolicy

NETWORK_JSON = "network.json"
START_TIMEOUT = 30.0  # the daemon bound its socket
REPLY_TIMEOUT = 30.0  # the daemon answered a registration
CONNECT_TIMEOUT = 5.0  # a published port's connection into the namespace
RETRIES = (0.0, 0.2, 0.5, 1.0, 2.0, 4.0)  # re-registering after the daemon went away
MAX_DAEMON_LOG = 1 << 20


class EgressNamespace(Protocol):
    """Where the box's flows meet the proxy: a namespace of the box's own (netns.py, made
    here) or a pod's that its plug() set up (podnet.PodNamespace)."""

    fd: int
    user_fd: int | None  # the user namespace owning it, when a user without root made it

    def listener(self, kind: int, port: int) -> socket.socket: ...

    def stream_socket(self) -> socket.socket: ...

    def close(self) -> None: ...


class EgressError(RuntimeError):
    """The box's network could not be set up or registered: the box must not start."""


def wait_sealed(sealing: "Future[None] | None") -> None:
    """Returns once the namespace's rules are in (EgressError if they could not be)."""
    if sealing is None:
        return
    try:
        sealing.result(timeout=60)
    except (NetnsError, TimeoutError) as e:
        raise EgressError(f"box network namespace: {e or 'its rules took over 60 s'}") from e


class _Gone(Exception):
    """The daemon's connection ended before it answered (it was exiting): try again."""


def take_network_conf(rundir: Path) -> dict[str, Any]:
    """RUNDIR/network.json, deleted once read: secret values live on in memory only
    (the supervisor's, until registered, and the daemon's)."""
    path = rundir / NETWORK_JSON
    try:
        conf = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EgressError(f"network: {path}: {e}") from e
    path.unlink()
    if not isinstance(conf, dict):
        raise EgressError(f"network: {path}: not an object")
    return conf


# --- the daemon: found, or started --------------------------------------------------
def connect_daemon(home: Path) -> socket.socket:
    """A connection to HOME's egress daemon, started first if its socket does not answer.
    Its first process binds the socket, forks the daemon off (detached, in a session of
    its own) and exits 0."""
    try:
        run = rundaemon.open_run_dir(wire.run_dir(home))
    except rundaemon.DaemonSocketError as e:
        raise EgressError(f"the egress daemon's folder: {e}") from e

    def start() -> None:
        rc = rundaemon.start_detached([sys.executable, "-m", "a3s_box.network.daemon", str(home)], run,
                                      wire.LOG_NAME, timeout=START_TIMEOUT, max_log=MAX_DAEMON_LOG)
        if rc != 0:
            raise EgressError(f"the egress daemon did not start (exit {rc}): {rundaemon.log_tail(run, wire.LOG_NAME)}")

    try:
        return rundaemon.connect_or_start(run, wire.SOCKET_NAME, wire.LOCK_NAME, start)
    except rundaemon.DaemonSocketError as e:
        raise EgressError(f"the egress daemon: {e}: {rundaemon.log_tail(run, wire.LOG_NAME)}") from e
    finally:
        os.close(run)


# --- messages -----------------------------------------------------------------------
def _send(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    data = wire.encode(message)
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.send(data)


def _receive(sock: socket.socket) -> dict[str, Any] | None:
    """The daemon's next message (None when the connection ended). The daemon sends
    no descriptors: any it did are closed."""
    data, ancillary, flags, _ = sock.recvmsg(wire.MAX_REPLY + 1, socket.CMSG_SPACE(4 * 4),
                                             socket.MSG_CMSG_CLOEXEC)
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(raw[:len(raw) - len(raw) % fds.itemsize])
            for fd in fds:
                os.close(fd)
    if not data:
        return None
    return wire.decode(data, bool(flags & socket.MSG_TRUNC), wire.MAX_REPLY)


def _give_to(path: Path, uid: int, gid: int) -> None:
    """PATH and all below it to UID:GID, following no symbolic link (what a process
    that handled a box's traffic left there is not trusted to point anywhere)."""
    os.chown(path, uid, gid, follow_symlinks=False)
    for _dir, dirs, files, dfd in os.fwalk(path, follow_symlinks=False):
        for name in dirs + files:
            os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)


# --- the box's registration ---------------------------------------------------------
@dataclass
class Detached:
    """A registration held by descriptors alone (BoxNetwork.detach)."""
    sock: int  # the connection to the daemon
    netns: int
    userns: int | None
    fixed: list[int]  # wire.FIXED_FDS, in order
    message: dict[str, Any]  # the registration (policy, secrets, CA): for registering again
    daemon_pid: int | None
    published: list[int]  # the host's listening socket of each published port, in order
    sealing: "Future[None] | None" = None  # the namespace's rules going in (register_box)


class BoxNetwork:
    """A box's network while the box lives: its namespace (netns_fd: the VMM starts in
    it), its sockets and folders, and its connection to the egress daemon."""

    def __init__(self, home: Path, registration: wire.Registration, ns: EgressNamespace,
                 owned: list[socket.socket], fds: list[int],
                 on_failure: Callable[[str], None] | None = None,
                 log: Callable[[str], None] | None = None,
                 sealing: "Future[None] | None" = None) -> None:
        self.home = home
        self.box_id = registration.box_id
        self.failure = ""
        self._registration = registration
        self._ns = ns
        self._owned = owned  # the sockets behind FDS, closed with the box's network
        self._fds = fds  # in the order wire.py gives them
        self._ports = frozenset(registration.published)
        self._on_failure = on_failure
        self._log = log or (lambda _line: None)
        self._lock = threading.Lock()
        self.sealing = sealing  # the namespace's rules going in (register_box's SEAL_LATER)
        self._closing = False
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._daemon_pid: int | None = None
        self._secrets_applied = threading.Event()

    @property
    def netns_fd(self) -> int:
        return self._ns.fd

    @property
    def userns_fd(self) -> int | None:
        """The user namespace owning the network one, for a user without root (the VMM
        joins it first); None as root."""
        return self._ns.user_fd

    def alive(self) -> bool:
        """Whether the daemon serves the box (False once it cannot: see `failure`)."""
        return not self.failure and not self._closing

    def daemon_pid(self) -> int | None:
        """The pid of the daemon that serves the box now, as it said."""
        return self._daemon_pid

    def start(self, serve: bool = True) -> None:
        """Registers the box (EgressError if the daemon refuses it or cannot be had),
        then, if SERVE, reads the connection in a thread (else see detach)."""
        self._sock = self._register()
        if serve:
            self._thread = threading.Thread(target=self._run, name=f"egress-{self.box_id}", daemon=True)
            self._thread.start()

    def register_again(self) -> None:
        """Registers the box with a daemon found or started now, as the thread does once
        the connection ends (same retries); EgressError naming why not."""
        if not self._reregister():
            raise EgressError(self.failure)

    def detach(self) -> "Detached":
        """For a box that was started without serving: the registration as descriptors
        of the caller's own (the connection, the namespace, the FIXED_FDS, the published
        ports' listeners) and its message, for a holder that is not Python (the shim's
        loop, which also answers the daemon's requests for sockets of the namespace);
        this BoxNetwork then holds nothing and the connection stays open."""
        assert self._thread is None and self._sock is not None
        with self._lock:
            sock, self._sock = self._sock, None
            self._closing = True
        fixed = len(wire.FIXED_FDS)
        held = Detached(sock.detach(), os.dup(self._ns.fd),
                        None if self._ns.user_fd is None else os.dup(self._ns.user_fd),
                        [os.dup(fd) for fd in self._fds[:fixed]], self._registration.message(),
                        self._daemon_pid, [os.dup(fd) for fd in self._fds[fixed:]], self.sealing)
        for s in self._owned:
            s.close()
        for fd in self._fds[2:fixed]:
            os.close(fd)
        self._fds = []
        self._ns.close()
        return held

    def update_secrets(self, secrets: dict[str, Any]) -> None:
        """The box's secrets from now on (NAME -> placeholder, value, hosts), for a box
        whose secrets become known after it started (a pod's, from each container's
        environment). Returns once the daemon applies them; they are the registration's
        too, should the box be registered again. EgressError if the daemon does not
        answer: the caller must not hand out their placeholders then."""
        with self._lock:
            self._registration = replace(self._registration, secrets=secrets)
            sock = self._sock
            self._secrets_applied.clear()
        if sock is None or not self.alive():
            raise EgressError(f"box {self.box_id}: not registered with the egress daemon")
        try:
            _send(sock, wire.secrets_update(secrets))
        except (OSError, wire.WireError) as e:
            raise EgressError(f"box {self.box_id}: the egress daemon: {e}") from e
        if not self._secrets_applied.wait(REPLY_TIMEOUT):
            raise EgressError(f"box {self.box_id}: the egress daemon did not apply the secrets "
                              f"within {REPLY_TIMEOUT:g}s")

    def close(self) -> None:
        """Ends the box's network: the daemon, seeing the connection close, stops its
        proxy, DNS, published ports and log; the namespace and sockets are closed here.
        Idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(REPLY_TIMEOUT)
            if self._thread.is_alive():  # stuck sending them: leave the descriptors to the exit
                self._log(f"egress daemon: box {self.box_id}: its connection's thread did not end")
                return
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
        for s in self._owned:
            s.close()
        for fd in self._fds[2:len(wire.FIXED_FDS)]:  # the folder and the activity file
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []
        self._ns.close()

    # --- registering ----------------------------------------------------------------
    def _register(self) -> socket.socket:
        """A connection on which the daemon serves the box, trying again while the
        daemon it found was exiting (it exits when idle)."""
        last = ""
        for attempt in range(3):
            if self._closing:
                raise EgressError("closed")
            sock = connect_daemon(self.home)
            with self._lock:
                if self._closing:
                    sock.close()
                    raise EgressError("closed")
                self._sock = sock
            try:
                self._handshake(sock)
                return sock
            except _Gone as e:
                last = str(e)
            except OSError as e:
                last = f"the egress daemon: {e}"
            with self._lock:
                self._sock = None
            sock.close()
            time.sleep(0.1 * (attempt + 1))
        raise EgressError(last)

    def _handshake(self, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, 32, 2 * wire.MAX_MESSAGE)  # SO_SNDBUFFORCE: one packet
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * wire.MAX_MESSAGE)
        sock.settimeout(REPLY_TIMEOUT)
        try:
            _send(sock, self._registration.message(), self._fds)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise _Gone(f"the egress daemon went away: {e}") from e
        except wire.WireError as e:
            raise EgressError(f"network: {e}") from e
        while True:
            try:
                said = _receive(sock)
            except TimeoutError:
                raise EgressError(f"the egress daemon did not answer within {REPLY_TIMEOUT:g}s") from None
            except ConnectionResetError as e:
                raise _Gone(f"the egress daemon went away: {e}") from e
            except wire.WireError as e:
                raise EgressError(f"the egress daemon: {e}") from e
            if said is None:
                raise _Gone("the egress daemon closed the connection before it answered")
            if said.get("op") == "connect":
                self._answer(sock, said)
                continue
            if said.get("ok") is True:
                pid = said.get("pid")
                self._daemon_pid = pid if type(pid) is int else None
                sock.settimeout(None)
                return
            raise EgressError(f"the egress daemon refused box {self.box_id}: {said.get('error')}")

    # --- serving --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            sock = self._sock
            said: dict[str, Any] | None = None
            if sock is not None:
                try:
                    said = _receive(sock)
                except (OSError, wire.WireError):
                    said = None
            if self._closing:
                return
            if said is None:
                if not self._reregister():
                    return
                continue
            if said.get("op") == "connect":
                self._answer(sock, said)  # type: ignore[arg-type]
            elif said.get("op") == "secrets" and said.get("ok") is True:
                self._secrets_applied.set()

    def _answer(self, sock: socket.socket, said: dict[str, Any]) -> None:
        """A socket of the box's namespace, connected to one of its published ports."""
        try:
            request_id, port = wire.parse_connect_request(said)
        except wire.WireError:
            return  # nothing to answer to; the daemon times the request out
        if port not in self._ports:
            reply, fds = wire.connected(request_id, f"port {port} is not published"), []
            inner = None
        else:
            inner = self._ns.stream_socket()
            try:
                inner.setblocking(True)
                inner.settimeout(CONNECT_TIMEOUT)
                inner.connect(("127.0.0.1", port))
                reply, fds = wire.connected(request_id), [inner.fileno()]
            except OSError as e:
                reply, fds = wire.connected(request_id, f"127.0.0.1:{port}: {e.strerror or e}"), []
        try:
            _send(sock, reply, fds)
        except OSError:
            pass  # the daemon is gone: the reading side sees it
        finally:
            if inner is not None:
                inner.close()

    def _reregister(self) -> bool:
        with self._lock:
            old, self._sock = self._sock, None
        if old is not None:
            old.close()
        why = ""
        for wait in RETRIES:
            time.sleep(wait)
            if self._closing:
                return False
            try:
                self._sock = self._register()
                self._log(f"egress daemon: box {self.box_id} registered again (pid {self.daemon_pid()})")
                return True
            except EgressError as e:
                why = str(e)
                if self._closing:
                    return False
        self.failure = f"the egress daemon ended and the box could not be registered again: {why}"
        self._log(self.failure)
        if self._on_failure is not None:
            try:
                self._on_failure(self.failure)
            except Exception as e:  # noqa: BLE001 - the supervisor's; failure says it anyway
                self._log(f"on_failure: {type(e).__name__}: {e}")
        return False


def register_box(home: Path, rundir: Path, conf: dict[str, Any], *,
                 on_failure: Callable[[str], None] | None = None,
                 log: Callable[[str], None] | None = None,
                 namespace: EgressNamespace | None = None, serve: bool = True,
                 seal_later: bool = False) -> BoxNetwork:
    """Sets up the box's network namespace and registers the box with HOME's egress
    daemon (started if need be): see the module's docstring. CONF: what the driver
    wrote to RUNDIR/network.json (take_network_conf). ON_FAILURE(reason): called from
    the BoxNetwork's thread if the daemon ends and the box cannot be registered again.
    LOG(line): what happened to the registration, for the supervisor's log. NAMESPACE:
    where the proxy listens, set up by the caller (default: a namespace of the box's
    own, made and set up here); the BoxNetwork owns and closes it. SERVE: as
    BoxNetwork.start's (a box registered without serving is held by another: keeper.py).
    SEAL_LATER: a root's namespace comes back with its rules still going in (netns.py's
    seal, BoxNetwork.sealing): the caller waits (wait_sealed) before the guest is served."""
    try:
        policy = NetworkPolicy.from_json(conf["policy"])
        forwards = [(int(index), int(inner)) for index, inner in conf.get("forwards", [])]
        published = [policy.ports[index] for index, _ in forwards]
        box_id = str(conf["box_id"])
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise EgressError(f"network: a malformed configuration ({type(e).__name__}: {e})") from e
    ca_cert = ca_key = None
    if conf.get("ca_dir"):  # with secrets, or for secrets that come later (a pod's)
        ca_dir = Path(conf["ca_dir"])
        try:  # read here, as root: the daemon cannot read the box's folder
            ca_cert, ca_key = (ca_dir / "ca.pem").read_bytes(), (ca_dir / "ca.key").read_bytes()
        except OSError as e:
            raise EgressError(f"network: the box's CA: {e}") from e
    registration = wire.Registration(box_id, conf["policy"], conf.get("secrets") or {}, conf.get("logging"),
                                     tuple(inner for _, inner in forwards), ca_cert, ca_key)

    # The daemon writes the box's network log and leaf keys, and marks its activity,
    # through descriptors only: the box's folder stays root's; these become its uid's.
    own = network_dir(rundir)
    activity = rundir / "activity"
    try:
        own.mkdir(mode=0o700, exist_ok=True)
        if stat.S_ISLNK(os.lstat(own).st_mode):
            raise EgressError(f"network: {own} is a symbolic link")
        daemon = wire.daemon_uid()
        _give_to(own, daemon, daemon)
        fd = os.open(activity, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        os.chown(activity, daemon, daemon, follow_symlinks=False)
    except OSError as e:
        raise EgressError(f"network: {own}: {e}") from e

    owned: list[socket.socket] = []
    fds: list[int] = []
    ns: EgressNamespace | None = namespace
    sealing: Future[None] | None = None
    try:
        try:
            if ns is None:
                made = ns = new_box_namespace(sockets_later=bool(published))
                if seal_later and isinstance(made, NetNamespace):
                    sealing = made.seal(PROXY_PORT, DNS_PORT)
                else:
                    made.configure(PROXY_PORT, DNS_PORT)
            owned.append(ns.listener(socket.SOCK_STREAM, PROXY_PORT))
            owned.append(ns.listener(socket.SOCK_DGRAM, DNS_PORT))
        except (NetnsError, OSError, RuntimeError) as e:  # RuntimeError: a pod namespace's PodNetError
            raise EgressError(f"box network namespace: {e}") from e
        fds = [owned[0].fileno(), owned[1].fileno()]
        try:
            fds.append(os.open(own, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW))
            fds.append(os.open(activity, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW))
        except OSError as e:
            raise EgressError(f"network: {e}") from e
        for pub in published:
            try:
                listener = socket.create_server((pub.host_ip, pub.host_port))
            except OSError as e:
                raise EgressError(f"cannot publish {pub.text()}: {pub.host_ip}:{pub.host_port}: "
                                  f"{e.strerror or e}") from e
            owned.append(listener)
            fds.append(listener.fileno())
        net = BoxNetwork(home, registration, ns, owned, fds, on_failure, log, sealing)
        net.start(serve)
        return net
    except BaseException:
        for s in owned:
            s.close()
        for fd in fds[2:len(wire.FIXED_FDS)]:
            os.close(fd)
        if ns is not None:
            ns.close()
        raise
