"""QemuDriver end to end: real QEMU (TCG here), Debian's kernel, the C guest init, the shim.

One booted box is shared by the tests that only use it; the tests that end a VM
(stop, kill -9) or must not boot (timeout, Ctrl-C) get their own. Nothing is faked:
the "guest that never answers" is a real initramfs whose /init just sleeps.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from a3s_box.drivers import get_driver
from a3s_box.drivers.common.artifacts import GuestArtifacts
from a3s_box.drivers.base import BoxLaunch, VmHandle, VmState
from a3s_box.drivers.common.cpio import Entry, gzip_newc
from a3s_box.drivers.qemu.driver import QemuDriver
from a3s_box.errors import DriverError, GuestError
from a3s_box.guest.client import GuestClient
from a3s_box.guest.protocol import BoxConfig, ExecRequest, Namespace
from a3s_box.home import Home
from tests.drivers.drivers_support import overlay, processes_mentioning

pytestmark = pytest.mark.vm

BOOT_TIMEOUT = 60.0  # generous: TCG on a busy 2-core host
CONFIG = BoxConfig(hostname="coder", argv=("/bin/sleep", "1000000"), env=("ROLE=agent",))


def _launch(tmp: Path, base_disk: Path, box_id: str) -> BoxLaunch:
    rundir = tmp / box_id
    rundir.mkdir()
    return BoxLaunch(box_id=box_id, rundir=rundir, vcpus=1, memory_mib=192, config=CONFIG,
                     disk=overlay(base_disk, rundir / "disk.qcow2"))


def _wait_until(pred: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    """Poll a condition the VM reaches asynchronously (a deadline, not an assertion)."""
    end = time.monotonic() + limit
    while not pred():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def driver(test_home: Home, artifacts: GuestArtifacts) -> QemuDriver:
    d = get_driver("qemu", test_home)
    assert isinstance(d, QemuDriver)
    return d


@pytest.fixture(scope="module")
def box(driver: QemuDriver, base_disk: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmHandle]:
    launch = _launch(tmp_path_factory.mktemp("box"), base_disk, "proj.shared")
    handle = driver.start(launch, BOOT_TIMEOUT)
    try:
        yield handle
    finally:
        driver.stop(handle, 10.0)


def _client(driver: QemuDriver, h: VmHandle) -> GuestClient:
    c = GuestClient(driver.connect(h, 5.0), box=h.box_id)
    c.hello(10.0)
    return c


def test_host_support_names_an_accelerator(driver: QemuDriver) -> None:
    s = driver.host_support()
    assert s.usable and s.accel in ("kvm", "tcg")
    if s.accel == "tcg" and Path("/dev/kvm").exists():
        assert "cannot run a standard guest" in s.detail


def test_guest_runs_its_own_kernel(driver: QemuDriver, box: VmHandle,
                                   artifacts: GuestArtifacts) -> None:
    assert driver.observe(box).state is VmState.RUNNING
    with _client(driver, box) as c:
        r = c.run(["uname", "-r"], ns=Namespace.ROOT, timeout=30)
        hostname = c.run(["hostname"], timeout=30)
        status = c.status(10)
    assert r.exit.code == 0
    assert r.stdout.decode().strip() == artifacts.kernel_release != os.uname().release
    assert hostname.stdout.decode().strip() == "coder"  # CONFIG reached the guest
    assert status.agent_state == "running"


def test_two_clients_at_once_each_see_only_their_own(driver: QemuDriver, box: VmHandle) -> None:
    a, b = _client(driver, box), _client(driver, box)
    results: dict[str, bytes] = {}

    def work(name: str, c: GuestClient) -> None:
        # the same stream ids on both connections: the shim must keep them apart
        outs = [c.run(["sh", "-c", f"for i in 1 2 3; do echo {name}$i; done"],
                      ns=Namespace.ROOT, timeout=30) for _ in range(3)]
        results[name] = b"".join(o.stdout for o in outs)

    try:
        threads = [threading.Thread(target=work, args=(n, c)) for n, c in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        a.close()
        b.close()
    assert results == {"a": b"a1\na2\na3\n" * 3, "b": b"b1\nb2\nb3\n" * 3}


def test_a_departing_client_takes_its_sessions_along(driver: QemuDriver, box: VmHandle) -> None:
    a = _client(driver, box)
    s = a.start(ExecRequest(argv=("sh", "-c", "echo $$ > /tmp/sleeper.pid; exec sleep 100000"),
                            ns=Namespace.ROOT))
    with _client(driver, box) as b:
        _wait_until(lambda: b.run(["test", "-s", "/tmp/sleeper.pid"], ns=Namespace.ROOT)
                    .exit.code == 0, "the sleeper to start")
        pid = b.run(["cat", "/tmp/sleeper.pid"], ns=Namespace.ROOT).stdout.decode().strip()
        assert b.run(["kill", "-0", pid], ns=Namespace.ROOT).exit.code == 0
        a.close()  # a crashing client: the shim must kill what it started, and live on
        _wait_until(lambda: b.run(["kill", "-0", pid], ns=Namespace.ROOT).exit.code != 0,
                    "the orphaned session to be killed")
        assert b.ping() >= 0
    assert s.stream > 0


def test_console_log_is_kept(box: VmHandle) -> None:
    text = Path(box.console_log).read_text(errors="replace")
    assert "a3s-init: ready" in text


def test_a_client_speaking_garbage_is_dropped_and_the_shim_lives_on(
        driver: QemuDriver, box: VmHandle) -> None:
    raw = driver.connect(box, 5.0)
    raw.settimeout(10.0)
    raw.sendall(b"GET / HTTP/1.1\r\n\r\n" * 4)
    assert raw.recv(100) == b""  # the shim hung up on it
    raw.close()
    with _client(driver, box) as c:
        assert c.run(["echo", "still here"], ns=Namespace.ROOT).stdout == b"still here\n"


def test_the_shim_says_which_protocol_it_speaks(box: VmHandle) -> None:
    from a3s_box.drivers.common.supervision import SUPERVISOR_PROTOCOL, read_supervisor_record
    assert read_supervisor_record(Path(box.extra["rundir"])).protocol == SUPERVISOR_PROTOCOL


def test_stop_shuts_down_cleanly_and_is_idempotent(driver: QemuDriver, box: VmHandle) -> None:
    # ends the shared box: keep this the last test that uses `box`
    rundir = Path(box.extra["rundir"])
    driver.stop(box, 10.0)
    obs = driver.observe(box)
    assert obs.state is VmState.EXITED and obs.exit_reason == "the guest powered off"
    assert sorted(p.name for p in rundir.iterdir()) == ["activity", "console.log", "disk.qcow2",
                                                        "exit.json", "shim.log"]
    assert processes_mentioning(str(rundir)) == []
    driver.stop(box, 10.0)  # again: nothing to do, no error
    with pytest.raises(GuestError, match="proj.shared: cannot reach the guest"):
        driver.connect(box, 1.0)


def test_qemu_killed_from_outside_is_observed(driver: QemuDriver, base_disk: Path,
                                              tmp_path: Path) -> None:
    h = driver.start(_launch(tmp_path, base_disk, "proj.victim"), BOOT_TIMEOUT)
    try:
        qemu = [p for p in processes_mentioning(str(tmp_path / "proj.victim" / "console.sock"))
                if Path(f"/proc/{p}/exe").resolve().name.startswith("qemu-system")]
        assert len(qemu) == 1
        os.kill(qemu[0], signal.SIGKILL)
        _wait_until(lambda: driver.observe(h).state is VmState.EXITED, "the shim to notice")
        assert driver.observe(h).exit_reason == "qemu was killed by SIGKILL"
        assert not Path(h.channel).exists()
    finally:
        driver.stop(h, 5.0)
    assert driver.observe(h).state is VmState.EXITED


# --- guests that never answer -------------------------------------------------------


@pytest.fixture(scope="module")
def silent_driver(test_home: Home, artifacts: GuestArtifacts,
                  tmp_path_factory: pytest.TempPathFactory) -> QemuDriver:
    """The real kernel with an initramfs whose /init never opens the channel."""
    script = b"#!/bin/busybox sh\necho silent-guest-up\nexec /bin/busybox sleep 100000\n"
    entries = [Entry.dir("bin"), Entry.file("bin/busybox", Path("/bin/busybox").read_bytes(),
                                            0o755), Entry.file("init", script, 0o755)]
    initramfs = tmp_path_factory.mktemp("silent") / "silent.cpio.gz"
    initramfs.write_bytes(gzip_newc(entries))
    return QemuDriver(test_home, artifacts=replace(artifacts, initramfs=initramfs))


def test_a_guest_that_never_answers_times_out_and_leaves_nothing(
        silent_driver: QemuDriver, tmp_path: Path) -> None:
    rundir = tmp_path / "proj.mute"
    launch = BoxLaunch("proj.mute", rundir, 1, 128, CONFIG)
    with pytest.raises(GuestError) as err:
        silent_driver.start(launch, timeout=3.0)
    msg = str(err.value)
    assert msg.startswith("box proj.mute: the guest init did not answer in time")
    assert processes_mentioning(str(rundir)) == []
    assert not any(p.suffix == ".sock" for p in rundir.iterdir())
    assert not (rundir / "shim.pid").exists()


def test_a_vm_that_dies_during_boot_is_reported_with_its_console(
        driver: QemuDriver, tmp_path: Path) -> None:
    rundir = tmp_path / "proj.nodisk"
    rundir.mkdir()
    blank = rundir / "blank.qcow2"  # no filesystem: the init cannot mount its root
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "16M"], check=True)
    with pytest.raises(DriverError) as err:
        driver.start(BoxLaunch("proj.nodisk", rundir, 1, 128, CONFIG, disk=blank), BOOT_TIMEOUT)
    msg = str(err.value)
    assert msg.startswith("box proj.nodisk: VM stopped before the guest answered: "
                          "the guest powered off")
    assert "cannot mount the root disk" in msg  # the console tail says why
    assert processes_mentioning(str(rundir)) == []


CTRL_C_SCRIPT = """
import signal, sys
# as in a terminal: a background job (`cmd &`) would otherwise inherit SIGINT ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
from pathlib import Path
from dataclasses import replace
from a3s_box.drivers.common.artifacts import ensure_guest_artifacts
from a3s_box.drivers.base import BoxLaunch
from a3s_box.drivers.qemu.driver import QemuDriver
from a3s_box.guest.protocol import BoxConfig
from a3s_box.home import Home
home = Home(Path(sys.argv[1]))
art = replace(ensure_guest_artifacts(home), initramfs=Path(sys.argv[2]))
try:
    QemuDriver(home, artifacts=art).start(
        BoxLaunch("proj.ctrlc", Path(sys.argv[3]), 1, 128, BoxConfig(hostname="x")), 120.0)
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_ctrl_c_during_start_leaves_nothing_behind(silent_driver: QemuDriver, test_home: Home,
                                                   tmp_path: Path) -> None:
    rundir = tmp_path / "proj.ctrlc"
    assert silent_driver.artifacts is not None
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT, str(test_home.root),
                             str(silent_driver.artifacts.initramfs), str(rundir)])
    try:
        # wait until QEMU is really running for this box, then press Ctrl-C
        _wait_until(lambda: (rundir / "console.log").exists()
                    and b"silent-guest-up" in (rundir / "console.log").read_bytes(),
                    "the guest to boot", limit=BOOT_TIMEOUT)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in processes_mentioning(str(rundir)):  # never leave a VM behind a failure
            os.kill(pid, signal.SIGKILL)
    assert processes_mentioning(str(rundir)) == []
    assert not any(p.suffix == ".sock" for p in rundir.iterdir())


