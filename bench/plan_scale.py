"""Validate + plan a Boxfile of 1,000 boxes (dependency chains) and 100 pools.

Prints the time of validate+plan as a ratio to loading the same file with ruamel.yaml's
round-trip loader in the same run (goal: at most 1.5; below 1.0 is possible).

    python3 bench/plan_scale.py [--boxes 1000] [--pools 100] [--repeat 5]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ruamel.yaml import YAML

from a3s_box import boxfile
from a3s_box.orchestrator.desired import desired_state
from a3s_box.orchestrator.observed import ObservedState
from a3s_box.orchestrator.plan import make_plan


def generate(boxes: int, pools: int, chain: int = 10) -> str:
    out = ["apiVersion: box.a3s.dev/v1", "project: scale", "images:",
           "  base: {ref: \"localhost:5000/a3s/busybox:1.35\"}", "boxes:"]
    for i in range(boxes):
        out += [f"  box-{i}:", "    image: base",
                f"    resources: {{vcpus: {1 + i % 2}, memory: {128 << (i % 3)}Mi}}",
                f"    env: {{INDEX: \"{i}\", LOG_LEVEL: info}}",
                "    namespaces:",
                f"      agent: {{command: [\"/bin/sh\", \"-c\", \"exec sleep {i}\"]}}"]
        if i % chain:
            out.append(f"    depends_on: [box-{i - 1}]")
    out.append("pools:")
    for p in range(pools):
        out.append(f"  pool-{p}: {{box: box-{p * (boxes // pools)}, min_ready: 1, max: 4}}")
    return "\n".join(out) + "\n"


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boxes", type=int, default=1000)
    ap.add_argument("--pools", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "Boxfile.yaml"
        path.write_text(generate(args.boxes, args.pools))

        def baseline() -> None:
            YAML(typ="rt").load(path.read_text())

        def ours() -> None:
            bf = boxfile.load([path], {})
            plan = make_plan(desired_state(bf, "scale", {}), ObservedState("scale"))
            assert len(plan.actions) == 1 + args.boxes + args.pools

        base = best_of(args.repeat, baseline)
        mine = best_of(args.repeat, ours)
    size = path.stat().st_size if path.exists() else 0
    print(f"boxfile: {args.boxes} boxes, {args.pools} pools")
    print(f"ruamel.yaml round-trip load: {base * 1000:8.1f} ms  (baseline)")
    print(f"box validate + plan:         {mine * 1000:8.1f} ms")
    print(f"ratio validate+plan / rt-load: {mine / base:.2f}  (goal <= 1.5, stretch < 1.0)")


if __name__ == "__main__":
    main()
