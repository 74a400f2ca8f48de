"""/.a3s/container's security context (guest/init/secctx.c), the real helper run on the
host as the guest runs it: the flags a3s_box/k8s/security.py builds from OCI specs, and
what a root process inside the container can still reach.

The container's code is the hostile side: it is root with CAP_MKNOD here (the host's
root, in the test) and tries the host's disk by number in every writable place."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from a3s_box.k8s.oci_seccomp import compile_profile
from a3s_box.k8s.security import mount_flags, process_flags

BUSYBOX = Path("/bin/busybox")


@pytest.fixture(scope="module")
def helper(guest_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    link = tmp_path_factory.mktemp("applets") / "container"
    link.symlink_to(guest_binary)
    return link


def _run(helper: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helper), *args], capture_output=True, text=True, timeout=timeout)


def _status(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_a_process_gets_its_user_groups_umask_capabilities_rlimits_and_no_new_privs(helper: Path) -> None:
    flags = process_flags({
        "user": {"uid": 1000, "gid": 1001, "umask": 0o027, "additionalGids": [5, 2000]},
        "capabilities": {"bounding": ["CAP_NET_BIND_SERVICE", "CAP_KILL"], "effective": ["CAP_NET_BIND_SERVICE"],
                         "permitted": ["CAP_NET_BIND_SERVICE"], "inheritable": ["CAP_NET_BIND_SERVICE"],
                         "ambient": ["CAP_NET_BIND_SERVICE"]},
        "noNewPrivileges": True, "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200}]})
    r = _run(helper, "-P", *flags, "--", "/bin/sh", "-c", "cat /proc/self/status; ulimit -n; ulimit -Hn")
    assert r.returncode == 0, r.stderr
    s = _status(r.stdout)
    assert (s["Uid"].split(), s["Gid"].split()) == (["1000"] * 4, ["1001"] * 4)
    assert s["Groups"].split() == ["5", "2000"] and s["Umask"] == "0027" and s["NoNewPrivs"] == "1"
    bind = 1 << 10  # CAP_NET_BIND_SERVICE, kept across exec as an ambient capability
    assert [int(s[k], 16) for k in ("CapEff", "CapPrm", "CapInh", "CapAmb")] == [bind] * 4
    assert int(s["CapBnd"], 16) == bind | 1 << 5  # and CAP_KILL in the bounding set only
    assert r.stdout.split()[-2:] == ["100", "200"]


def test_without_a_capabilities_object_a_process_gets_none(helper: Path) -> None:
    r = _run(helper, "-P", *process_flags({"user": {"uid": 0, "gid": 0}}), "--", "cat", "/proc/self/status")
    s = _status(r.stdout)
    assert s["Uid"].split()[0] == "0" and s["CapEff"] == s["CapBnd"] == "0" * 16


def test_a_seccomp_profile_is_loaded_last_and_holds(helper: Path, tmp_path: Path) -> None:
    program = tmp_path / "filter.bpf"
    program.write_bytes(compile_profile({
        "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                     {"names": ["unshare"], "action": "SCMP_ACT_ERRNO"}]}))
    for nnp in ([], ["-n"]):  # loaded before the uid switch without no_new_privs, after it with
        r = _run(helper, "-P", "-U", "1000:1000", "-C", "0:0:0:0:0", *nnp, "-S", str(program), "--",
                 "/bin/sh", "-c", f"grep Seccomp: /proc/self/status; mkdir {tmp_path}/d; unshare -U true")
        assert "Seccomp:\t2" in r.stdout
        assert "mkdir" in r.stderr and "Operation not permitted" in r.stderr
        assert not (tmp_path / "d").exists() and r.returncode != 0


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", "ls", "cat", "touch", "mknod", "head", "wc", "echo", "id", "stat"):
        (root / "bin" / applet).symlink_to("busybox")
    for d in ("tmp", "proc", "sys", "etc"):
        (root / d).mkdir()
    (root / "etc" / "secret").write_text("of this container\n")
    return root


def _host_disk() -> tuple[str, str]:
    for name in sorted(os.listdir("/sys/block")):
        if not name.startswith(("loop", "ram", "zram")):
            major, minor = (Path("/sys/block") / name / "dev").read_text().strip().split(":")
            return major, minor
    pytest.skip("no block device on this host to try")


@pytest.mark.skipif(not BUSYBOX.exists(), reason="needs busybox-static for the container's root")
def test_a_root_container_with_mknod_reaches_no_disk_and_its_mounts_hold(helper: Path, tmp_path: Path) -> None:
    root = _root(tmp_path)
    major, minor = _host_disk()
    spec = {"root": {"readonly": True}, "linux": {
        "maskedPaths": ["/proc/kcore", "/proc/keys", "/nonexistent"], "readonlyPaths": ["/proc/sys"],
        "sysctl": {"kernel.domainname": "inside.test"},
        "devices": [{"path": "/dev/fuse-like", "type": "c", "major": 1, "minor": 3, "fileMode": 0o600,
                     "uid": 0, "gid": 0}]}}
    flags = [*process_flags({"user": {"uid": 0, "gid": 0},
                             "capabilities": {k: ["CAP_MKNOD", "CAP_DAC_OVERRIDE", "CAP_SYS_ADMIN"]
                                              for k in ("bounding", "effective", "permitted")}}),
             *mount_flags(spec)]
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = (f"ls /dev; mknod /dev/disk b {major} {minor}; echo made=$?; "
              f"mknod /tmp/disk b {major} {minor} && head -c 512 /tmp/disk | wc -c; "
              "touch /written; echo root-written=$?; cat /proc/kcore | wc -c; echo x > /proc/sys/kernel/domainname; "
              "cat /proc/sys/kernel/domainname; stat -c %a:%F /dev/fuse-like")
    r = _run(helper, "-r", str(root), "-h", "box", "-b", f"{tmp}:/tmp", *flags, "--", "/bin/sh", "-c", script)
    out = r.stdout.split()
    assert sorted(out[:out.index("made=1")]) == sorted(
        ["fd", "full", "fuse-like", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty",
         "urandom", "zero"])
    assert "Read-only file system" in r.stderr  # /dev takes no new node
    assert "Permission denied" in r.stderr  # the node made on a nodev mount opens nothing
    assert "root-written=1" in out
    assert out[out.index("root-written=1") + 1] == "0"  # /proc/kcore masked
    assert "inside.test" in out and "600:character" in r.stdout
    assert not (root / "written").exists()
    assert (root / "etc" / "secret").read_text() == "of this container\n"


@pytest.mark.parametrize("flag, value", [("-U", "1000"), ("-U", "x:1"), ("-C", "ffff"), ("-l", "99:1:1"),
                                         ("-M", "proc/kcore"), ("-O", "/a/../b"), ("-y", "../x=1"),
                                         ("-y", "kernel/x=1"), ("-d", "/etc/passwd:c:1:3:666:0:0"),
                                         ("-d", "/dev/x:z:1:3:666:0:0"), ("-S", "/nonexistent"), ("-k", "9")])
def test_a_flag_it_cannot_honour_stops_the_container_before_exec(helper: Path, tmp_path: Path, flag: str,
                                                                 value: str) -> None:
    marker = tmp_path / "ran"
    r = _run(helper, "-P", flag, value, "--", "touch", str(marker))
    assert r.returncode == 2 and "a3s-box container: bad" in r.stderr
    assert not marker.exists()
