"""What host processes write on a guest's behalf, attacked with the guest's requests:
the seccomp filter virtiofsd runs under (a forked child here, making the calls
virtiofsd would make for `mknod` and `chmod 4755` in a bind), and `box cp`'s tar
extractor fed a guest's tar with setuid files, setgid folders and device nodes. The
same attacks through a real VM and virtiofsd are in tests/e2e/test_volumes.py."""
from __future__ import annotations

import io
from collections.abc import Callable
import os
import stat
import tarfile
from pathlib import Path

import pytest

from a3s_box.files.tarstream import extract_tar
from a3s_box import seccomp
from a3s_box.jail import fsguard


def _in_child(body: Callable[[], dict[str, object]]) -> dict[str, object]:
    """BODY run in a forked child (where a seccomp filter can be installed without
    touching the test process); what it returned, through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(r)
        out: dict[str, object] = {}
        try:
            out = body()
        finally:
            os.write(w, repr(out).encode())
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    result: dict[str, object] = eval(data.decode())  # noqa: S307 - our own child's repr of a dict of str/int
    return result


def _attempts(calls: dict[str, Callable[[], object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, fn in calls.items():
        try:
            fn()
            out[name] = "ok"
        except OSError as e:
            out[name] = e.errno
    return out


def _in_guarded_child(folder: Path) -> dict[str, object]:
    d = str(folder)

    def body() -> dict[str, object]:
        fsguard.install()
        return _attempts({
            "create": lambda: os.close(os.open(f"{d}/plain", os.O_CREAT | os.O_WRONLY, 0o755)),
            "create setuid": lambda: os.close(os.open(f"{d}/s", os.O_CREAT | os.O_WRONLY, 0o4755)),
            "O_TMPFILE setgid": lambda: os.close(os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o2755)),
            "chmod setuid": lambda: os.chmod(f"{d}/plain", 0o4755),
            "chmod setgid": lambda: os.chmod(f"{d}/plain", 0o2711),
            "chmod 0700": lambda: os.chmod(f"{d}/plain", 0o700),
            "mkdir setgid": lambda: os.mkdir(f"{d}/sg", 0o2755),
            "mkdir": lambda: os.mkdir(f"{d}/dir", 0o755),
            "mknod block": lambda: os.mknod(f"{d}/blk", 0o600 | stat.S_IFBLK, os.makedev(8, 0)),
            "mknod char": lambda: os.mknod(f"{d}/chr", 0o600 | stat.S_IFCHR, os.makedev(1, 3)),
            "mknod fifo": lambda: os.mknod(f"{d}/fifo", 0o600 | stat.S_IFIFO),
        })
    return _in_child(body)


def test_the_file_server_filter_refuses_devices_and_setuid_bits(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("device nodes are only refused to root by the filter; others cannot make them anyway")
    got = _in_guarded_child(tmp_path)
    EPERM = 1
    assert got == {"create": "ok", "create setuid": EPERM, "O_TMPFILE setgid": EPERM, "chmod setuid": EPERM,
                   "chmod setgid": EPERM, "chmod 0700": "ok", "mkdir setgid": EPERM, "mkdir": "ok",
                   "mknod block": EPERM, "mknod char": EPERM, "mknod fifo": "ok"}
    for p in tmp_path.iterdir():
        st = p.lstat()
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID) and not stat.S_ISBLK(st.st_mode)


def test_box_cp_extracts_no_setuid_setgid_or_device_from_a_guests_tar(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, kind, mode in (("out", tarfile.DIRTYPE, 0o2755), ("out/suid", tarfile.REGTYPE, 0o6755),
                                 ("out/tmp", tarfile.DIRTYPE, 0o1777), ("out/blk", tarfile.BLKTYPE, 0o600),
                                 ("out/chr", tarfile.CHRTYPE, 0o600)):
            info = tarfile.TarInfo(name)
            info.type, info.mode = kind, mode
            t.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    buf.seek(0)
    extract_tar(buf, tmp_path)
    assert stat.S_IMODE((tmp_path / "out" / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "tmp").stat().st_mode) == 0o1777  # sticky kept
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["suid", "tmp"]


def test_the_filter_is_made_for_each_supported_machine() -> None:
    for machine in ("x86_64", "aarch64"):
        ops = fsguard.program(machine)
        assert 10 < len(ops) < 255 and all(len(op) == 8 for op in ops)  # BPF jumps are 8-bit


def test_the_egress_helpers_denylist_refuses_what_a_proxy_never_does() -> None:
    """In a forked child standing in for the helper after it dropped root: sockets and
    forks still work; mounts, new namespaces (unshare and clone flags) and ptrace fail."""
    import ctypes
    import socket as socket_

    def body() -> dict[str, object]:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(38, 1, 0, 0, 0)  # no_new_privs, as the helper has
        seccomp.install_denylist()

        def ok(v: int) -> None:
            if v != 0:
                raise OSError(ctypes.get_errno(), "refused")

        def fork() -> None:
            child = os.fork()
            if child == 0:
                os._exit(0)
            ok(os.waitpid(child, 0)[1])
        x86 = os.uname().machine == "x86_64"
        return _attempts({
            "socket": lambda: socket_.socket().close(),
            "fork": fork,
            "mount": lambda: ok(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
            "unshare": lambda: ok(libc.unshare(0x10000000)),
            "clone newuser": (lambda: ok(libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0))) if x86
            else (lambda: ok(libc.unshare(0x10000000))),
            "ptrace": lambda: ok(libc.ptrace(16, os.getppid(), 0, 0)),
        })
    got = _in_child(body)
    assert got == {"socket": "ok", "fork": "ok", "mount": 1, "unshare": 1, "clone newuser": 1, "ptrace": 1}, got
    assert len(seccomp.denylist_program("aarch64")) < 255
