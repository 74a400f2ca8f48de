"""Kubernetes benchmark through containerd's CRI plugin (Debian's containerd, a private
socket and root): pod sandbox create -> first ExecSync in a container of it, with the
runtime handler `a3sbox` as a ratio to `runc` in the same run, on the node's network
and on a CNI pod network (Debian's bridge and host-local plugins), also held to an
allow-list by annotation, each pod VM a clone of a snapshot template (made in a warm-up
round that is not counted), and against the same pod booted cold (`a3s.dev/boot: cold`); and what an idle pod
VM costs the node (Pss of its shim, QEMU and virtiofsd), the figure the RuntimeClass
declares as overhead.podFixed.

    python3 bench/k8s.py [--rounds 3]

Uses the tests' containerd helpers and CRI client (tests/e2e/containerd_host.py,
tests/k8s/cri) as a kubelet stand-in: no kubelet can run here.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from scratch import ROOT, SHARED, Scratch

sys.path.insert(0, str(ROOT))
from tests.e2e.containerd_host import containerd, import_image  # noqa: E402
from tests.k8s.cri.client import CriClient, pb  # noqa: E402

IMAGE = "docker.io/library/hello:1"


CNI_BIN = Path("/usr/lib/cni")
BRIDGE = "a3sbench0"
CONFLIST = {"cniVersion": "1.0.0", "name": "a3s-bench", "plugins": [
    {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.213.80.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}


def _config(tmp: Path) -> str:
    runtimes = "".join(f'  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}]\n'
                       f'    runtime_type = "io.containerd.{kind}.v2"\n    pod_annotations = ["a3s.dev/*"]\n'
                       for name, kind in (("runc", "runc"), ("a3sbox", "a3sbox")))
    # restrict_oom_score_adj: the CRI plugin gives sandboxes -998, and root here lacks
    # CAP_SYS_RESOURCE (bit 24 of CapEff), so runc could not lower the score; keep containerd's
    return (f'[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "{IMAGE}"\n  restrict_oom_score_adj = true\n'
            f'  [plugins."io.containerd.grpc.v1.cri".cni]\n    bin_dir = "{CNI_BIN}"\n    conf_dir = "{tmp}/cni"\n'
            + runtimes)


# a pod held to an allow-list: its VM routed through its namespace to the egress proxy
FENCED = {"a3s.dev/network": "mode: allowlist\negress: [api.example.com]\n"}
COLD = {"a3s.dev/boot": "cold"}


def _pod(name: str, logs: Path, cni: bool, fenced: bool = False, cold: bool = False) -> Any:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="bench"),
        annotations={**(FENCED if fenced else {}), **(COLD if cold else {})}, log_directory=str(logs), linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.POD if cni else pb.NODE))))


def _first_exec(cri: CriClient, handler: str, name: str, logs: Path, cni: bool = False,
                fenced: bool = False, cold: bool = False) -> tuple[float, str]:
    """Seconds from RunPodSandbox to the first ExecSync's answer; the pod's id."""
    t0 = time.perf_counter()
    pod = cri.run_pod_sandbox(_pod(name, logs, cni, fenced, cold), handler=handler)
    c = cri.create_container(pod, pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="c"), image=pb.ImageSpec(image=IMAGE), command=["sleep", "100000"],
        log_path=f"{name}-c.log"), _pod(name, logs, cni, fenced, cold))
    cri.start_container(c)
    code, _, err = cri.exec_sync(c, ["true"], timeout=60)
    took = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"{handler}: ExecSync failed ({code}): {err!r}")
    return took, pod


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pod_processes(pod: str, shims: Path) -> list[int]:
    """The pod's shim daemon and every process of its VM (supervisor, QEMU, virtiofsd:
    their command lines name the VM's folder)."""
    from a3s_box.k8s.paths import vm_rundir

    vm = str(vm_rundir(shims, pod)).encode()
    out = []
    for p in Path("/proc").iterdir():
        try:
            cmd = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if p.name.isdigit() and ((b"a3s_box.k8s.shim" in cmd and pod.encode() in cmd) or vm in cmd):
            out.append(int(p.name))
    if len(out) < 3:
        raise SystemExit(f"pod {pod}: found only processes {out}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    rounds = ap.parse_args().rounds
    with Scratch() as s, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "cni").mkdir()
        (tmp / "cni" / "10-bench.conflist").write_text(json.dumps(CONFLIST))
        with containerd(tmp, SHARED, _config(tmp)) as sock:
            import_image(sock, s.image, IMAGE, namespace="k8s.io")
            with CriClient(sock, timeout=300) as cri:
                cri.wait_ready(30)
                times: dict[str, list[float]] = {"runc": [], "a3sbox": [], "runc-cni": [], "a3sbox-cni": [],
                                                 "a3sbox-fenced": [], "a3sbox-cold": [], "a3sbox-cni-cold": []}
                idle = []
                for i in range(-1, rounds):  # round -1 makes the templates: not counted
                    for handler, cni, fenced, cold in (("runc", False, False, False), ("a3sbox", False, False, False),
                                                       ("runc", True, False, False), ("a3sbox", True, False, False),
                                                       ("a3sbox", True, True, False), ("a3sbox", False, False, True),
                                                       ("a3sbox", True, False, True)):
                        kind = ("a3sbox-fenced" if fenced else f"{handler}-cni" if cni else handler) + \
                            ("-cold" if cold else "")
                        if i < 0 and (handler == "runc" or cold):
                            continue
                        took, pod = _first_exec(cri, handler, f"{kind}-{i + 1}", tmp / "logs", cni, fenced, cold)
                        try:
                            if i >= 0:
                                times[kind].append(took)
                            if kind == "a3sbox" and i >= 0:
                                time.sleep(3)  # idle: the boot's page cache and buffers settled
                                idle.append(sum(map(_pss_kib, _pod_processes(pod, tmp / "shims"))) / 1024)
                        finally:
                            cri.stop_pod_sandbox(pod)
                            cri.remove_pod_sandbox(pod)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
    for kind, what in (("", "the node's network"), ("-cni", "a CNI pod network")):
        runc, box = statistics.median(times["runc" + kind]), statistics.median(times["a3sbox" + kind])
        booted = statistics.median(times["a3sbox" + kind + "-cold"])
        print(f"pod create -> first ExecSync on {what} (median of {rounds}): runc {runc * 1000:.0f} ms, "
              f"a3sbox from a snapshot {box * 1000:.0f} ms = {box / runc:.1f}x runc, "
              f"booted cold {booted * 1000:.0f} ms = {booted / runc:.1f}x runc; snapshot = {box / booted:.2f}x cold")
    routed, bridged = statistics.median(times["a3sbox-fenced"]), statistics.median(times["a3sbox-cni"])
    print(f"... held to an allow-list (a3s.dev/network: routed to the egress proxy): a3sbox {routed * 1000:.0f} ms "
          f"= {routed / statistics.median(times['runc-cni']):.1f}x runc, {routed / bridged:.2f}x an unannotated a3sbox pod")
    print(f"idle pod VM (shim + QEMU + virtiofsd, Pss, 256 MiB guest): {statistics.median(idle):.0f} MiB "
          f"(RuntimeClass overhead.podFixed.memory)")


if __name__ == "__main__":
    main()
