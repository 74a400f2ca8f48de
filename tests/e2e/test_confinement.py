"""Each box's VMM is confined (real VMs, looked at from the host): a uid of its own with
no capabilities, seccomp, its own mount/PID/network namespaces with only its files,
a cgroup with the box's limits; and a process in the same jail, standing in for a
VMM its guest has taken over, cannot reach the host's files, processes or network."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from a3s_box.jail.enter import enter, new_pid_namespace
from a3s_box.jail.spec import JailSpec
from tests.e2e.conftest import BoxCli, boxfile

pytestmark = pytest.mark.vm

BOXES = """project: jail
boxes:
  cold:
    image: hello
    boot: cold
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
  clone:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
"""


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def _qemu(box: BoxCli, name: str) -> int:
    rundir = box.home / "boxes" / f"jail.{name}"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd[0].endswith(b"qemu-system-x86_64") and str(rundir).encode() + b"/console.sock" in b" ".join(cmd):
                return int(entry.name)
    raise AssertionError(f"no QEMU for {name}")


def _cgroup_file(pid: int, controller: str, name: str) -> Path:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            return Path(f"/sys/fs/cgroup/{controller}") / path.lstrip("/") / name
    raise AssertionError(f"{pid} has no {controller} cgroup")


@pytest.fixture(scope="module")
def jailed(box: BoxCli, hello_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = boxfile(tmp_path_factory.mktemp("jail"), hello_image, BOXES)
    box("apply", "-f", str(f), check=True)
    return f


@pytest.mark.parametrize("name", ["cold", "clone"])
def test_the_vmm_runs_as_its_own_uid_without_capabilities_under_seccomp(box: BoxCli, jailed: Path,
                                                                         name: str) -> None:
    st = _status(_qemu(box, name))
    uids = st["Uid"].split()
    assert uids[0] != "0" and len(set(uids)) == 1, st["Uid"]
    assert st["CapEff"] == st["CapPrm"] == st["CapBnd"] == "0000000000000000"
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
    assert st["NSpid"].split()[-1] == "1"  # init of a PID namespace of its own
    other = _status(_qemu(box, "clone" if name == "cold" else "cold"))
    assert other["Uid"] != st["Uid"]  # one uid per box
    rows = {b["name"]: b for b in box("ps", "-o", "json", check=True).json()}
    assert rows[name]["security"] == "strict"


def test_the_vmm_sees_only_its_own_files_processes_and_no_network(box: BoxCli, jailed: Path) -> None:
    pid = _qemu(box, "cold")
    for ns in ("mnt", "pid", "net", "ipc", "uts"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    root = Path(f"/proc/{pid}/root")
    assert not (root / "etc/shadow").exists() and not (root / "root").exists()
    assert not (root / "home").exists() and (root / "usr/bin").is_dir()
    assert [p.name for p in (root / "proc").iterdir() if p.name.isdigit()] == ["1"]
    other = box.home / "boxes" / "jail.clone" / "disk.qcow2"
    assert not (root / str(other).lstrip("/")).exists()  # another box's disk is not there
    assert (root / str(box.home / "boxes" / "jail.cold" / "disk.qcow2").lstrip("/")).is_file()
    # the network namespace of a box without a network holds only a loopback, down
    links = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-o", "link"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(links) == 1 and "lo:" in links[0] and "state DOWN" in links[0]


def test_the_vmm_has_a_cgroup_with_the_boxs_limits(box: BoxCli, jailed: Path) -> None:
    pid = _qemu(box, "cold")
    memory = int(_cgroup_file(pid, "memory", "memory.limit_in_bytes").read_text())
    assert 256 << 20 < memory <= (256 << 20) + (512 << 20)  # the guest's RAM plus the VMM's overhead
    assert int(_cgroup_file(pid, "cpu", "cpu.cfs_quota_us").read_text()) == 120_000  # 1 vCPU + 1/5
    assert int(_cgroup_file(pid, "pids", "pids.max").read_text()) == 512
    assert "/a3s-box/jail.cold" in Path(f"/proc/{pid}/cgroup").read_text()


def test_a_process_in_the_vmms_jail_cannot_reach_the_host(box: BoxCli, jailed: Path, tmp_path: Path) -> None:
    """A stand-in for a VMM its guest took over: busybox in the very jail QEMU got."""
    launch = json.loads((box.home / "boxes" / "jail.clone" / "launch.json").read_text())
    jail = JailSpec.from_json(launch["jail"])
    jail = JailSpec(**{**jail.__dict__, "root": str(tmp_path / "root")})
    (tmp_path / "root").mkdir()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    template_disk = next(p for p in jail.binds if "/snapshots/" in p.path and p.path.endswith("disk.qcow2"))
    script = (f"cat /etc/shadow; echo shadow=$?; ls /root; echo root=$?; kill -0 {os.getpid()}; echo kill=$?; "
              f"echo x >> {template_disk.path}; echo template=$?; "
              f"nc -w 2 127.0.0.1 {port} </dev/null; echo net=$?; id -u")
    try:
        out = _in_own_pid_namespace(["/bin/busybox", "sh", "-c", script], jail)
    finally:
        server.close()
    said = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert said == {"shadow": "1", "root": "1", "kill": "1", "template": "1", "net": "1"}, out
    assert out.splitlines()[-1] == str(jail.uid)


def _in_own_pid_namespace(argv: list[str], jail: JailSpec) -> str:
    """Run ARGV as the shim runs QEMU: the first child of a process that took a new PID
    namespace, entering JAIL before exec. Its standard output."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            new_pid_namespace()
            r = subprocess.run(argv, capture_output=True, timeout=30, preexec_fn=lambda: enter(jail))
            os.write(write, r.stdout)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def test_a_vmm_over_its_memory_limit_is_stopped_and_the_other_box_runs_on(box: BoxCli, jailed: Path) -> None:
    pid = _qemu(box, "cold")
    limit = _cgroup_file(pid, "memory", "memory.limit_in_bytes")
    used = int(_cgroup_file(pid, "memory", "memory.usage_in_bytes").read_text())
    limit.write_text(str(used + (24 << 20)))  # as if the VMM itself grew past its share
    r = box("exec", "cold", "--", "sh", "-c", "dd if=/dev/zero of=/dev/shm/fill bs=1M count=200", timeout=120)
    assert r.code != 0
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    rows = {b["name"]: b for b in box("ps", "-o", "json", check=True).json()}
    assert rows["cold"]["status"] == "exited" and "SIGKILL" in rows["cold"]["detail"], rows["cold"]
    assert box("exec", "clone", "--", "true").code == 0
    box("delete", "-f", str(jailed), check=True)


