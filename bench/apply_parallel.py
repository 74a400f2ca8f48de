"""Parallel apply benchmark: applying 8 independent boxes as a ratio to 8 x applying one
box (goal at most 0.6 on 2 cores), and a no-op apply of N converged boxes (goal < 1 s).

    python3 bench/apply_parallel.py [--noop-boxes 100]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BOX = """  b{i}:
    image: hello
    resources: {{memory: {mem}}}
    namespaces: {{agent: {{command: ["/bin/sh", "-c", "exec sleep 100000"]}}}}
"""


def boxfile(path: Path, image: Path, n: int, mem: str = "128Mi") -> Path:
    path.write_text(f"apiVersion: box.a3s.dev/v1\nproject: par\nimages:\n  hello: {{path: {image}}}\n"
                    "boxes:\n" + "".join(BOX.format(i=i, mem=mem) for i in range(n)))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--noop-boxes", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        shared = Path(os.environ.get("A3S_BOX_TEST_HOME", Path.home() / ".cache/a3s-box-test"))
        home = tmp / "home"
        home.mkdir()
        (home / "cache").symlink_to((shared / "cache").absolute())
        image = tmp / "image"
        subprocess.run([sys.executable, str(ROOT / "examples/hello/make_image.py"), str(image)],
                       check=True, stdout=subprocess.DEVNULL)
        env = {**os.environ, "A3S_BOX_HOME": str(home)}

        def box(*a: str) -> float:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "a3s_box.cli", *a], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return time.perf_counter() - t0

        one, eight = boxfile(tmp / "one.yaml", image, 1), boxfile(tmp / "eight.yaml", image, 8)
        box("image", "import", str(image))
        box("apply", "-f", str(one))  # builds the image's base disk once, outside the timing
        box("delete", "-f", str(one))
        single = box("apply", "-f", str(one))
        box("delete", "-f", str(one))
        parallel = box("apply", "-f", str(eight))
        box("delete", "-f", str(eight))
        print(f"one box: {single:.2f} s; 8 independent boxes: {parallel:.2f} s (--parallel = cores)")
        print(f"ratio 8 boxes / (8 x one box): {parallel / (8 * single):.2f}  (goal <= 0.6)")
        if args.noop_boxes:
            many = boxfile(tmp / "many.yaml", image, args.noop_boxes, mem="64Mi")
            box("apply", "-f", str(many))
            noop = min(box("apply", "-f", str(many)) for _ in range(3))
            box("delete", "-f", str(many))
            print(f"no-op apply of {args.noop_boxes} converged boxes: {noop:.2f} s  (goal < 1 s)")


if __name__ == "__main__":
    main()
