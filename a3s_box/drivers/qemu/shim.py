"""The per-box supervisor: forked off the home's fork server (a3s_box.forkserver) as
"a3s_box.drivers.qemu.shim RUNDIR", or `python -m a3s_box.drivers.qemu.shim RUNDIR` as a
child that dies with its caller (a build's RUN step).

Reads RUNDIR/launch.json, runs QEMU as its child, holds the guest's one virtio-serial
connection and serves RUNDIR/guest.sock to any number of host clients (routing by
a3s_box.drivers.qemu.mux). Files in RUNDIR:

    launch.json   written by the driver: {"box_id", "argv", "channel", "guest_socket"}
    shim.pid      this process
    channel.sock  QEMU connects here: the virtio-serial port a3s.0
    guest.sock    appears only once the guest said HELLO: its existence means "ready"
    exit.json     written when QEMU has exited: {"status", "signal", "reason"}
    supervisor.json  the protocol this shim speaks with the host (drivers/common/supervision.py)

Single-threaded (selectors), so a misbehaving client can only lose its own connection.
QEMU dies with the shim (PR_SET_PDEATHSIG), so a killed shim leaves no VM behind.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import platform
import select
import selectors
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from a3s_box.atomic import write_text_atomic
from a3s_box.drivers.common.supervision import write_supervisor_record
from a3s_box.drivers.qemu.mux import GUEST, Mux, Out
from a3s_box.jail import cgroup, fsguard, userns
from a3s_box.jail.enter import EXIT_JAIL_FAILED, enter, new_pid_namespace
from a3s_box.jail.spec import JailSpec
from a3s_box.logs.writer import LogLimits, RotatingFile, TimestampedLines
from a3s_box.guest import protocol as p
from a3s_box.network import netns, podnet
# imported here, not when a box has a network: the fork server loads it once for all shims
from a3s_box.network.registration import BoxNetwork, EgressError, register_box, take_network_conf
from a3s_box.guest.protocol import Frame, FrameReader, MsgType


CLIENT_BUFFER_MAX = 16 << 20  # a client that reads nothing is dropped past this
GUEST_BUFFER_HIGH = 4 << 20  # stop reading clients while the guest is this far behind


def _die_with_parent() -> None:
    # runs in the QEMU child between fork and exec: SIGKILL it if the shim dies
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG



SHARE_VIEW = "/run/virtiofsd/share"  # where virtiofsd sees its folder, in its own mounts


def _private_view(source: str, read_only: bool, owner: os.stat_result, first: Callable[[], None],
                  rootless: bool = False) -> None:
    """In virtiofsd's child, before exec: a mount namespace of its own with a private
    /run/virtiofsd (its pid file) that the folder's owner may use, holding the folder at
    SHARE_VIEW (so no folder above it needs to be open to the owner); for a read-only
    bind, the folder and every mount below it read-only there. The guest's writes then
    fail on the host's side of the share, in a folder mounted below the source too."""
    first()
    libc = ctypes.CDLL(None, use_errno=True)
    ms_bind, ms_rec, ms_private, ms_slave, ms_nosuid, ms_nodev, ms_noexec = 4096, 16384, 1 << 18, 1 << 19, 2, 4, 8
    clone_newns = 0x00020000
    run, view = b"/run/virtiofsd", SHARE_VIEW.encode()
    if rootless:  # root of the user's own namespace: it cannot make /run/virtiofsd, so
        # its private tmpfs goes over /run (of its own mounts: nothing else there is needed)
        run = b"/run"
        opts = b"mode=0700,size=64k"
    else:
        os.makedirs(run, mode=0o755, exist_ok=True)
        opts = f"mode=0700,size=64k,uid={owner.st_uid},gid={owner.st_gid}".encode()
    if (libc.unshare(clone_newns) != 0
            # a writable share is a slave: what the host mounts below it later (a pod's
            # container roots) must reach virtiofsd; a read-only one takes nothing new
            # (a later mount would not be read-only)
            or libc.mount(None, b"/", None, ms_rec | (ms_private if read_only else ms_slave), None) != 0
            or libc.mount(b"tmpfs", run, b"tmpfs", ms_nosuid | ms_nodev | ms_noexec, opts) != 0):
        os._exit(126)
    if rootless:
        os.mkdir(b"/run/virtiofsd", 0o700)
    os.mkdir(view, 0o700)
    if libc.mount(source.encode(), view, None, ms_bind | ms_rec, None) != 0:
        os._exit(126)
    if read_only and not _recursively_read_only(libc, view):
        os._exit(126)  # never serve a read-only volume writable


