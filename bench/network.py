"""Network benchmark: a download through a box's allow-list egress proxy, against the
same download by the host, in the same run; and new connections per second.

    python3 bench/network.py [--mib 100] [--connections 50]

Three figures for the download of MIB from a local HTTP server on 127.0.0.1:
  host       curl on the host, straight to the server (the baseline)
  proxy      curl on the host through the egress proxy alone (what the proxy costs)
  box        curl inside a box (allowlist), through its whole path (virtio-net, QEMU's
             user-mode network, the namespace's REDIRECT, the proxy); under TCG the guest's
             emulated CPU dominates this one, not the proxy
"""
from __future__ import annotations

import argparse
import asyncio
import http.server
import ipaddress
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from scratch import ROOT, Scratch

sys.path.insert(0, str(ROOT))
from tests.network.tools_image import build_tools_image  # noqa: E402

from a3s_box.network.egress import Egress  # noqa: E402
from a3s_box.network.log import NetworkLog  # noqa: E402
from a3s_box.network.policy import NetworkPolicy  # noqa: E402
from a3s_box.network.secrets import SecretBook  # noqa: E402


class Big(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        size = int(self.path.strip("/") or 0)
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        chunk = b"x" * (1 << 20)
        while size > 0:
            self.wfile.write(chunk[:min(size, len(chunk))])
            size -= len(chunk)

    def log_message(self, *args: Any) -> None:
        pass


def curl_seconds(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["curl", "-sS", "-o", "/dev/null", *args], check=True, timeout=600)
    return time.perf_counter() - t0


def proxy_alone(port: int, policy: NetworkPolicy) -> tuple[int, Egress]:
    egress = Egress(policy, SecretBook([]), NetworkLog(None, "bench"))
    ip = egress.dns.book.address_of("big.test")
    assert ip is not None
    egress.destination = lambda _s: (ipaddress.IPv4Address(ip), port)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    out: list[int] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(egress.on_flow, "127.0.0.1", 0))
        out.append(server.sockets[0].getsockname()[1])
        ready.set()
        loop.run_forever()
    threading.Thread(target=run, daemon=True).start()
    ready.wait(5)
    return out[0], egress


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--connections", type=int, default=50)
    args = ap.parse_args()
    size = args.mib << 20
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Big)
    server.daemon_threads = True
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    policy = NetworkPolicy.from_json({"mode": "allowlist", "egress": [f"big.test:{port}"],
                                      "hosts": {"big.test": "127.0.0.1"}})
    host = min(curl_seconds(f"http://127.0.0.1:{port}/{size}") for _ in range(3))
    pport, _ = proxy_alone(port, policy)
    via_proxy = min(curl_seconds("-H", f"Host: big.test:{port}", f"http://127.0.0.1:{pport}/{size}")
                    for _ in range(3))
    n = args.connections
    t0 = time.perf_counter()
    for _ in range(n):
        curl_seconds(f"http://127.0.0.1:{port}/1")
    host_cps = n / (time.perf_counter() - t0)
    with Scratch() as s:
        image = build_tools_image(s.dir / "tools")
        f = s.dir / "Boxfile.yaml"
        f.write_text(f"""apiVersion: box.a3s.dev/v1
images:
  tools: {{path: {image}}}
boxes:
  net:
    image: tools
    namespaces: {{agent: {{command: ["/bin/sh", "-c", "exec sleep 100000"]}}}}
    network:
      mode: allowlist
      egress: ["big.test:{port}"]
      hosts: {{big.test: 127.0.0.1}}
""")
        s.box("apply", "-q", "-f", str(f))
        try:
            def in_box(script: str) -> float:
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "a3s_box.cli", "exec", "net", "--", "sh", "-c", script],
                               env=s.env, check=True, timeout=900, stdout=subprocess.DEVNULL)
                return time.perf_counter() - t0
            overhead = min(in_box("true") for _ in range(3))
            box = in_box(f"curl -sS -o /dev/null http://big.test:{port}/{size}") - overhead
            many = in_box(f"i=0; while [ $i -lt {n} ]; do curl -sS -o /dev/null http://big.test:{port}/1; "
                          "i=$((i+1)); done") - overhead
        finally:
            s.box("delete", "-f", str(f))
    mib = args.mib
    print(f"download of {mib} MiB from 127.0.0.1:")
    print(f"  host, direct (baseline):     {host:6.2f} s  {mib / host:8.1f} MiB/s")
    print(f"  host, through the proxy:     {via_proxy:6.2f} s  {mib / via_proxy:8.1f} MiB/s  "
          f"ratio {via_proxy / host:.2f}")
    print(f"  in a box, allow-list proxy:  {box:6.2f} s  {mib / box:8.1f} MiB/s  ratio {box / host:.2f}")
    print(f"new connections per second (curl per request): host {host_cps:.0f}, in a box {n / many:.0f}, "
          f"ratio {(n / many) / host_cps:.2f}")


if __name__ == "__main__":
    main()
