"""Who holds a box's registration with the egress daemon once its supervisor is the
shim's C loop (a3s_box/drivers/qemu/loop), which has no Python to hold a BoxNetwork.

As root, the registration is held by descriptors alone (hold_registration, in the shim
before it execs the loop): the connection, the namespace, the proxy's listeners, the
box's folder and activity file, the published ports' host listeners, and the
registration's message in a memfd. The daemon asks nothing of a box without published
ports after registering it; for a published port it asks for a socket of the box's
namespace connected to the port's inner end, which the loop answers (it enters the
namespace, as root may, for the socket() call alone). The loop closes the connection
when the VM has ended (the daemon then ends the box's network).
If the connection ends first (the daemon was killed or crashed), the loop runs this
module, `python -m a3s_box.network.keeper HOME RUNDIR` with those descriptors at fixed
numbers (RESUME_FDS), which registers the box with a daemon found or started now (the
retries of registration.py) and answers on descriptor 3: b"ok" with the new connection,
or b"error: WHY"; the loop stops the VM on an error or silence. Meanwhile the box's flows
wait in the listeners' queues: fail closed. No Python runs per box while all is well.

Without root, a box with published ports cannot be served so (a process outside the
box's user namespace may not enter its network namespace): a keeper process stays
(start_keeper), which the namespace's socket maker serves: a child forked off the
shim while it has no thread, which does register_box() and keeps the BoxNetwork, sends
the namespace's descriptors back on a SOCK_SEQPACKET pair, and waits for the pair's other
end to close (the VM has ended, or the shim died), then closes the network. If the daemon
ends and the box cannot be registered again, it says why on the pair and exits.

Threat: as registration.py's. The keeper and the resumed registration are the box's
supervisor's own (same uid, same trust) and hold nothing but what register_box holds;
the memfd with the registration (the box's secrets and CA key) is never in a path, only
in the loop's descriptor table and, while it registers again, this module's.
"""
from __future__ import annotations

import array
import json
import os
import select
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from a3s_box.network import wire
from a3s_box.network.registration import BoxNetwork, Detached, EgressError, register_box, wait_sealed

MAX_ANSWER = 4096
# How the loop lays out a resumed registration's descriptors (loop/shim_loop.c agrees)
RESUME_FDS = ("answer", "message", "netns", *wire.FIXED_FDS, "userns")


# --- a box without published ports: the registration held by descriptors ---------------
@dataclass
class Held:
    """hold_registration's: what the loop holds (see LoopArgs.registration's order)."""
    detached: Detached
    message_fd: int  # a memfd with the registration message

    def fds(self) -> list[int]:
        """In RESUME_FDS's order, but the answer's: the connection first."""
        d = self.detached
        return [d.sock, self.message_fd, d.netns, *d.fixed] + ([d.userns] if d.userns is not None else [])

    def published(self) -> list[tuple[int, int]]:
        """(inner port, the host's listener) of each published port (LoopArgs.published)."""
        return list(zip((int(p) for p in self.detached.message.get("published") or []), self.detached.published))

    def wait_sealed(self) -> None:
        """Once the namespace's rules are in (EgressError if they could not be)."""
        wait_sealed(self.detached.sealing)

    def close(self) -> None:
        for fd in self.fds() + self.detached.published:
            os.close(fd)


def hold_registration(home: Path, rundir: Path, conf: dict[str, Any], log: Callable[[str], None],
                      seal_later: bool = False) -> Held:
    """Registers a box (CONF: take_network_conf's; EgressError naming why not) and
    returns the registration as descriptors of the caller's, for the loop to hold. As
    root, or for a box without published ports (see the module's docstring).
    SEAL_LATER: as register_box's (Held.wait_sealed)."""
    net = register_box(home, rundir, conf, log=log, serve=False, seal_later=seal_later)
    detached = net.detach()
    fd = os.memfd_create("a3s-registration", os.MFD_CLOEXEC)
    os.write(fd, json.dumps(detached.message).encode())
    return Held(detached, fd)


class _HeldNamespace:
    """The box's namespace as the loop held it: descriptors only."""

    def __init__(self, fd: int, user_fd: int | None) -> None:
        self.fd, self.user_fd = fd, user_fd

    def listener(self, kind: int, port: int) -> socket.socket:
        raise EgressError("a held namespace makes no listeners")

    def stream_socket(self) -> socket.socket:
        raise EgressError("a box registered again answers for sockets once the loop holds it")

    def close(self) -> None:
        pass  # the loop's