def _recursively_read_only(libc: ctypes.CDLL, path: bytes) -> bool:
    """mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY) (Linux 5.12); on older kernels, a
    read-only remount of PATH and of each mount below it, read from mountinfo."""
    at_fdcwd, at_recursive, mount_attr_rdonly = -100, 0x8000, 0x1
    nr = {"x86_64": 442, "aarch64": 442}.get(platform.machine())
    if nr is not None:
        attr = (ctypes.c_uint64 * 4)(mount_attr_rdonly, 0, 0, 0)
        if libc.syscall(nr, at_fdcwd, path, at_recursive, ctypes.byref(attr), ctypes.sizeof(attr)) == 0:
            return True
        if ctypes.get_errno() != errno.ENOSYS:
            return False
    ms_rdonly, ms_remount, ms_bind = 1, 32, 4096
    top = path.rstrip(b"/") or b"/"
    for line in Path("/proc/self/mountinfo").read_bytes().splitlines():
        point = line.split(b" ")[4].decode("unicode_escape").encode("latin-1")
        if point == top or point.startswith(top.rstrip(b"/") + b"/"):
            if libc.mount(None, point, None, ms_remount | ms_bind | ms_rdonly, None) != 0:
                return False
    return True


# What counts as using the box (a leased box's idle_timeout): running things and moving
# files; not `box ps`'s STATUS or a PING.
USE = frozenset({MsgType.EXEC, MsgType.STDIN, MsgType.PUT, MsgType.GET, MsgType.SIGNAL, MsgType.RESIZE})


def touch_activity(rundir: Path) -> None:
    try:
        os.utime(rundir / "activity")
    except FileNotFoundError:
        (rundir / "activity").touch()
    except OSError:
        pass


def write_json_atomic(path: Path, data: dict[str, object]) -> None:
    write_text_atomic(path, json.dumps(data, sort_keys=True) + "\n")


def exit_reason(status: int) -> dict[str, object]:
    """Pure: what a QEMU wait status means for the user (Popen returncode convention)."""
    if status == 0:
        return {"status": 0, "signal": 0, "reason": "the guest powered off"}
    if status < 0:
        sig = -status
        name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
        return {"status": None, "signal": sig, "reason": f"qemu was killed by {name}"}
    if status == EXIT_JAIL_FAILED:
        return {"status": status, "signal": 0,
                "reason": "the VMM could not be confined (see shim.log); nothing of the box ran"}
    return {"status": status, "signal": 0,
            "reason": f"qemu exited with status {status} (see shim.log and console.log)"}


@dataclass
class _Conn:
    sock: socket.socket
    reader: FrameReader = field(default_factory=FrameReader)
    out: bytearray = field(default_factory=bytearray)
    using: bool = False  # it ran something or moved files (not just STATUS or PING)


