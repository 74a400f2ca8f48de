"""Network benchmark: a download through a box's allow-list egress proxy, against the
same download by the host, in the same run; and new connections per second.

    python3 bench/network.py [--mib 100] [--connections 50]

Three figures for the download of MIB from a local HTTP server on 127.0.0.1:
  host       curl on the host, straight to the server (the baseline)
  proxy      curl on the host through the egress proxy alone (what the proxy costs)
  box        curl inside a box (allowlist), through its whole path (virtio-net, QEMU's
             user-mode network, the namespace's REDIRECT, the proxy); under TCG the guest's
             emulated CPU dominates this one, not the proxy
And two over TLS from a local HTTPS server, both through the proxy alone:
  passthrough   a host without secrets: the proxy relays TLS it cannot read (the baseline)
  intercepted   a secret's host: TLS terminated with the box's CA, the placeholder
                replaced, the response scrubbed for the value (goal: >= 0.8 x passthrough)
The proxy and the TLS server run in processes of their own, as in use.
--host-only skips the box.
"""
from __future__ import annotations

import argparse
import asyncio
import http.server
import ipaddress
import socket
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


def proxy_alone(port: int, policy: NetworkPolicy, secrets: SecretBook = SecretBook([]),
                ca_folder: Path | None = None, upstream: Any = None) -> tuple[int, Egress]:
    """The proxy on a thread of this process (for the plain-HTTP figures)."""
    egress = Egress(policy, secrets, NetworkLog(None, "bench"), ca_folder, upstream)
    ip = egress.dns.book.address_of("big.test")
    assert ip is not None
    egress.destination = lambda _s: (ipaddress.IPv4Address(ip), port)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    out: list[int] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        listener = socket.create_server(("127.0.0.1", 0))
        out.append(listener.getsockname()[1])
        loop.create_task(egress.serve(listener))
        ready.set()
        loop.run_forever()
    threading.Thread(target=run, daemon=True).start()
    ready.wait(5)
    return out[0], egress


# The TLS figures run the server and the proxy each in a process of its own, as in use
# (the proxy is the box's helper process; the server stands in for the internet): on
# threads of one process they would share one GIL, and the proxy's work would be
# measured against the server's.
def _https_server(ports: Any, cert: str) -> None:
    import ssl
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Big)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    ports.put(server.server_address[1])
    server.serve_forever()


def _proxy_process(ports: Any, name: str, port: int, policy: dict[str, Any], secret: tuple[str, str, str, str],
                   ca_folder: str, upstream_ca: str) -> None:
    import ssl
    from a3s_box.network.secrets import Secret
    var, ph, value, host = secret
    egress = Egress(NetworkPolicy.from_json(policy), SecretBook([Secret(var, ph, value, (host,))]),
                    NetworkLog(None, "bench"), Path(ca_folder), ssl.create_default_context(cafile=upstream_ca))
    ip = egress.dns.book.address_of(name)
    egress.destination = lambda _s: (ipaddress.IPv4Address(str(ip)), port)

    listener = socket.create_server(("127.0.0.1", 0))
    ports.put(listener.getsockname()[1])
    asyncio.run(egress.serve(listener))


def tls_figures(size: int, folder: Path) -> tuple[float, float]:
    """(passthrough, intercepted) seconds for SIZE bytes over TLS through the proxy."""
    import multiprocessing

    from a3s_box.network.ca import ensure_ca
    from tests.network.conftest import make_test_ca

    mp = multiprocessing.get_context("spawn")
    ports = mp.Queue()
    ca, server_pem = make_test_ca(folder)  # its certificate names api.test and other.test
    children = [mp.Process(target=_https_server, args=(ports, str(server_pem)), daemon=True)]
    children[0].start()
    port = ports.get(timeout=30)
    policy = {"mode": "allowlist", "egress": [f"api.test:{port}", f"other.test:{port}"],
              "hosts": {"api.test": "127.0.0.1", "other.test": "127.0.0.1"}}
    ph = "a3s-secret-key-0123456789abcdef01234567"
    box_ca = folder / "box"
    box_ca.mkdir()
    ensure_ca(box_ca, "bench")
    secret = ("KEY", ph, "sk-bench-value", f"api.test:{port}")

    def timed(name: str, cafile: Path) -> float:
        proxy = mp.Process(target=_proxy_process, daemon=True,
                           args=(ports, name, port, policy, secret, str(box_ca), str(ca)))
        proxy.start()
        children.append(proxy)
        pport = ports.get(timeout=30)
        return min(curl_seconds("--cacert", str(cafile), "--connect-to", f"{name}:{port}:127.0.0.1:{pport}",
                                "-H", f"Authorization: Bearer {ph}", f"https://{name}:{port}/{size}")
                   for _ in range(3))
    try:
        return timed("other.test", ca), timed("api.test", box_ca / "ca.pem")
    finally:
        for child in children:
            child.terminate()
            child.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--tls-mib", type=int, default=500,
                    help="size of the TLS downloads (shorter ones vary with scheduling noise)")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--host-only", action="store_true", help="skip the figures inside a box")
    args = ap.parse_args()
    size = args.mib << 20
    mib = args.mib
    with Scratch() as s:
        passthrough, intercepted = tls_figures(args.tls_mib << 20, s.dir)
    tls = args.tls_mib
    print(f"download of {tls} MiB over TLS through the proxy alone (proxy and server in processes of their own):")
    print(f"  passthrough (baseline):      {passthrough:6.2f} s  {tls / passthrough:8.1f} MiB/s")
    print(f"  intercepted, scrubbed:       {intercepted:6.2f} s  {tls / intercepted:8.1f} MiB/s  "
          f"throughput {passthrough / intercepted:.2f} x passthrough (goal >= 0.8)")
    if args.host_only:
        return
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
    print(f"download of {mib} MiB from 127.0.0.1:")
    print(f"  host, direct (baseline):     {host:6.2f} s  {mib / host:8.1f} MiB/s")
    print(f"  host, through the proxy:     {via_proxy:6.2f} s  {mib / via_proxy:8.1f} MiB/s  "
          f"ratio {via_proxy / host:.2f}")
    print(f"  in a box, allow-list proxy:  {box:6.2f} s  {mib / box:8.1f} MiB/s  ratio {box / host:.2f}")
    print(f"new connections per second (curl per request): host {host_cps:.0f}, in a box {n / many:.0f}, "
          f"ratio {(n / many) / host_cps:.2f}")


if __name__ == "__main__":
    main()
