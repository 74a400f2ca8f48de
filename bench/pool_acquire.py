"""Warm-pool benchmark: `acquire` from a filled pool through the Python API (goal under
10 ms) and through the CLI as a ratio to `box ps` in the same run (goal at most 1.2).

    python3 bench/pool_acquire.py [--rounds 20]
"""
from __future__ import annotations

import argparse
import statistics
import time

from scratch import Scratch

import a3s_box

POOL = """project: poolbench
boxes:
  coder:
    image: hello
    resources: {memory: 128Mi}
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 100000"]}}
pools:
  coders: {box: coder, min_ready: 2, max: 4, idle_timeout: 1h}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    with Scratch() as s:
        boxfile = s.boxfile("Boxfile.yaml", POOL)
        s.box("apply", "-q", "-f", str(boxfile))
        api, via_cli, ps = [], [], []
        with a3s_box.Host(s.home) as host:
            for i in range(args.rounds):
                t0 = time.perf_counter()
                row = host.acquire("coders", name=f"api{i}")
                api.append(time.perf_counter() - t0)
                host.release(row.name, keep=True)  # back to the pool: no reboot between rounds
            for i in range(args.rounds):
                via_cli.append(s.box("pool", "acquire", "coders", "--name", f"cli{i}"))
                host.release(f"cli{i}", keep=True)
                ps.append(s.box("ps"))
        s.box("delete", "-f", str(boxfile))
    a, c, p = statistics.median(api), statistics.median(via_cli), statistics.median(ps)
    print(f"acquire via the Python API: {a * 1000:.2f} ms median of {args.rounds} (goal < 10 ms)")
    print(f"box pool acquire (CLI):     {c * 1000:.0f} ms; box ps: {p * 1000:.0f} ms")
    print(f"ratio acquire / ps: {c / p:.2f}  (goal <= 1.2)")


if __name__ == "__main__":
    main()