POD_IP, CALICO_GW, HOST_SIDE_IP = "10.213.81.5", "169.254.1.1", "10.213.82.1"


@pytest.fixture
def calico_pod_netns() -> Iterator[str]:
    """A pod's network namespace shaped as Calico's CNI plugin leaves one (made here: no
    Calico on this host): eth0 with a /32 address and a default route via 169.254.1.1,
    which is on no subnet and answered by proxy ARP on the host's side of the veth; the
    host routes the pod's /32 to that veth. HOST_SIDE_IP stands for a node address."""
    tag = os.getpid() % 100000
    name, host_if = f"a3s-calico-{tag}", f"a3scal{tag}"
    setup = (f"ip netns add {name}; ip link add {host_if} type veth peer name eth0 netns {name}; "
             f"ip link set {host_if} up; echo 1 > /proc/sys/net/ipv4/conf/{host_if}/proxy_arp; "
             f"ip route add {POD_IP}/32 dev {host_if}; ip addr add {HOST_SIDE_IP}/32 dev lo; "
             f"ip route get {CALICO_GW} >/dev/null 2>&1 || ip route add {CALICO_GW}/32 dev lo; "
             f"ip -n {name} addr add {POD_IP}/32 dev eth0; ip -n {name} link set eth0 up; "
             f"ip -n {name} route add {CALICO_GW} dev eth0 scope link; "
             f"ip -n {name} route add default via {CALICO_GW} dev eth0")
    subprocess.run(["sh", "-ec", setup], check=True)
    try:
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["sh", "-c", f"ip netns del {name}; ip link del {host_if}; "
                        f"ip addr del {HOST_SIDE_IP}/32 dev lo; ip route del {CALICO_GW}/32 dev lo"],
                       capture_output=True)


