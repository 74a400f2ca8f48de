"""Volumes benchmark, ratios measured in one run:
  - sequential write and read of a 256 MiB file, and `find` over 10,000 small files, on a
    bind volume (virtio-fs) against the box's own disk (virtio-blk, ext4)
  - `box cp` of a 100 MiB tree into the box against `tar c | box exec -i BOX tar x`
    (goal: at most 1.0)

    python3 bench/volumes.py [--mib 256] [--files 10000]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from scratch import Scratch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=10000)
    args = ap.parse_args()
    with Scratch() as s:
        share = s.dir / "share"
        share.mkdir()
        f = s.boxfile("Boxfile.yaml", f"""boxes:
  v:
    image: hello
    resources: {{memory: 512Mi}}
    namespaces: {{agent: {{command: ["/bin/sh", "-c", "exec sleep 100000"]}}}}
    volumes: ["{share}:/share"]
""")
        s.box("apply", "-q", "-f", str(f))

        def in_box(script: str, stdin: bytes | None = None) -> float:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "a3s_box.cli", "exec", *(["-i"] if stdin else []), "v", "--",
                            "sh", "-c", script], env=s.env, check=True, timeout=1800, input=stdin,
                           stdout=subprocess.DEVNULL)
            return time.perf_counter() - t0

        try:
            base = min(in_box("true") for _ in range(3))
            out = {}
            for where, d in (("disk", "/root/bench"), ("bind", "/share/bench")):
                in_box(f"mkdir -p {d}")
                out[where, "write"] = in_box(f"dd if=/dev/zero of={d}/big bs=1M count={args.mib} "
                                             "conv=fsync 2>/dev/null") - base
                in_box("sync; echo 3 > /proc/sys/vm/drop_caches")
                out[where, "read"] = in_box(f"dd if={d}/big of=/dev/null bs=1M 2>/dev/null") - base
                in_box(f"rm {d}/big; i=0; while [ $i -lt {args.files} ]; do echo $i > {d}/f$i; i=$((i+1)); done")
                in_box("sync; echo 3 > /proc/sys/vm/drop_caches")
                out[where, "find"] = in_box(f"find {d} -type f | wc -l") - base
            tree = s.dir / "tree"
            tree.mkdir()
            for i in range(10):
                (tree / f"f{i}").write_bytes(os.urandom(10 << 20))
            t0 = time.perf_counter()
            s.box("cp", str(tree), "v:/root/cp1")
            cp = time.perf_counter() - t0
            tar = subprocess.run(["tar", "c", "-C", str(s.dir), "tree"], check=True, capture_output=True).stdout
            in_box("mkdir -p /root/cp2")
            piped = in_box("/.a3s/tar x -C /root/cp2", stdin=tar)
        finally:
            s.box("delete", "-f", str(f))
    mib = args.mib
    for op in ("write", "read", "find"):
        disk, bind = out["disk", op], out["bind", op]
        unit = f"{mib / disk:7.1f} / {mib / bind:7.1f} MiB/s" if op != "find" else f"{args.files} files"
        print(f"{op:5} disk {disk:6.2f} s, bind {bind:6.2f} s ({unit}): bind / disk = {bind / disk:.2f}")
    print(f"box cp of 100 MiB: {cp:.2f} s; tar | box exec -i tar x: {piped:.2f} s; ratio {cp / piped:.2f} "
          "(goal <= 1.0)")


if __name__ == "__main__":
    main()