NO_SECCOMP = """#!/bin/sh
# Stands in for a QEMU built without seccomp (Debian's has it): refuses -sandbox.
for a in "$@"; do
  if [ "$a" = "-sandbox" ]; then echo "qemu-system-x86_64: -sandbox: seccomp support is disabled" >&2; exit 1; fi
done
exec qemu-system-x86_64 "$@"
"""


def test_strict_refuses_a_box_the_host_cannot_confine_and_relaxed_runs_it(
        box: BoxCli, hello_image: Path, tmp_path: Path) -> None:
    qemu = tmp_path / "qemu-without-seccomp"
    qemu.write_text(NO_SECCOMP)
    qemu.chmod(0o755)
    cli = BoxCli(box.home)
    cli.env["A3S_BOX_QEMU"] = str(qemu)
    body = """project: lax
boxes:
  s:
    image: hello
    boot: cold
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
"""
    f = boxfile(tmp_path, hello_image, body)
    r = cli("apply", "-f", str(f))
    assert r.code != 0 and "box lax.s: security: strict, but this host cannot confine its VMM (seccomp: " \
        "QEMU has no seccomp sandbox: qemu-system-x86_64: -sandbox: seccomp support is disabled)" in r.err, r.err
    assert "after 1 attempts" not in r.err and "(after" not in r.err  # refused at once, not retried
    r = cli("doctor")
    assert "✗ confinement  boxes with security: strict (the default) are refused here, for want of seccomp" in r.out
    f = boxfile(tmp_path, hello_image, body.replace("boot: cold", "boot: cold\n    security: relaxed"))
    cli("apply", "-f", str(f), check=True)
    rows = {b["name"]: b for b in cli("ps", "-o", "json", check=True).json()}
    assert rows["s"]["security"] == "relaxed: no seccomp"
    pid = next(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
               and _is_qemu_of(p, box.home / "boxes" / "lax.s"))
    st = _status(pid)
    assert st["Seccomp"] == "0" and st["Uid"].split()[0] != "0"  # the rest of the jail still holds
    assert cli("exec", "s", "--", "true").code == 0
    cli("delete", "-f", str(f), check=True)


def _is_qemu_of(proc: Path, rundir: Path) -> bool:
    try:
        cmd = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    return b"qemu-system" in cmd.split(b"\0")[0] + cmd and b"-sandbox" not in cmd \
        and str(rundir).encode() + b"/console.sock" in cmd and not cmd.startswith(b"/bin/sh")
