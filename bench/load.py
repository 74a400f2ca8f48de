"""Load benchmark: N concurrent clients each sending M `exec` requests over K boxes
through `box serve`, against one client alone in the same run.

    python3 bench/load.py [--clients 100] [--execs 6] [--boxes 3]

Prints: errors (goal 0) by status, p50/p99 latency as ratios to one client's, throughput
(execs per second), and the server's RSS before and after (growth).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from scratch import Scratch


def boxfile(k: int) -> str:
    boxes = "".join(f"""  b{i}:
    image: hello
    resources: {{memory: 128Mi}}
    namespaces: {{agent: {{command: ["/bin/sh", "-c", "exec sleep 100000"]}}}}
""" for i in range(k))
    return f"project: load\nboxes:\n{boxes}"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def run_clients(url: str, token: str, clients: int, execs: int, boxes: int
                      ) -> tuple[list[float], collections.Counter[str], float]:
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {token}"},
                                 timeout=120, limits=limits) as http:
        async def one(c: int) -> None:
            for j in range(execs):
                box = f"b{(c + j) % boxes}"
                t0 = time.perf_counter()
                try:
                    r = await http.post(f"/v1/boxes/{box}/exec", json={"argv": ["true"]})
                except httpx.HTTPError as e:
                    errors[type(e).__name__] += 1
                    continue
                if r.status_code != 200:
                    errors[f"{r.status_code} {r.json().get('detail', '')[:80]}"] += 1
                else:
                    latencies.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await asyncio.gather(*(one(c) for c in range(clients)))
        return latencies, errors, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--execs", type=int, default=6)
    ap.add_argument("--boxes", type=int, default=3)
    args = ap.parse_args()
    with Scratch() as s:
        f = s.boxfile("Boxfile.yaml", boxfile(args.boxes))
        s.box("apply", "-q", "-f", str(f))
        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            port = sk.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "a3s_box.cli", "serve", "--listen", f"127.0.0.1:{port}"],
                                  env=s.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while not (s.home / "api-token").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1)
            token = (s.home / "api-token").read_text().strip()
            one, one_err, _ = asyncio.run(run_clients(url, token, 1, 20, args.boxes))
            rss0 = rss_kib(server.pid)
            lat, errors, wall = asyncio.run(run_clients(url, token, args.clients, args.execs, args.boxes))
            rss1 = rss_kib(server.pid)
        finally:
            server.terminate()
            server.wait(30)
            s.box("delete", "-f", str(f))
    base50 = statistics.median(one)
    total = args.clients * args.execs
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    print(f"{args.clients} clients x {args.execs} execs over {args.boxes} boxes through box serve:")
    print(f"  errors: {sum(errors.values())} of {total} (goal 0)" +
          "".join(f"\n    {n} x {why}" for why, n in errors.most_common()) +
          (f"; one client alone: {sum(one_err.values())} errors" if one_err else ""))
    print(f"  one client alone (baseline): p50 {base50 * 1000:.0f} ms")
    print(f"  p50 {q[49] * 1000:.0f} ms ({q[49] / base50:.1f} x one client), "
          f"p99 {q[98] * 1000:.0f} ms ({q[98] / base50:.1f} x)")
    print(f"  throughput {len(lat) / wall:.1f} execs/s; server RSS {rss0 // 1024} -> {rss1 // 1024} MiB")


if __name__ == "__main__":
    main()
