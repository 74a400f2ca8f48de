"""Memory of boxes' egress proxies (issue 26): the host-wide daemon against per-box helpers.

    python3 bench/egress_memory.py [--boxes 8]       (root: real namespaces, no VM)

Each box here is what a supervisor makes for a box with an allow-list and a secret (its
namespace, its CA), without QEMU; one HTTPS request per box goes through the proxy (a
secret substituted: TLS intercepted with the box's CA, a leaf made) so that what a box
costs once used is counted. Figures are Pss (/proc/PID/smaps_rollup, MiB): shared pages
are split among the processes that map them, so the per-box helper's figure is what one
more helper adds to a host that already runs some.
  helper           python -m a3s_box.network.helper, one box (before: one such per box)
  daemon, 1 box    python -m a3s_box.network.daemon serving one box
  daemon, N boxes  the same daemon serving N boxes: per box = its Pss / N
  supervisor +     what registering a box adds to the process that registers it (the
                   shim: a3s_box.network.registration, its namespace's thread, its reader)
"""
from __future__ import annotations

import argparse
import http.server
import json
import os
import ssl
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.network.conftest import _handler, make_test_ca  # noqa: E402

from a3s_box.network.ca import ensure_ca  # noqa: E402
from a3s_box.network.registration import BoxNetwork, register_box  # noqa: E402

PH = "a3s-secret-token-0123456789abcdef01234567"


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss for {pid}")


def internet(folder: Path) -> tuple[int, Path]:
    ca, server_pem = make_test_ca(folder)
    tls = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler([], "https"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server_pem)
    tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
    threading.Thread(target=tls.serve_forever, daemon=True).start()
    return int(tls.server_address[1]), ca


def box_conf(home: Path, name: str, port: int) -> tuple[Path, dict[str, Any]]:
    rundir = home / "boxes" / name
    rundir.mkdir(parents=True, mode=0o700)
    ensure_ca(rundir, name)
    return rundir, {"box_id": name, "ca_dir": str(rundir), "forwards": [], "logging": None,
                    "policy": {"mode": "allowlist", "egress": [f"api.test:{port}"], "hosts": {"api.test": "127.0.0.1"}},
                    "secrets": {"TOKEN": {"placeholder": PH, "value": "sk-value", "hosts": [f"api.test:{port}"]}}}


def request(netns: str, rundir: Path, port: int) -> None:
    r = subprocess.run(["nsenter", f"--net={netns}", "curl", "-sS", "-m", "10", "-o", "/dev/null",
                        "--cacert", str(rundir / "ca.pem"), "-H", f"Authorization: Bearer {PH}",
                        f"https://api.test:{port}/"], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"a request through the proxy failed: {r.stderr}")


def helper(home: Path, port: int) -> tuple[float, float]:
    rundir, conf = box_conf(home, "helper-box", port)
    (rundir / "net").mkdir(mode=0o700)
    os.chown(rundir / "net", 65534, 65534)
    (rundir / "activity").touch()
    os.chown(rundir / "activity", 65534, 65534)
    (rundir / "network.json").write_text(json.dumps(conf))
    proc = subprocess.Popen([sys.executable, "-m", "a3s_box.network.helper", str(rundir), "65534:65534"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        said = json.loads(proc.stdout.readline())
        netns = str(said["netns"])
        idle = pss_mib(proc.pid)
        request(netns, rundir, port)
        return idle, pss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait()


def supervisor_increment(home: Path, port: int) -> tuple[float, float]:
    """(Pss of a process that imported the registration, what registering one box added)."""
    rundir, conf = box_conf(home, "supervised", port)
    code = textwrap.dedent(f"""
        import json, os, sys, time
        from pathlib import Path
        from a3s_box.network.registration import register_box
        def pss():
            for line in open(f"/proc/{{os.getpid()}}/smaps_rollup"):
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
        before = pss()
        net = register_box(Path({str(home)!r}), Path({str(rundir)!r}), json.loads(sys.stdin.read()))
        time.sleep(0.5)
        print(json.dumps([before, pss() - before]))
        net.close()
    """)
    r = subprocess.run([sys.executable, "-c", code], input=json.dumps(conf), capture_output=True, text=True,
                       check=True)
    before, added = json.loads(r.stdout)
    return float(before), float(added)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--boxes", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir(mode=0o700)
        port, ca = internet(Path(tmp))
        os.environ["SSL_CERT_FILE"] = str(ca)  # the proxies trust the local HTTPS server
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        rows: list[tuple[str, float, float]] = []
        idle, used = helper(home, port)
        rows.append(("helper, 1 box", idle, used))
        nets: list[tuple[BoxNetwork, Path]] = []
        try:
            for i in range(args.boxes):
                rundir, conf = box_conf(home, f"box{i}", port)
                nets.append((register_box(home, rundir, conf), rundir))
                if len(nets) in (1, args.boxes):
                    pid = nets[0][0].daemon_pid()
                    assert pid is not None
                    idle = pss_mib(pid)
                    for net, rd in nets:
                        request(f"/proc/{os.getpid()}/fd/{net.netns_fd}", rd, port)
                    rows.append((f"daemon, {len(nets)} box{'es' if len(nets) > 1 else ''}", idle, pss_mib(pid)))
        finally:
            for net, _ in nets:
                net.close()
        base, added = supervisor_increment(home, port)
    print(f"{'':18} {'Pss registered':>15} {'after a request':>16} {'per box':>8}")
    for name, idle, used in rows:
        n = int(name.split()[1]) if name.startswith("daemon") else 1
        print(f"{name:18} {idle:12.1f} MiB {used:12.1f} MiB {used / n:5.1f} MiB")
    print(f"supervisor +       {added:12.1f} MiB  (a process that imported the registration: {base:.1f} MiB)")


if __name__ == "__main__":
    main()