def test_a_pod_with_a_32_address_and_a_gateway_off_its_subnet_is_routed(
        driver: QemuDriver, base_disk: Path, tmp_path: Path, calico_pod_netns: str) -> None:
    """Calico's shape: the guest takes the /32 and reaches its gateway on the link (a host
    route first, then the default route), so the node reaches the pod and back."""
    launch = replace(_launch(tmp_path, base_disk, "proj.calico"), pod_network=calico_pod_netns)
    handle = driver.start(launch, BOOT_TIMEOUT)
    try:
        with _client(driver, handle) as c:
            routes = c.run(["ip", "-4", "route"], ns=Namespace.ROOT, timeout=30).stdout.decode()
            assert f"default via {CALICO_GW} dev eth0" in routes, routes
            assert f"{CALICO_GW} dev eth0" in routes, routes
            with socket.create_server((HOST_SIDE_IP, 0)) as server:  # pod -> node, through the gateway
                server.settimeout(60)
                port = server.getsockname()[1]
                got: list[tuple[bytes, str]] = []

                def serve() -> None:
                    conn, peer = server.accept()
                    with conn:
                        conn.settimeout(30)
                        got.append((conn.recv(100), peer[0]))
                reader = threading.Thread(target=serve)
                reader.start()
                r = c.run(["sh", "-c", f"echo from-pod | nc {HOST_SIDE_IP} {port}"], ns=Namespace.ROOT, timeout=60)
                reader.join(60)
            assert got == [(b"from-pod\n", POD_IP)], (r.stdout, r.stderr)
    finally:
        driver.stop(handle, 10.0)


