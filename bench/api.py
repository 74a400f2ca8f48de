"""API benchmark: the exec round trip of `true` over HTTP (POST .../exec) and over the
WebSocket (interactive), each as a ratio to the Python API in the same run (goal at
most 1.5), and a pool acquire over HTTP (goal under 20 ms). Then E2B's SDK (`e2b` from
PyPI) against the E2B-compatible API: `commands.run("true")` as a ratio to the remote
Python client's `run` of what the SDK runs for it, `bash -l -c true` (goal at most 1.5),
and `Sandbox.create` from a pool (an acquire).

    python3 bench/api.py [--rounds 20]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from scratch import Scratch
from websockets.sync.client import connect

import a3s_box

ROOT = Path(__file__).resolve().parents[1]
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
        s.image = _with_bash(s.image.parent / "bash-image")  # E2B's SDK runs commands as `bash -l -c`
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
            e2b_run, remote, created = _e2b(f"http://127.0.0.1:{port}", token, args.rounds)
        finally:
            server.terminate()
            server.wait()
        s.box("delete", "-f", str(f))
    p, hh, w, a = (statistics.median(x) for x in (py, over_http, over_ws, acquire))
    print(f"exec `true`: Python API {p * 1000:.1f} ms, HTTP {hh * 1000:.1f} ms ({hh / p:.2f}), "
          f"WebSocket {w * 1000:.1f} ms ({w / p:.2f})  (goal <= 1.5)")
    print(f"pool acquire over HTTP: {a * 1000:.1f} ms  (goal < 20 ms)")
    e2b_med, remote_med, create_med = (statistics.median(x) for x in (e2b_run, remote, created))
    print(f"E2B SDK commands.run(\"true\"): {e2b_med * 1000:.1f} ms, {e2b_med / remote_med:.2f} x "
          f"a3s_box.Client's run of the same `bash -l -c true` ({remote_med * 1000:.1f} ms)  (goal <= 1.5)")
    print(f"E2B SDK Sandbox.create from a pool: {create_med * 1000:.1f} ms")


def _with_bash(out: Path) -> Path:
    """The demo image plus the host's bash and what it links (the tests' tools image)."""
    spec = importlib.util.spec_from_file_location("tools_image", ROOT / "tests/network/tools_image.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_tools_image(out, tools=("/bin/bash",))  # type: ignore[no-any-return]


def _e2b(url: str, token: str, rounds: int) -> tuple[list[float], list[float], list[float]]:
    """(E2B's commands.run, the remote client's run, E2B's create) round trips, seconds."""
    from e2b import Sandbox

    opts: dict[str, Any] = {"api_url": url + "/e2b", "sandbox_url": url + "/e2b", "api_key": token}
    created = []
    for _ in range(min(rounds, 5)):
        t0 = time.perf_counter()
        sbx = Sandbox.create("p", **opts)
        created.append(time.perf_counter() - t0)
        sbx.kill()
    sbx = Sandbox.create("p", **opts)
    try:
        sbx.commands.run("true")
        e2b_run = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            sbx.commands.run("true")
            e2b_run.append(time.perf_counter() - t0)
        with a3s_box.Client(url, token) as client:
            one = client.box(sbx.sandbox_id)
            same = ["/bin/bash", "-l", "-c", "true"]  # what the SDK runs for "true": a login bash
            one.run(same)
            remote = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                one.run(same)
                remote.append(time.perf_counter() - t0)
    finally:
        sbx.kill()
    return e2b_run, remote, created


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
