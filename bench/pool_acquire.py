"""Warm-pool benchmark: `acquire` from a filled pool through the Python API (goal under
10 ms) and through the CLI as a ratio to `box ps` in the same run (goal at most 1.2).

    python3 bench/pool_acquire.py [--rounds 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import a3s_box  # noqa: E402

BOXFILE = """apiVersion: box.a3s.dev/v1
project: poolbench
images:
  hello: {{path: {image}}}
boxes:
  coder:
    image: hello
    resources: {{memory: 128Mi}}
    namespaces: {{agent: {{command: ["/bin/sh", "-c", "exec sleep 100000"]}}}}
pools:
  coders: {{box: coder, min_ready: 2, max: 4, idle_timeout: 1h}}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        shared = Path(os.environ.get("A3S_BOX_TEST_HOME", Path.home() / ".cache/a3s-box-test"))
        home = tmp / "home"
        home.mkdir()
        (home / "cache").symlink_to((shared / "cache").absolute())
        subprocess.run([sys.executable, str(ROOT / "examples/hello/make_image.py"), str(tmp / "image")],
                       check=True, stdout=subprocess.DEVNULL)
        boxfile = tmp / "Boxfile.yaml"
        boxfile.write_text(BOXFILE.format(image=tmp / "image"))
        env = {**os.environ, "A3S_BOX_HOME": str(home)}

        def cli(*a: str) -> float:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "a3s_box.cli", *a], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            return time.perf_counter() - t0

        cli("apply", "-q", "-f", str(boxfile))
        api, via_cli, ps = [], [], []
        with a3s_box.Host(home) as host:
            for i in range(args.rounds):
                t0 = time.perf_counter()
                row = host.acquire("coders", name=f"api{i}")
                api.append(time.perf_counter() - t0)
                host.release(row.name, keep=True)  # back to the pool: no reboot between rounds
            for i in range(args.rounds):
                via_cli.append(cli("pool", "acquire", "coders", "--name", f"cli{i}"))
                host.release(f"cli{i}", keep=True)
                ps.append(cli("ps"))
        cli("delete", "-f", str(boxfile))
    a, c, p = statistics.median(api), statistics.median(via_cli), statistics.median(ps)
    print(f"acquire via the Python API: {a * 1000:.2f} ms median of {args.rounds} (goal < 10 ms)")
    print(f"box pool acquire (CLI):     {c * 1000:.0f} ms; box ps: {p * 1000:.0f} ms")
    print(f"ratio acquire / ps: {c / p:.2f}  (goal <= 1.2)")


if __name__ == "__main__":
    main()
