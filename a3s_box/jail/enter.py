"""Enter a jail: runs in the child between fork and exec (a subprocess preexec_fn), as
root, and leaves a process that can only exec what its JailSpec gives it.

    cgroup      join the box's cgroup (all hierarchies)
    network     the box's network namespace (given as an fd), or a new, empty one
    namespaces  new mount, IPC and UTS namespaces (the PID namespace is the caller's
                doing: the shim unshares it before forking QEMU, which becomes its init;
                without root, this process makes it and forks: see enter())
    user        without root, first: the box's user namespace, where the user is root
                and the ids are the user's subordinate ones (a3s_box/subids.py)
    root        a tmpfs with read-only /usr and the few host files and devices the spec
                names, each at its host path; pivot_root into it; the old root detached
    ids         every capability dropped from the bounding set, then the uid/gid of the
                box (so no capability is left), no_new_privs, and death with the parent

Any failure ends the child with status 126 and a line on stderr: a box never starts
half-confined.
"""
from __future__ import annotations

import ctypes
import os
import platform
import signal
import sys

from a3s_box.jail import cgroup
from a3s_box.jail.spec import DEVICES, SYS_READ, SYSTEM_DIRS, SYSTEM_FILES, SYSTEM_LINKS, JailSpec

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWNET = 0x20000, 0x4000000, 0x8000000, 0x40000000
CLONE_NEWPID = 0x20000000
CLONE_NEWUSER = 0x10000000
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
EXIT_JAIL_FAILED = 126

_libc = ctypes.CDLL(None, use_errno=True)


class JailError(Exception):
    pass


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise JailError(f"{what}: {os.strerror(e)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(src.encode() if src else None, target.encode(), fstype.encode() if fstype else None,
                       flags, data.encode() if data else None), f"mount {src or ''} {target}")


def _bind(root: str, path: str, writable: bool, devices: bool = False) -> None:
    target = root + path
    if os.path.isdir(path) and not os.path.islink(path):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            with open(target, "w"):
                pass
    _mount(path, target, None, MS_BIND | MS_REC)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | (0 if devices else MS_NODEV)
    if not writable:
        flags |= MS_RDONLY
    _mount(None, target, None, flags)


def _system(root: str, spec: JailSpec) -> None:
    for d in SYSTEM_DIRS:
        _bind(root, d, False)
    for link in SYSTEM_LINKS:
        if os.path.islink(link):
            os.symlink(os.readlink(link), root + link)
        elif os.path.isdir(link):
            _bind(root, link, False)
    for f in SYSTEM_FILES + SYS_READ:
        if os.path.exists(f):
            _bind(root, f, False)
    for dev in DEVICES:
        if os.path.exists(dev):
            _bind(root, dev, True, devices=True)


def new_pid_namespace() -> None:
    """In the parent: its next child is init of a PID namespace of its own (and sees no
    other process); later children join that namespace."""
    _check(_libc.unshare(CLONE_NEWPID), "unshare PID namespace")


def enter(spec: JailSpec, netns_fd: int | None = None, cgroup_procs: list[str] | None = None,
          userns_fd: int | None = None, pid1_parent: str = "") -> None:
    """Confine this process as SPEC says (see the module docstring). Without root
    (spec.userns), USERNS_FD is the box's user namespace, joined first: every step after
    is that namespace's root's, and the ids are its own; then, with PID1_PARENT (the
    shim's loop binary), a PID namespace of that user namespace's: this process forks,
    execs PID1_PARENT in the parent (which stands for the VMM to the shim: signals in,
    exit status out; loop/pid1_parent.c) and carries on in the child, the namespace's
    init, which becomes the VMM."""
    try:
        if spec.userns:
            if userns_fd is None:
                raise JailError("no user namespace given")
            _check(_libc.setns(userns_fd, CLONE_NEWUSER), "setns user namespace")
            os.umask(0)  # its QMP socket must be the user's to connect to (the box's folder is 0700)
            if pid1_parent:
                _check(_libc.unshare(CLONE_NEWPID), "unshare PID namespace")
                vmm = os.fork()
                if vmm != 0:
                    _check(_libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0), "pdeathsig")
                    os.execv(pid1_parent, [pid1_parent, "--pid1-parent", str(vmm)])
        _enter(spec, netns_fd, cgroup_procs or [])
    except BaseException as e:  # noqa: BLE001 - the child must not return half-confined
        os.write(2, f"a3s-box jail {spec.name}: {e}\n".encode())
        os._exit(EXIT_JAIL_FAILED)


def _enter(spec: JailSpec, netns_fd: int | None, cgroup_procs: list[str]) -> None:
    cgroup.join(cgroup_procs)
    flags = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
    if spec.network == "inherit":
        if netns_fd is None:
            raise JailError("network: no namespace given")
        _check(_libc.setns(netns_fd, CLONE_NEWNET), "setns network")
    else:
        flags |= CLONE_NEWNET
    _check(_libc.unshare(flags), "unshare")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = spec.root
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m")
    _system(root, spec)
    for b in spec.binds:
        _bind(root, b.path, b.writable, devices=b.path.startswith("/dev/"))
    for d, mode in (("/proc", 0o555), ("/tmp", 0o1777), ("/.old", 0o700)):
        os.makedirs(root + d, exist_ok=True)
        os.chmod(root + d, mode)
    if os.getpid() == 1:  # its own PID namespace: a /proc that shows only itself (mounted
        # while the host's is still in view: a user namespace may not mount the first one)
        _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    nr = SYS_PIVOT_ROOT.get(platform.machine(), 155)
    _check(_libc.syscall(nr, root.encode(), (root + "/.old").encode()), "pivot_root")
    os.chdir("/")
    _check(_libc.umount2(b"/.old", MNT_DETACH), "umount the old root")
    os.rmdir("/.old")
    name = spec.name.encode()[:64]
    _check(_libc.sethostname(name, len(name)), "sethostname")
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # past the last capability this kernel knows
    if not spec.keep_groups:
        os.setgroups(list(spec.groups))
    os.setresgid(spec.gid, spec.gid, spec.gid)
    os.setresuid(spec.uid, spec.uid, spec.uid)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(_libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0), "pdeathsig")
    sys.stdout.flush()
