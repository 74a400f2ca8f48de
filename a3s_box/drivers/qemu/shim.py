"""The per-box supervisor: forked off the home's fork server (a3s_box.forkserver) as
"a3s_box.drivers.qemu.shim RUNDIR", or `python -m a3s_box.drivers.qemu.shim RUNDIR` as a
child that dies with its caller (a build's RUN step).

Reads RUNDIR/launch.json and sets the box up: its cgroup, a virtiofsd per bind volume, its
network registered with the host's egress daemon (network/keeper.py: held by descriptors
the loop keeps, or without root by a keeper process for a box with published ports) or its pod's tap,
the sockets QEMU connects to, and QEMU, jailed, as its child. Then it
execs the steady-state loop, a3s-shim-loop (loop/shim_loop.c, named in launch.json): the
same process, still QEMU's parent and titled "a3s_box.drivers.qemu.shim RUNDIR", which
holds the guest's one virtio-serial connection, serves RUNDIR/guest.sock to any number of
host clients, writes the console log, stops the VM if a helper dies and writes exit.json.
Python is paid for while the box starts, not while it runs. Files in RUNDIR:

    launch.json   written by the driver: {"box_id", "argv", "channel", "guest_socket", "loop",
                  "huge_pages" (false: QEMU runs with PR_SET_THP_DISABLE), ...}
    shim.pid      this process
    channel.sock  QEMU connects here: the virtio-serial port a3s.0
    guest.sock    appears only once the guest said HELLO: its existence means "ready"
    exit.json     written when QEMU has exited: {"status", "signal", "reason"}
    supervisor.json  the protocol this shim speaks with the host (drivers/common/supervision.py)

QEMU dies with the shim (PR_SET_PDEATHSIG), so a killed shim leaves no VM behind; a setup
step that fails writes exit.json saying which, and leaves no helper behind.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import platform
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from a3s_box.atomic import write_text_atomic
from a3s_box.drivers.common.supervision import write_supervisor_record
from a3s_box.drivers.qemu.argv import RAM_FD
from a3s_box.drivers.qemu.clone_ram import clone_ram
from a3s_box.drivers.qemu.shim_loop import LoopArgs
from a3s_box.jail import cgroup, fsguard, userns
from a3s_box.jail.enter import enter, new_pid_namespace
from a3s_box.jail.files import give
from a3s_box.jail.spec import JailSpec
from a3s_box.logs.writer import LogLimits
from a3s_box.network import netns, podnet
from a3s_box.network.netns import NetnsError, UserNetNamespace
# imported here, not when a box has a network: the fork server loads it once for all shims
from a3s_box.network.keeper import Held, Keeper, hold_registration, start_keeper
from a3s_box.network.registration import EgressError, take_network_conf

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PR_SET_THP_DISABLE = 41


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


def touch_activity(rundir: Path) -> None:
    try:
        os.utime(rundir / "activity")
    except FileNotFoundError:
        (rundir / "activity").touch()
    except OSError:
        pass


def write_json_atomic(path: Path, data: dict[str, object]) -> None:
    write_text_atomic(path, json.dumps(data, sort_keys=True) + "\n")


class SetupFailed(Exception):
    """A step before QEMU runs failed: the box does not start (exit.json says why)."""


class Shim:
    def __init__(self, rundir: Path) -> None:
        self.rundir = rundir
        launch = json.loads((rundir / "launch.json").read_text())
        self.box = str(launch["box_id"])
        self.argv = [str(a) for a in launch["argv"]]
        self.loop = str(launch.get("loop") or "")
        self.channel_path = Path(launch["channel"])
        self.guest_path = Path(launch["guest_socket"])
        self.with_network = bool(launch.get("network"))
        self.huge_pages = bool(launch.get("huge_pages", True))
        self.pod_netns = str(launch.get("pod_netns") or "")  # QEMU runs in it (network/podnet.py)
        # a clone with hot-plugged shares: its RAM, a copy of this template RAM file of this size
        ram = launch.get("clone_ram") or {}
        self.clone_ram = (Path(ram["template"]), int(ram["bytes"])) if ram else None
        # the box's registration with the egress daemon (network/keeper.py): held by
        # descriptors the loop keeps, or without root by a keeper process for a box with published ports
        self.held: Held | None = None
        self.keeper: Keeper | None = None
        self.virtiofsd_specs: list[dict[str, object]] = list(launch.get("virtiofsd") or [])
        self.virtiofsd: list[subprocess.Popen[bytes]] = []
        self.jail = JailSpec.from_json(launch["jail"]) if launch.get("jail") else None
        self.console_socket = Path(launch["console_socket"]) if launch.get("console_socket") else None
        self.console_path = Path(str(launch.get("console") or rundir / "console.log"))
        self.logging = LogLimits.from_json(launch.get("logging"))
        self.cgroup: cgroup.BoxCgroup | None = None
        self.qemu: subprocess.Popen[bytes] | None = None
        self._namespaces: UserNetNamespace | None = None  # held until QEMU has joined them
        self.stopping = ""

    def log(self, msg: str) -> None:
        print(f"shim {self.box}: {msg}", file=sys.stderr, flush=True)

    def run(self) -> int:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        for path in (self.channel_path, self.guest_path, self.rundir / "exit.json"):
            path.unlink(missing_ok=True)
        write_supervisor_record(self.rundir)
        try:
            return self._start()
        except SetupFailed as e:
            self.log(str(e))
            self._stop_helpers()
            if self.cgroup is not None:
                self.cgroup.remove()
            write_json_atomic(self.rundir / "exit.json", {"status": None, "signal": 0, "reason": str(e)})
            return 1

    def _start(self) -> int:
        if not self.loop or not os.access(self.loop, os.X_OK):
            raise SetupFailed(f"the shim's loop {self.loop or '(none named in launch.json)'} is missing")
        netns_fd: int | None = None
        userns_fd: int | None = None
        try:
            if self.jail is not None and self.jail.limits is not None:
                # every process serving the box shares its limits
                self.cgroup = cgroup.BoxCgroup.create(self.jail.name, self.jail.limits)
        except cgroup.CgroupError as e:
            raise SetupFailed(f"cgroup: {e}") from e
        procs = self.cgroup.procs_files() if self.cgroup else []

        def helper_preexec() -> None:
            _die_with_parent()
            cgroup.join(procs)
        self._helper_preexec = helper_preexec
        try:
            self._start_virtiofsd()
        except RuntimeError as e:
            raise SetupFailed(str(e)) from e
        if self.with_network:
            touch_activity(self.rundir)  # its traffic marks the box as used
            home = self.rundir.parent.parent
            try:
                conf = take_network_conf(self.rundir)
                if conf.get("forwards") and os.geteuid() != 0:
                    # the daemon will ask for sockets of a namespace the loop cannot enter
                    # without root: a keeper stays, forked while this process has no thread
                    # and holds no socket of the box's
                    self.keeper = start_keeper(home, self.rundir, conf, self.log)
                    daemon, netns_fd, userns_fd = self.keeper.daemon_pid, self.keeper.netns_fd, self.keeper.userns_fd
                    self.log(f"network keeper pid {self.keeper.pid}")
                else:  # held by descriptors: the loop holds them. The namespace's rules go
                    # in while QEMU starts (nothing but its loopback is reachable until
                    # then); the guest is served once they are in (below)
                    self.held = hold_registration(home, self.rundir, conf, self.log, seal_later=True)
                    d = self.held.detached
                    daemon, netns_fd, userns_fd = d.daemon_pid, d.netns, d.userns
            except EgressError as e:
                raise SetupFailed(str(e)) from e
            self.log(f"egress daemon pid {daemon} serves the box")
        chan = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        chan.bind(str(self.channel_path))
        chan.listen(1)
        console: socket.socket | None = None
        if self.console_socket is not None:
            # QEMU's serial console comes here; the log is the loop's to cap, rotate and stamp
            self.console_socket.unlink(missing_ok=True)
            console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            console.bind(str(self.console_socket))
            console.listen(1)
        pass_fds: tuple[int, ...] = ()
        if self.pod_netns:
            try:
                netns_fd = os.open(self.pod_netns, os.O_RDONLY | os.O_CLOEXEC)
                pass_fds = (self._tap_for_qemu(netns_fd),)
            except (OSError, podnet.PodNetError) as e:
                raise SetupFailed(f"the pod's network namespace {self.pod_netns}: {e}") from e
        if self.clone_ram is not None:
            try:
                pass_fds += (self._at_fd(clone_ram(*self.clone_ram, lambda: cgroup.join(procs)), RAM_FD),)
            except OSError as e:
                raise SetupFailed(f"the clone's memory: {e}") from e

        def no_huge_pages() -> None:
            if not self.huge_pages:  # kept across QEMU's exec
                ctypes.CDLL(None).prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)

        jail = self.jail
        if jail is not None:
            give(self.channel_path, jail.uid, jail.gid)  # QEMU connects as the box's uid
            if self.console_socket is not None:
                give(self.console_socket, jail.uid, jail.gid)
            for spec in self.virtiofsd_specs:
                give(str(spec["socket"]), jail.uid, jail.gid)
            if jail.userns and netns_fd is None:
                # the box's user namespace, its ids the user's subordinate ones, and an empty
                # network namespace in it for a box without a network
                empty = UserNetNamespace()
                try:
                    empty.make_empty()
                except NetnsError as e:
                    raise SetupFailed(f"the box's user namespace: {e}") from e
                self._namespaces = empty
                netns_fd, userns_fd = empty.fd, empty.user_fd
            if not jail.userns:  # (without root, the child makes one: jail/enter.py)
                new_pid_namespace()  # QEMU, our next child, becomes init of its own PID namespace

            def preexec() -> None:
                no_huge_pages()
                enter(jail, netns_fd, procs, userns_fd, pid1_parent=self.loop if jail.userns else "")
        else:
            def preexec() -> None:
                no_huge_pages()
                helper_preexec()
                if netns_fd is not None:  # QEMU's user-mode network: only through the proxy
                    netns.enter(netns_fd, userns_fd)
        self.qemu = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, close_fds=True,
                                     preexec_fn=preexec, pass_fds=pass_fds)
        for fd in pass_fds:
            os.close(fd)  # QEMU's alone now
        if self.held is not None:
            try:
                self.held.wait_sealed()
            except EgressError as e:
                self.qemu.kill()
                self.qemu.wait()
                raise SetupFailed(str(e)) from e
        if self._namespaces is not None:
            self._namespaces.close()  # QEMU is in them: they live as long as it does
        self.log(f"qemu pid {self.qemu.pid}: {' '.join(self.argv)}")
        return self._exec_loop(chan, console)

    def _exec_loop(self, chan: socket.socket, console: socket.socket | None) -> int:
        """Becomes the steady-state loop (never returns but on failure). Stop signals are
        blocked across the exec (the loop takes them from a signalfd): none is lost."""
        assert self.qemu is not None
        keeper, held = self.keeper, self.held
        kept = [chan.fileno()] + ([console.fileno()] if console is not None else []) + \
            ([keeper.sock.fileno()] if keeper else []) + (held.fds() if held else []) + \
            ([fd for _, fd in held.published()] if held else [])
        for fd in kept:
            os.set_inheritable(fd, True)
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        args = LoopArgs(
            title=f"a3s_box.drivers.qemu.shim {self.rundir}", rundir=self.rundir, box=self.box,
            qemu_pid=self.qemu.pid, channel_fd=chan.fileno(), channel_path=self.channel_path,
            guest_path=self.guest_path, console_fd=console.fileno() if console is not None else None,
            console_log=self.console_path if console is not None else None, logging=self.logging,
            cgroups=[p for _, p in self.cgroup.paths] if self.cgroup is not None else [],
            volumes=[(proc.pid, str(spec.get("target"))) for spec, proc in zip(self.virtiofsd_specs, self.virtiofsd)],
            network=(keeper.pid, keeper.sock.fileno()) if keeper is not None else None,
            registration=held.fds() if held is not None else None,
            published=held.published() if held is not None else [], python=sys.executable,
            home=self.rundir.parent.parent,
            stopping=self.stopping)
        if keeper is not None:  # QEMU has joined them: not the loop's
            for ns_fd in (keeper.netns_fd, keeper.userns_fd):
                if ns_fd is not None:
                    os.set_inheritable(ns_fd, False)
        try:
            os.execv(self.loop, args.argv())
        except OSError as e:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            self.qemu.kill()
            self.qemu.wait()
            raise SetupFailed(f"cannot run the shim's loop {self.loop}: {e}") from e
        raise AssertionError("unreachable")

    def _stop_helpers(self) -> None:
        if self.held is not None:
            self.held.close()  # the daemon sees the connection end
            self.held = None
        if self.keeper is not None:
            self.keeper.close()
            self.keeper = None
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

    @classmethod
    def _tap_for_qemu(cls, netns_fd: int) -> int:
        """The pod's tap as podnet.TAP_FD, the descriptor QEMU's argv names."""
        return cls._at_fd(podnet.open_tap(netns_fd), podnet.TAP_FD)

    @staticmethod
    def _at_fd(fd: int, number: int) -> int:
        """FD moved to NUMBER (QEMU's argv names it), which must be free; NUMBER."""
        try:
            fcntl.fcntl(number, fcntl.F_GETFD)
        except OSError:
            os.dup2(fd, number, inheritable=False)  # a free number: QEMU's argv's
            return number
        finally:
            os.close(fd)
        raise OSError(errno.EBUSY, f"descriptor {number} is taken in the shim")

    def _on_signal(self, signo: int, _frame: object) -> None:
        self.stopping = f"{signal.Signals(signo).name} to the shim"
        if self.qemu is not None and self.qemu.poll() is None:
            self.qemu.terminate()  # the loop sees it exit


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m a3s_box.drivers.qemu.shim RUNDIR", file=sys.stderr)
        return 2
    rundir = Path(argv[0])
    write_text_atomic(rundir / "shim.pid", f"{os.getpid()}\n")  # never seen empty
    return Shim(rundir).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