class Shim:
    def __init__(self, rundir: Path) -> None:
        self.rundir = rundir
        launch = json.loads((rundir / "launch.json").read_text())
        self.box = str(launch["box_id"])
        self.argv = [str(a) for a in launch["argv"]]
        self.channel_path = Path(launch["channel"])
        self.guest_path = Path(launch["guest_socket"])
        self.with_network = bool(launch.get("network"))
        self.pod_netns = str(launch.get("pod_netns") or "")  # QEMU runs in it (network/podnet.py)
        self.network: BoxNetwork | None = None  # the box's registration with the egress daemon
        self.virtiofsd_specs: list[dict[str, object]] = list(launch.get("virtiofsd") or [])
        self.virtiofsd: list[subprocess.Popen[bytes]] = []
        self.jail = JailSpec.from_json(launch["jail"]) if launch.get("jail") else None
        self.console_socket = Path(launch["console_socket"]) if launch.get("console_socket") else None
        self.console_path = Path(str(launch.get("console") or rundir / "console.log"))
        self.logging = LogLimits.from_json(launch.get("logging"))
        self.console_log: RotatingFile | None = None
        self.stamper = TimestampedLines()
        self.last_touch = 0.0
        self.broken = 0  # malformed guest frames not yet reported
        self.broken_said = 0.0
        self.cgroup: cgroup.BoxCgroup | None = None
        self.sel = selectors.DefaultSelector()
        self.clients: dict[int, _Conn] = {}
        self.guest: _Conn | None = None
        self.mux: Mux | None = None
        self.listener: socket.socket | None = None
        self.qemu: subprocess.Popen[bytes] | None = None
        self.stopping = ""
        self.failure = ""  # a helper the box's promises rest on died: why the VM was stopped

    def log(self, msg: str) -> None:
        print(f"shim {self.box}: {msg}", file=sys.stderr, flush=True)

    # --- lifecycle ----------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        for path in (self.channel_path, self.guest_path, self.rundir / "exit.json"):
            path.unlink(missing_ok=True)
        write_supervisor_record(self.rundir)
        chan = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        chan.bind(str(self.channel_path))
        chan.listen(1)
        console: socket.socket | None = None
        if self.console_socket is not None:
            # QEMU's serial console comes here; the log is ours to cap, rotate and stamp
            self.console_socket.unlink(missing_ok=True)
            console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            console.bind(str(self.console_socket))
            console.listen(1)
            self.console_log = RotatingFile(self.console_path, self.logging)
        try:
            if self.jail is not None and self.jail.limits is not None:
                # every process serving the box shares its limits
                self.cgroup = cgroup.BoxCgroup.create(self.jail.name, self.jail.limits)
        except cgroup.CgroupError as e:
            self.log(f"cgroup: {e}")
            write_json_atomic(self.rundir / "exit.json", {"status": None, "signal": 0, "reason": f"cgroup: {e}"})
            return 1
        procs = self.cgroup.procs_files() if self.cgroup else []

        def helper_preexec() -> None:
            _die_with_parent()
            cgroup.join(procs)
        self._helper_preexec = helper_preexec
        netns_fd: int | None = None
        try:
            self._start_virtiofsd()
        except RuntimeError as e:
            self.log(str(e))
            self._stop_helpers()
            write_json_atomic(self.rundir / "exit.json", {"status": None, "signal": 0, "reason": str(e)})
            return 1
        pass_fds: tuple[int, ...] = ()
        if self.pod_netns:
            try:
                netns_fd = os.open(self.pod_netns, os.O_RDONLY | os.O_CLOEXEC)
                pass_fds = (self._tap_for_qemu(netns_fd),)
            except (OSError, podnet.PodNetError) as e:
                reason = f"the pod's network namespace {self.pod_netns}: {e}"
                self.log(reason)
                self._stop_helpers()
                write_json_atomic(self.rundir / "exit.json", {"status": None, "signal": 0, "reason": reason})
                return 1
        if self.with_network:
            try:
                netns_fd = self._start_network()
            except RuntimeError as e:
                self.log(str(e))
                self._stop_helpers()
                write_json_atomic(self.rundir / "exit.json",
                                  {"status": None, "signal": 0, "reason": str(e)})
                return 1

        jail = self.jail
        if jail is not None:
            os.chown(self.channel_path, jail.uid, jail.gid)  # QEMU connects as the box's uid
            if self.console_socket is not None:
                os.chown(self.console_socket, jail.uid, jail.gid)
            for spec in self.virtiofsd_specs:
                os.chown(str(spec["socket"]), jail.uid, jail.gid)
            new_pid_namespace()  # QEMU, our next child, becomes init of its own PID namespace

            def preexec() -> None:
                enter(jail, netns_fd, procs)
        else:
            def preexec() -> None:
                helper_preexec()
                if netns_fd is not None:  # QEMU's user-mode network: only through the proxy
                    netns.enter(netns_fd, self.network.userns_fd if self.network is not None else None)
        self.qemu = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, close_fds=True,
                                     preexec_fn=preexec, pass_fds=pass_fds)
        for fd in pass_fds:
            os.close(fd)  # QEMU's alone now
        self.log(f"qemu pid {self.qemu.pid}: {' '.join(self.argv)}")
        if self.stopping:
            self.qemu.terminate()  # asked to stop while QEMU was being started
        pidfd = os.pidfd_open(self.qemu.pid)
        self.sel.register(pidfd, selectors.EVENT_READ, "qemu")
        self.sel.register(chan, selectors.EVENT_READ, "channel")
        if console is not None:
            self.sel.register(console, selectors.EVENT_READ, "console-listen")
        try:
            while self.qemu.poll() is None:
                ready = self.sel.select(timeout=0.5)
                for key, events in ready:
                    self._dispatch(key, events)
                if any(c.using for c in self.clients.values()):
                    self._active()  # a long exec with no output is still use
                if not self.failure and (dead := self._dead_helper()):
                    # no proxy: no network policy, no secrets; no virtiofsd: no volume. The
                    # box stops rather than run without what it was promised; the reconcile
                    # loop (or the next apply) boots it again with fresh helpers.
                    self.failure = dead
                    self.log(f"{dead}: stopping the VM")
                    self.qemu.terminate()
                if not ready and self.mux is None and self.guest is not None:
                    # until the guest answers, repeat HELLO (extra answers are ignored)
                    self.guest.out += p.hello()
                    self._update_interest()
        except BaseException:
            # a bug in the shim must not leave an unsupervised VM behind
            self.stopping = "the shim failed"
            traceback.print_exc()
            self.qemu.kill()
            raise
        finally:
            status = self.qemu.wait()
            self._stop_helpers()
            if self.cgroup is not None:
                self.cgroup.remove()
            result = exit_reason(status)
            if self.failure:
                result = {"status": None, "signal": 0, "reason": f"{self.failure}; the VM was stopped"}
            elif self.stopping:
                result["reason"] = f"stopped ({self.stopping})" if status == 0 else \
                    f"{result['reason']} while stopping ({self.stopping})"
            self.log(str(result["reason"]))
            self._drain_console()
            if self.console_log is not None:
                self.console_log.close()
            for path in (self.guest_path, self.channel_path):
                path.unlink(missing_ok=True)
            write_json_atomic(self.rundir / "exit.json", result)
        return 0

    def _dead_helper(self) -> str:
        """Which helper the box rests on ended while the VM runs ("" if none)."""
        if self.network is not None and not self.network.alive():
            return f"the egress proxy is gone ({self.network.failure or 'its registration ended'})"
        for spec, proc in zip(self.virtiofsd_specs, self.virtiofsd):
            if (rc := proc.poll()) is not None:
                return f"virtiofsd of volume {spec.get('target')} ended ({_status_text(rc)})"
        return ""

    def _stop_helpers(self) -> None:
        if self.network is not None:
            self.network.close()
        for proc in self.virtiofsd:
            proc.terminate()
        for proc in self.virtiofsd:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()

    def _start_virtiofsd(self) -> None:
        """One virtiofsd per bind volume, each ready (its socket listening) before QEMU."""
        for spec in self.virtiofsd_specs:
            sock, source = Path(str(spec["socket"])), str(spec["source"])
            owner = os.stat(source)
            if os.geteuid() != 0 and owner.st_uid != os.geteuid():
                raise RuntimeError(f"volume {spec['target']}: {source} is uid {owner.st_uid}'s: without root, "
                                   "a box shares only its user's own folders")
            # virtiofsd makes its socket as the folder's owner (root in its namespace), in
            # a folder that owner may write, reached through an fd (the box's folder and
            # the home above it are root's alone)
            sock.parent.mkdir(mode=0o700, exist_ok=True)
            os.chown(sock.parent, owner.st_uid, owner.st_gid)
            sock.unlink(missing_ok=True)
            sock_dir = os.open(sock.parent, os.O_RDONLY | os.O_DIRECTORY)
            if not Path(source).is_dir():
                raise RuntimeError(f"volume {spec['target']}: bind source {source} is not a folder")
            read_only = bool(spec["read_only"])
            # The guest's root drives this process: no device nodes (modcaps, fsguard and
            # the user namespace), no setuid/setgid bits (fsguard), no xattrs at all (so
            # no security.capability or trusted.*: QEMU 7.2's xattrmap breaks chown).
            # It runs in a user namespace where root is the folder's owner: what the guest
            # makes is theirs on the host, and the kernel refuses device nodes from there.
            mapped = userns.MappedSpawn(owner.st_uid, owner.st_gid)

            def preexec(source: str = source, read_only: bool = read_only,
                        mapped: userns.MappedSpawn = mapped, owner: os.stat_result = owner) -> None:
                if not mapped.rootless:
                    _private_view(source, read_only, owner, self._helper_preexec)
                    mapped.preexec(fsguard.install)
                    return

                def inside() -> None:  # without root: mounts only in the user's own namespace
                    _private_view(source, read_only, owner, lambda: None, rootless=True)
                    fsguard.install()
                self._helper_preexec()
                mapped.preexec(inside)
            mapped.start()
            try:
                proc = subprocess.Popen(
                    [str(spec["binary"]), f"--socket-path=/proc/self/fd/{sock_dir}/{sock.name}",
                     "-o", f"source={SHARE_VIEW}",
                     "-o", "cache=auto", "-o", "sandbox=namespace", "-o", "no_posix_lock",
                     "-o", "modcaps=-mknod", "--rlimit-nofile=0", "-o", "no_xattr"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True,
                    pass_fds=(*mapped.pass_fds, sock_dir), preexec_fn=preexec)
            finally:
                mapped.finish()
                os.close(sock_dir)
            if mapped.error:
                self.log(f"volume {spec['target']}: {mapped.error}")
            self.virtiofsd.append(proc)
            for _ in range(500):
                if sock.exists() or proc.poll() is not None:
                    break
                select.select([], [], [], 0.01)
            if not sock.exists():
                raise RuntimeError(f"volume {spec['target']}: virtiofsd for {source} did not start "
                                   f"(exit {proc.poll()}; see shim.log)")
            self.log(f"virtiofsd pid {proc.pid}: {source} -> {spec['target']}"
                     f"{' (read-only)' if read_only else ''}")

    @staticmethod
    def _tap_for_qemu(netns_fd: int) -> int:
        """The pod's tap as podnet.TAP_FD, the descriptor QEMU's argv names."""
        tap = podnet.open_tap(netns_fd)
        try:
            fcntl.fcntl(podnet.TAP_FD, fcntl.F_GETFD)
        except OSError:
            os.dup2(tap, podnet.TAP_FD, inheritable=False)  # a free number: QEMU's argv's
            return podnet.TAP_FD
        finally:
            os.close(tap)
        raise OSError(errno.EBUSY, f"descriptor {podnet.TAP_FD} is taken in the shim")

    def _start_network(self) -> int:
        """The box's network namespace, registered with the host's egress daemon (started
        if need be: a3s_box/network/daemon.py), which serves the box's proxy and DNS under
        its own policy and secrets; an fd of that namespace, for QEMU. The registration's
        connection lives as long as this shim: the box's network ends with it."""
        touch_activity(self.rundir)  # its traffic marks the box as used
        try:
            conf = take_network_conf(self.rundir)
            self.network = register_box(self.rundir.parent.parent, self.rundir, conf,
                                        on_failure=self._network_failed, log=self.log)
        except EgressError as e:
            raise RuntimeError(str(e)) from e
        self.log(f"egress daemon pid {self.network.daemon_pid()} serves the box")
        return self.network.netns_fd

    def _network_failed(self, reason: str) -> None:
        """From the registration's thread: no daemon serves the box any more."""
        self.log(f"egress daemon: {reason}")

    def _on_signal(self, signo: int, _frame: object) -> None:
        self.stopping = f"{signal.Signals(signo).name} to the shim"
        if self.qemu is not None and self.qemu.poll() is None:
            self.qemu.terminate()  # QEMU exits cleanly on SIGTERM; the loop sees it

    def _dispatch(self, key: selectors.SelectorKey, events: int) -> None:
        what = key.data
        if what == "qemu":
            return  # the loop condition notices
        if what == "channel":
            self._accept_guest(key.fileobj)  # type: ignore[arg-type]
        elif what == "console-listen":
            self._accept_console(key.fileobj)  # type: ignore[arg-type]
        elif what == "console":
            self._console_io(key.fileobj)  # type: ignore[arg-type]
        elif what == "listen":
            self._accept_client()
        elif what == "guest":
            self._guest_io(events)
        else:
            cid = int(what)
            try:
                self._client_io(cid, events)
            except Exception:  # one client's trouble must not take the others down
                traceback.print_exc()
                self._drop_client(cid, "failed")

    def _active(self) -> None:
        """A client used the box (exec, files): RUNDIR/activity's time says when, for a
        leased box's lifetime.idle_timeout. At most one touch a second."""
        now = time.monotonic()
        if now - self.last_touch >= 1.0:
            self.last_touch = now
            touch_activity(self.rundir)

    # --- the console ----------------------------------------------------------
    def _accept_console(self, listener: socket.socket) -> None:
        conn, _ = listener.accept()
        self.sel.unregister(listener)
        listener.close()
        conn.setblocking(False)
        self.console_conn = conn
        self.sel.register(conn, selectors.EVENT_READ, "console")

    def _drain_console(self) -> None:
        """What QEMU wrote before it exited (a panic's last lines) still goes to the log."""
        conn = getattr(self, "console_conn", None)
        for _ in range(256):
            if conn is None or conn.fileno() < 0:
                break
            self._console_io(conn)

    def _console_io(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(conn)
            conn.close()
            return
        if self.console_log is not None:  # never blocks on a full disk: drops and counts
            self.console_log.write(self.stamper.feed(data))

    # --- the guest side -------------------------------------------------------
    def _accept_guest(self, chan: socket.socket) -> None:
        conn, _ = chan.accept()
        self.sel.unregister(chan)
        chan.close()  # QEMU connects exactly once
        conn.setblocking(False)
        self.guest = _Conn(conn, out=bytearray(p.hello()))
        self.sel.register(conn, selectors.EVENT_READ | selectors.EVENT_WRITE, "guest")

    def _guest_io(self, events: int) -> None:
        g = self.guest
        assert g is not None
        if events & selectors.EVENT_WRITE and g.out:
            try:
                n = g.sock.send(g.out)
                del g.out[:n]
            except BlockingIOError:
                pass
            except OSError as e:
                self._guest_gone(f"write: {e}")
                return
        if events & selectors.EVENT_READ:
            try:
                data = g.sock.recv(1 << 16)
            except BlockingIOError:
                data = None
            except OSError as e:
                self._guest_gone(f"read: {e}")
                return
            if data == b"":
                self._guest_gone("closed")
                return
            for f in g.reader.feed(data or b""):
                self._from_guest(f)
            if g.reader.errors:
                self._guest_broke(g.reader.errors)
                g.reader.errors.clear()  # resynchronised; the guest's stream carries on
        self._update_interest()

    def _from_guest(self, f: Frame) -> None:
        if self.mux is None:
            if f.type == MsgType.HELLO and f.stream == 0:
                self.mux = Mux(f)
                self._listen()
            return
        for o in self.mux.from_guest(f):
            self._send(o)

    def _guest_broke(self, errors: list[str]) -> None:
        """A guest (its root may be hostile) sent frames that are not the protocol: its
        open sessions end with an error to their clients, `box logs` says so (at most
        once a second), and the stream carries on from the next good frame."""
        self.broken += len(errors)
        if self.mux is not None:
            for o in self.mux.end_all(f"the guest broke the protocol ({errors[0]})"):
                self._send(o)
        now = time.monotonic()
        if now - self.broken_said >= 1.0:
            self.broken_said = now
            line = (f"a3s-box: the guest sent {self.broken} malformed frame(s) ({errors[0]}); "
                    "its sessions were ended\n").encode()
            self.log(line.decode().strip())
            if self.console_log is not None:
                self.console_log.write(self.stamper.feed(b"\n" + line if not self.stamper.at_line_start
                                                         else line))
            self.broken = 0

    def _guest_gone(self, why: str) -> None:
        self.log(f"guest channel {why}; waiting for qemu to exit")
        if self.guest is not None:
            self.sel.unregister(self.guest.sock)
            self.guest.sock.close()
            self.guest = None
        for cid in list(self.clients):
            self._drop_client(cid, "guest channel closed")
        self.guest_path.unlink(missing_ok=True)

    def _listen(self) -> None:
        # bind under a temporary name and rename: guest.sock appears only when ready
        tmp = self.guest_path.with_name(f".{self.guest_path.name}.tmp")
        tmp.unlink(missing_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(tmp))
        s.listen(64)
        s.setblocking(False)
        os.replace(tmp, self.guest_path)
        self.listener = s
        self.sel.register(s, selectors.EVENT_READ, "listen")
        self.log("guest answered HELLO: serving " + str(self.guest_path))

    # --- the client side ----------------------------------------------------------
    def _accept_client(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        conn.setblocking(False)
        cid = conn.fileno()
        self.clients[cid] = _Conn(conn)
        self.sel.register(conn, selectors.EVENT_READ, str(cid))

    def _client_io(self, cid: int, events: int) -> None:
        c = self.clients.get(cid)
        if c is None:
            return
        if events & selectors.EVENT_WRITE and c.out:
            try:
                n = c.sock.send(c.out)
                del c.out[:n]
            except BlockingIOError:
                pass
            except OSError:
                self._drop_client(cid, "write failed")
                return
        if events & selectors.EVENT_READ:
            try:
                data = c.sock.recv(1 << 16)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data == b"":
                self._drop_client(cid, "disconnected")
                return
            frames = c.reader.feed(data or b"")
            if any(f.type in USE for f in frames):
                c.using = True  # an exec or a transfer: active for as long as it is connected
                self._active()
            if c.reader.errors:
                self._drop_client(cid, f"protocol error: {c.reader.errors[0]}")
                return
            assert self.mux is not None
            for f in frames:
                for o in self.mux.from_client(cid, f):
                    self._send(o)
        self._update_interest()

    def _drop_client(self, cid: int, why: str) -> None:
        c = self.clients.pop(cid, None)
        if c is None:
            return
        if self.sel.get_map().get(c.sock) is not None:
            self.sel.unregister(c.sock)
        c.sock.close()
        if self.mux is not None:
            n = self.mux.sessions(cid)
            for o in self.mux.drop_client(cid):
                self._send(o)
            if n:
                self.log(f"client {cid} {why}: killed its {n} session(s)")

    def _send(self, o: Out) -> None:
        if o.dest == GUEST:
            if self.guest is not None:
                self.guest.out += o.data
            return
        c = self.clients.get(o.dest)
        if c is None:
            return
        c.out += o.data
        if len(c.out) > CLIENT_BUFFER_MAX:
            self._drop_client(o.dest, "not reading its output")

    def _update_interest(self) -> None:
        if self.guest is not None:
            ev = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.guest.out else 0)
            self.sel.modify(self.guest.sock, ev, "guest")
        # backpressure: while the guest lags, leave client input unread in its socket
        guest_full = self.guest is not None and len(self.guest.out) > GUEST_BUFFER_HIGH
        for cid, c in self.clients.items():
            ev = (0 if guest_full else selectors.EVENT_READ) | \
                (selectors.EVENT_WRITE if c.out else 0)
            registered = self.sel.get_map().get(c.sock) is not None
            if ev and registered:
                self.sel.modify(c.sock, ev, str(cid))
            elif ev:
                self.sel.register(c.sock, ev, str(cid))
            elif registered:
                self.sel.unregister(c.sock)


def _status_text(rc: int) -> str:
    if rc < 0:
        sig = -rc
        return f"killed by {signal.Signals(sig).name}" if sig in signal.valid_signals() else f"signal {sig}"
    return f"status {rc}"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m a3s_box.drivers.qemu.shim RUNDIR", file=sys.stderr)
        return 2
    rundir = Path(argv[0])
    write_text_atomic(rundir / "shim.pid", f"{os.getpid()}\n")  # never seen empty
    return Shim(rundir).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
