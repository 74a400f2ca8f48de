"""Parallel apply benchmark: applying 8 independent boxes as a ratio to 8 x applying one
box (goal at most 0.6 on 2 cores), and a no-op apply of N converged boxes (goal < 1 s).

    python3 bench/apply_parallel.py [--noop-boxes 100]
"""
from __future__ import annotations

import argparse

from scratch import Scratch

BOX = """  b{i}:
    image: hello
    resources: {{memory: {mem}}}
    namespaces: {{agent: {{command: ["/bin/sh", "-c", "exec sleep 100000"]}}}}
"""


def boxes(n: int, mem: str = "128Mi") -> str:
    return "project: par\nboxes:\n" + "".join(BOX.format(i=i, mem=mem) for i in range(n))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--noop-boxes", type=int, default=100)
    args = ap.parse_args()
    with Scratch() as s:
        one, eight = s.boxfile("one.yaml", boxes(1)), s.boxfile("eight.yaml", boxes(8))
        s.box("apply", "-f", str(one))  # builds the image's base disk once, outside the timing
        s.box("delete", "-f", str(one))
        single = s.box("apply", "-f", str(one))
        s.box("delete", "-f", str(one))
        parallel = s.box("apply", "-f", str(eight))
        s.box("delete", "-f", str(eight))
        print(f"one box: {single:.2f} s; 8 independent boxes: {parallel:.2f} s (--parallel = cores)")
        print(f"ratio 8 boxes / (8 x one box): {parallel / (8 * single):.2f}  (goal <= 0.6)")
        if args.noop_boxes:
            many = s.boxfile("many.yaml", boxes(args.noop_boxes, mem="80Mi"))
            s.box("apply", "-f", str(many))
            noop = min(s.box("apply", "-f", str(many)) for _ in range(3))
            s.box("delete", "-f", str(many))
            print(f"no-op apply of {args.noop_boxes} converged boxes: {noop:.2f} s  (goal < 1 s)")


if __name__ == "__main__":
    main()
