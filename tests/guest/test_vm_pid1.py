"""The guest init as PID 1 in a real microVM (QEMU TCG): modules, root switch,
virtio-serial channel, namespaces with cgroup limits, nsexec, power-off.

One boot for the whole module (~2 s under TCG). The kernel is Debian's cloud kernel,
fetched with apt-get the first time into the test cache; the initramfs and root disk
are built here from the init binary and busybox-static. Nothing is faked.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from a3s_box.guest.client import GuestClient
from a3s_box.guest.protocol import BoxConfig, ExitKind, Isolate, Namespace

pytestmark = pytest.mark.vm

MODULES = ("virtio_ring", "virtio", "virtio_mmio", "virtio_console", "virtio_blk")


def _cache_dir() -> Path:
    base = os.environ.get("A3S_BOX_TEST_HOME") or str(Path.home() / ".cache" / "a3s-box-test")
    return Path(base) / "cache" / "guest-test-kernel"


def _fetch_kernel(dest: Path) -> None:
    dep = subprocess.run(["apt-cache", "depends", "linux-image-cloud-amd64"],
                         capture_output=True, text=True, check=True).stdout
    name = next(w for line in dep.splitlines() for w in line.split()[1:]
                if w.startswith("linux-image-") and w[12:13].isdigit())
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    subprocess.run(["apt-get", "download", "-q", name], cwd=tmp, check=True, capture_output=True)
    deb = next(tmp.glob("*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "x")], check=True)
    deb.unlink()
    tmp.rename(dest)


@pytest.fixture(scope="module")
def kernel() -> Path:
    """The extracted kernel package (boot/vmlinuz-*, lib/modules/*)."""
    dest = _cache_dir()
    if not dest.is_dir():
        if shutil.which("qemu-system-x86_64") is None or shutil.which("apt-get") is None:
            pytest.skip("needs qemu-system-x86 and apt-get")
        try:
            _fetch_kernel(dest)
        except (subprocess.CalledProcessError, StopIteration, OSError) as e:
            pytest.skip(f"cannot fetch Debian's cloud kernel: {e}")
    return dest / "x"


def _initramfs(kernel: Path, init: Path, out: Path) -> Path:
    stage = out / "initramfs"
    mods = stage / "a3s" / "modules"
    mods.mkdir(parents=True)
    shutil.copy(init, stage / "init")
    for m in MODULES:
        shutil.copy(next(kernel.glob(f"lib/modules/*/kernel/drivers/**/{m}.ko")), mods)
    (mods / "load").write_text("".join(f"{m}.ko\n" for m in MODULES))
    cpio = out / "initrd.cpio"
    files = subprocess.run(["find", "."], cwd=stage, capture_output=True, check=True).stdout
    with open(cpio, "wb") as f:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=stage, input=files,
                       stdout=f, check=True)
    return cpio


def _root_disk(out: Path) -> Path:
    root = out / "root"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for a in applets:
        if not (root / "bin" / a).exists():
            (root / "bin" / a).symlink_to("busybox")
    disk = out / "disk.img"
    subprocess.run(["mkfs.ext4", "-q", "-d", str(root), str(disk), "64M"], check=True,
                   capture_output=True)
    return disk