def register_again(home: Path, rundir: Path, with_userns: bool) -> int:
    """`python -m a3s_box.network.keeper HOME RUNDIR [userns]`, run by the loop with
    RESUME_FDS from descriptor 3: registers the box again and answers on descriptor 3."""
    answer = socket.socket(fileno=3)
    fds = {name: 3 + i for i, name in enumerate(RESUME_FDS)}

    def log(line: str) -> None:
        print(f"shim {rundir.name}: {line}", file=sys.stderr, flush=True)
    try:
        message = json.loads(os.pread(fds["message"], 1 << 22, 0))
        registration = wire.parse_registration(message if isinstance(message, dict) else {})
    except (OSError, ValueError, wire.WireError) as e:
        answer.send(f"error: the box's registration cannot be read: {e}".encode()[:MAX_ANSWER])
        return 1
    fixed = [fds[name] for name in wire.FIXED_FDS]
    # the published ports' host listeners follow RESUME_FDS (the last of which, userns, is
    # there only WITH_USERNS), in the registration's order
    first = 3 + len(RESUME_FDS) - (0 if with_userns else 1)
    listeners = [first + i for i in range(len(registration.published))]
    owned = [socket.socket(fileno=fixed[0]), socket.socket(fileno=fixed[1])]
    ns = _HeldNamespace(fds["netns"], fds["userns"] if with_userns else None)
    net = BoxNetwork(home, registration, ns, owned, fixed + listeners, log=log)
    try:
        net.register_again()
    except EgressError as e:
        answer.send(f"error: {e}".encode()[:MAX_ANSWER])
        return 1
    detached = net.detach()  # its connection, now ours to hand over
    answer.sendmsg([b"ok"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [detached.sock]))])
    return 0


# --- a box with published ports: a keeper process ---------------------------------------
@dataclass
class Keeper:
    pid: int
    sock: socket.socket  # the supervisor's end: readable when the network is over
    netns_fd: int
    userns_fd: int | None
    daemon_pid: int | None

    def close(self) -> None:
        """Ends the box's network (the keeper sees EOF) and waits for the keeper."""
        self.sock.close()
        for fd in (self.netns_fd, self.userns_fd):
            if fd is not None:
                os.close(fd)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def start_keeper(home: Path, rundir: Path, conf: dict[str, Any], log: Callable[[str], None]) -> Keeper:
    """Forks the keeper and returns once it registered the box (EgressError naming why
    not; the keeper has then ended). Call it while the caller has no other thread."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # the keeper
        code = 1
        try:
            ours.close()
            code = _keep(home, rundir, conf, theirs, log)
        finally:
            os._exit(code)
    theirs.close()
    try:
        data, fds = _receive(ours)
    except OSError as e:
        data, fds = b"", []
        log(f"network keeper: {e}")
    try:
        answer = json.loads(data) if data else {}
    except ValueError:
        answer = {}
    if not isinstance(answer, dict) or answer.get("ok") is not True or not fds:
        for fd in fds:
            os.close(fd)
        ours.close()
        os.waitpid(pid, 0)
        why = answer.get("error") if isinstance(answer, dict) else None
        raise EgressError(str(why or "the box's network keeper ended before it registered the box"))
    daemon = answer.get("daemon")
    return Keeper(pid, ours, fds[0], fds[1] if len(fds) > 1 else None,
                  daemon if type(daemon) is int else None)


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    data, ancillary, _flags, _ = sock.recvmsg(MAX_ANSWER, socket.CMSG_SPACE(2 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def _keep(home: Path, rundir: Path, conf: dict[str, Any], sock: socket.socket,
          log: Callable[[str], None]) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)  # the supervisor's handlers are not ours
    try:
        import setproctitle
        setproctitle.setproctitle(f"a3s_box.network.keeper {rundir}")
    except ImportError:
        pass
    wake_read, wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    failure: list[str] = []

    def failed(why: str) -> None:  # from the registration's thread
        failure.append(why)
        os.write(wake_write, b"!")

    try:
        net = register_box(home, rundir, conf, on_failure=failed, log=log)
    except EgressError as e:
        sock.sendmsg([json.dumps({"error": str(e)}).encode()])
        return 1
    try:
        fds = [net.netns_fd] + ([net.userns_fd] if net.userns_fd is not None else [])
        sock.sendmsg([json.dumps({"ok": True, "daemon": net.daemon_pid()}).encode()],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        while True:
            ready, _, _ = select.select([sock.fileno(), wake_read], [], [])
            if wake_read in ready and failure:
                try:
                    sock.send(failure[0].encode()[:MAX_ANSWER])
                except OSError:
                    pass
                return 1
            if sock.fileno() in ready:
                return 0  # EOF: the VM has ended (or its supervisor died)
    finally:
        net.close()


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or (len(argv) == 3 and argv[2] != "userns"):
        print("usage: python -m a3s_box.network.keeper HOME RUNDIR [userns]  (run by the shim's loop)",
              file=sys.stderr)
        return 2
    return register_again(Path(argv[0]), Path(argv[1]), len(argv) == 3)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
