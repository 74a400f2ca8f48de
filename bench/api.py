"""API benchmark: the exec round trip of `true` over HTTP (POST .../exec) and over the
WebSocket (interactive), each as a ratio to the Python API in the same run (goal at
most 1.5), and a pool acquire over HTTP (goal under 20 ms).

    python3 bench/api.py [--rounds 20]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx
from scratch import Scratch
from websockets.sync.client import connect

import a3s_box

BOXFILE = """project: apibench
boxes:
  one:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 100000"]}}
  member:
    image: hello
    resources: {memory: 128Mi}
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 100000"]}}
pools:
  p: {box: member, min_ready: 2, max: 4, idle_timeout: 1h}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    with Scratch() as s:
        f = s.boxfile("Boxfile.yaml", BOXFILE)
        s.box("apply", "-q", "-f", str(f))
        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            port = sk.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "a3s_box.cli", "serve", "--listen", f"127.0.0.1:{port}"],
                                  env=s.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(2)
            token = (s.home / "api-token").read_text().strip()
            auth = {"authorization": f"Bearer {token}"}
            with a3s_box.Host(s.home) as host, host.client(host.find("one")) as c:
                c.run(["true"])
                py = []
                for _ in range(args.rounds):
                    t0 = time.perf_counter()
                    c.run(["true"])
                    py.append(time.perf_counter() - t0)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth) as h:
                h.post("/v1/boxes/one/exec", json={"argv": ["true"]})
                over_http = []
                for _ in range(args.rounds):
                    t0 = time.perf_counter()
                    h.post("/v1/boxes/one/exec", json={"argv": ["true"]}).raise_for_status()
                    over_http.append(time.perf_counter() - t0)
                over_ws = []
                for _ in range(args.rounds):
                    t0 = time.perf_counter()
                    with connect(f"ws://127.0.0.1:{port}/v1/boxes/apibench.one/exec/ws",
                                 additional_headers=auth) as ws:
                        ws.send(json.dumps({"argv": ["true"]}))
                        while "exit" not in json.loads(ws.recv()):
                            pass
                    over_ws.append(time.perf_counter() - t0)
                acquire = []
                for i in range(min(args.rounds, 10)):
                    t0 = time.perf_counter()
                    r = h.post("/v1/pools/p/acquire", json={"name": f"a{i}"})
                    acquire.append(time.perf_counter() - t0)
                    h.post(f"/v1/boxes/{r.raise_for_status().json()['id']}/release",
                           json={"keep": True}).raise_for_status()
        finally:
            server.terminate()
            server.wait()
        s.box("delete", "-f", str(f))
    p, hh, w, a = (statistics.median(x) for x in (py, over_http, over_ws, acquire))
    print(f"exec `true`: Python API {p * 1000:.1f} ms, HTTP {hh * 1000:.1f} ms ({hh / p:.2f}), "
          f"WebSocket {w * 1000:.1f} ms ({w / p:.2f})  (goal <= 1.5)")
    print(f"pool acquire over HTTP: {a * 1000:.1f} ms  (goal < 20 ms)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