def _tsc_khz() -> str:
    """The host's TSC rate for `tsc_early_khz=`: under a loaded TCG host the guest's own
    PIT calibration fails about half the time and the kernel then hangs before init."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return f" tsc_early_khz={int(float(line.split(':')[1]) * 1000)}"
    return ""


@dataclass
class Vm:
    proc: subprocess.Popen[bytes]
    client: GuestClient
    console: Path
    client_path: str


@pytest.fixture(scope="module")
def images(kernel: Path, guest_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in ("qemu-system-x86_64", "mkfs.ext4", "cpio"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    out = tmp_path_factory.mktemp("vm")
    _initramfs(kernel, guest_binary, out)
    _root_disk(out)
    return out


def _qemu(kernel: Path, images: Path, console: Path, append: str) -> list[str]:
    vmlinuz = next(kernel.glob("boot/vmlinuz-*"))
    return ["qemu-system-x86_64", "-accel", "tcg", "-M", "microvm,x-option-roms=off,rtc=on",
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-m", "256",
            "-kernel", str(vmlinuz), "-initrd", str(images / "initrd.cpio"),
            "-append", "console=ttyS0 reboot=t panic=-1 quiet " + append + _tsc_khz(),
            "-serial", f"file:{console}"]


def test_channel_none_powers_off_at_once(kernel: Path, images: Path, tmp_path: Path) -> None:
    """What the drivers' probes boot: no root disk, no channel."""
    console = tmp_path / "console.log"
    proc = subprocess.run(_qemu(kernel, images, console, "a3s.root=none a3s.channel=none"),
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    log = console.read_text(errors="replace")
    assert "a3s-init: channel none: powering off" in log and "reboot: Power down" in log


@pytest.fixture(scope="module")
def vm(kernel: Path, images: Path) -> Iterator[Vm]:
    out = images
    disk = out / "disk.img"
    sock_path, console = out / "a3s.sock", out / "console.log"
    proc = subprocess.Popen(_qemu(kernel, images, console, "a3s.debug=1") + [
        "-device", "virtio-serial-device",
        "-chardev", f"socket,id=a3s,path={sock_path},server=on,wait=off",
        "-device", "virtserialport,chardev=a3s,name=a3s.0",
        "-drive", f"id=root,file={disk},format=raw,if=none",
        "-device", "virtio-blk-device,drive=root",
    ], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sock = socket.socket(socket.AF_UNIX)
    for _ in range(300):  # QEMU creates the socket a moment after it starts
        try:
            sock.connect(str(sock_path))
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"qemu exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.05)
    client = GuestClient(sock, "vmtest")
    v = Vm(proc, client, console, str(sock_path))
    try:
        yield v
    finally:
        v.client.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()


CONFIG = BoxConfig(hostname="vmbox", env=("GREETING=hi",), argv=("sleep", "100000"),
                   workdir="/tmp", business_isolate=Isolate.MOUNT | Isolate.PID | Isolate.IPC,
                   memory_max=96 << 20, pids_max=24, business_memory_max=64 << 20, business_pids_max=20)


def test_boots_to_ready_and_answers(vm: Vm) -> None:
    info = vm.client.hello(120)
    assert info["transport"] == "virtio-serial"
    assert info["kernel"].endswith("-cloud-amd64")
    log = vm.console.read_text(errors="replace")
    assert log.count("a3s-init: ready\n") == 1
    assert "Kernel panic" not in log


def test_configure_starts_the_agent(vm: Vm) -> None:
    vm.client.configure(CONFIG, 30)
    st = vm.client.status()
    assert st.agent_state == "running"


def test_root_switched_and_mounted(vm: Vm) -> None:
    mounts = vm.client.run(["cat", "/proc/mounts"], ns=Namespace.ROOT).stdout.decode()
    for line in ("/dev/vda / ext4 rw", "/.a3s tmpfs", "/dev/pts devpts", "/tmp tmpfs",
                 "/sys/fs/cgroup cgroup2", "/proc proc", "/sys sysfs", "/dev devtmpfs"):
        dev_or_point = line.split()[0]
        assert any(dev_or_point in m and all(w in m for w in line.split()) for m in
                   mounts.splitlines()), line
    # the initramfs is gone: its module folder was deleted before the switch
    assert vm.client.run(["ls", "/a3s"], ns=Namespace.ROOT).exit.code != 0
    assert vm.client.run(["hostname"], ns=Namespace.ROOT).stdout == b"vmbox\n"


def test_agent_and_business_namespaces_with_cgroups(vm: Vm) -> None:
    r = vm.client.run(["sh", "-c", "echo $GREETING; pwd; cat /proc/self/cgroup"])
    assert r.stdout == b"hi\n/tmp\n0::/a3s/agent/main\n"
    r = vm.client.run(["cat", "/proc/self/cgroup"], ns=Namespace.BUSINESS)
    assert r.stdout == b"0::/a3s/agent/business\n"
    r = vm.client.run(["cat", "/sys/fs/cgroup/a3s/agent/memory.max",
                       "/sys/fs/cgroup/a3s/agent/pids.max"], ns=Namespace.ROOT)
    assert r.stdout == f"{96 << 20}\n24\n".encode()
    # business code has limits of its own, below the agent's
    r = vm.client.run(["cat", "/sys/fs/cgroup/a3s/agent/business/memory.max",
                       "/sys/fs/cgroup/a3s/agent/business/pids.max"], ns=Namespace.ROOT)
    assert r.stdout == f"{64 << 20}\n20\n".encode()


def test_pids_limit_holds_in_business(vm: Vm) -> None:
    r = vm.client.run(["sh", "-c", "i=0; while [ $i -lt 40 ]; do sleep 4242 & i=$((i+1)); done"],
                      ns=Namespace.BUSINESS, timeout=60)
    assert b"can't fork" in r.stderr  # forks past business's pids.max (20) failed
    # business code is full now (its own limit), the agent's namespaces are not
    n = vm.client.run(["cat", "/sys/fs/cgroup/a3s/agent/business/pids.current"], ns=Namespace.ROOT)
    assert 19 <= int(n.stdout) <= 20  # full, less the shell that gave up
    assert vm.client.run(["true"], ns=Namespace.AGENT).exit.code == 0  # the agent can still fork
    # (busybox here has no pkill)
    vm.client.run(["sh", "-c", "for d in /proc/[0-9]*; do case \"$(tr '\\0' ' ' < $d/cmdline)\" in "
                   "'sleep 4242 ') kill -9 ${d#/proc/};; esac; done"], ns=Namespace.ROOT)
    assert vm.client.status().agent_state == "running"


def test_nsexec_inside_the_vm(vm: Vm) -> None:
    biz = vm.client.run(["readlink", "/proc/self/ns/pid"], ns=Namespace.BUSINESS).stdout
    r = vm.client.run(["sh", "-c", "nsexec -- readlink /proc/self/ns/pid; nsexec -- sh -c 'exit 9';"
                       " echo rc=$?"])
    assert r.stdout == biz + b"rc=9\n", r


def test_missing_command_in_the_image(vm: Vm) -> None:
    r = vm.client.run(["python3", "-V"])
    assert (r.exit.kind, r.exit.value) == (ExitKind.NOT_STARTED, 2)
    assert "python3: No such file or directory" in r.exit.message


def test_memory_limit_holds_in_the_agent(vm: Vm) -> None:
    # dd fills a 160 MiB buffer: past memory.max (96 MiB) the kernel OOM-kills it
    r = vm.client.run(["dd", "if=/dev/zero", "of=/dev/null", "bs=160M", "count=1"], timeout=60)
    assert (r.exit.kind, r.exit.value) == (ExitKind.SIGNALED, 9), r
    r = vm.client.run(["dd", "if=/dev/zero", "of=/dev/null", "bs=16M", "count=1"], timeout=60)
    assert r.exit.code == 0, r


def test_a_new_connection_finds_the_box_as_it_was(vm: Vm) -> None:
    vm.client.close()  # the shim's connection going away and coming back
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(vm.client_path)
    vm.client = GuestClient(sock, "vmtest")
    assert vm.client.hello(30)["hostname"] == "vmbox"
    st = vm.client.status()
    assert st.agent_state == "running" and st.restarts == 0


def test_shutdown_powers_the_vm_off(vm: Vm) -> None:
    vm.client.shutdown()
    assert vm.proc.wait(60) == 0
    log = vm.console.read_text(errors="replace")
    assert "a3s-init: shutting down" in log and "reboot: Power down" in log