def test_a_routed_pod_with_a_32_address_answers_through_the_gateway_off_its_subnet(
        driver: QemuDriver, base_disk: Path, tmp_path: Path, calico_pod_netns: str) -> None:
    """The routed mode (a pod held to an allow-list) in Calico's shape: the node reaches a
    server in the guest at the pod's IP (routed on to the tap), and the guest's answers
    leave through its gateway off the subnet (ARP answered on the tap, forwarded out as
    replies of a connection that came in). What the guest starts itself goes to the
    egress proxy, tested with the proxy in tests/e2e/test_cri.py."""
    launch = replace(_launch(tmp_path, base_disk, "proj.calrt"), pod_network=calico_pod_netns, pod_egress=True)
    handle = driver.start(launch, BOOT_TIMEOUT)
    try:
        with _client(driver, handle) as c:
            routes = c.run(["ip", "-4", "route"], ns=Namespace.ROOT, timeout=30).stdout.decode()
            assert f"default via {CALICO_GW} dev eth0" in routes, routes
            server = c.start(ExecRequest(argv=("sh", "-c", "echo from-routed-pod | nc -l -p 7777"), ns=Namespace.ROOT))
            got = b""
            deadline = time.monotonic() + 60
            while not got and time.monotonic() < deadline:  # until the guest's nc listens
                try:
                    with socket.create_connection((POD_IP, 7777), timeout=10) as conn:
                        got = conn.recv(100)
                except OSError:
                    time.sleep(0.5)
            assert got == b"from-routed-pod\n"
            server.wait(30)
    finally:
        driver.stop(handle, 10.0)
