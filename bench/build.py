"""Build benchmark: a 5-step Dockerfile (3 RUN, COPY, ENV) with `box build`, cold (no
cache) and fully cached, each as a ratio to `buildah bud --layers` of the same Dockerfile
in the same run (buildah runs RUN steps in a chroot on the host; a3s-box in a microVM
each, so cold builds pay a VM boot per RUN).

    python3 bench/build.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scratch import Scratch

STEPS = """RUN echo one > /one
RUN echo two > /two
COPY payload.txt /payload.txt
ENV STAGE=bench
RUN cat /one /two /payload.txt > /all && test "$STAGE" = bench
"""


def _time(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])}... failed: {r.stderr[-500:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    rounds = ap.parse_args().rounds
    if shutil.which("buildah") is None:
        raise SystemExit("buildah is not installed (Debian: apt-get install buildah): no baseline to compare with")
    with Scratch() as s, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        box = [sys.executable, "-m", "a3s_box.cli"]
        _time([*box, "image", "import", str(s.image), "--tag", "localhost/bench/hello:1"], s.env)
        ours, theirs = tmp / "ours", tmp / "theirs"
        for d, base in ((ours, "localhost/bench/hello:1"), (theirs, f"oci:{s.image}")):
            d.mkdir()
            (d / "payload.txt").write_text("payload\n" * 1000)
            (d / "Dockerfile").write_text(f"FROM {base}\n{STEPS}")
        boxfile = tmp / "Boxfile.yaml"
        boxfile.write_text(f"apiVersion: box.a3s.dev/v1\nproject: bench\nimages:\n"
                           f"  app: {{build: {{context: {ours}, network: {{mode: none}}}}}}\n")
        buildah = ["buildah", "--storage-driver", "vfs", "--root", str(tmp / "buildah"), "--runroot",
                   str(tmp / "buildah-run"), "bud", "--layers", "--isolation", "chroot", "-q", "-t", "bench"]
        cold: dict[str, list[float]] = {"box": [], "buildah": []}
        warm: dict[str, list[float]] = {"box": [], "buildah": []}
        for _ in range(rounds):
            cold["box"].append(_time([*box, "-q", "build", "-f", str(boxfile), "--no-cache"], s.env))
            warm["box"].append(_time([*box, "-q", "build", "-f", str(boxfile)], s.env))
            cold["buildah"].append(_time([*buildah, "--no-cache", str(theirs)]))
            warm["buildah"].append(_time([*buildah, str(theirs)]))
    med = {k: {n: statistics.median(v) for n, v in d.items()} for k, d in (("cold", cold), ("cached", warm))}
    for kind in ("cold", "cached"):
        b, h = med[kind]["box"], med[kind]["buildah"]
        print(f"5-step build, {kind} (median of {rounds}): box build {b:.2f} s, buildah bud {h:.2f} s "
              f"= {b / h:.1f}x buildah")


if __name__ == "__main__":
    main()
