"""Boot benchmark: from `box apply` (image cached) to the first `box exec ... true`
answering, as a ratio to raw QEMU booting the same kernel with a minimal busybox
initramfs that powers off, on the same accelerator, in the same run.
Also: exec round trip for `true` on a running box (Python API and CLI).

    python3 bench/boot.py [--rounds 3]        (goal now: ratio <= 1.5)
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

from a3s_box.drivers.artifacts import ensure_guest_artifacts  # noqa: E402
from a3s_box.drivers.cpio import Entry, gzip_newc  # noqa: E402
from a3s_box.drivers.probe import probe_accelerators  # noqa: E402
from a3s_box.drivers.qemu_argv import QemuSpec, qemu_argv, read_host_tsc_khz  # noqa: E402
from a3s_box.home import Home  # noqa: E402

BOXFILE = """apiVersion: box.a3s.dev/v1
project: bench
images:
  hello: {{path: {image}}}
boxes:
  one:
    image: hello
    resources: {{memory: 256Mi}}
    namespaces: {{agent: {{command: ["/bin/sh", "-c", "exec sleep 100000"]}}}}
"""


def box(home: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "a3s_box.cli", *args], check=True,
                   env={**os.environ, "A3S_BOX_HOME": str(home)}, stdout=subprocess.DEVNULL)


def raw_qemu(home: Home, tmp: Path) -> float:
    art = ensure_guest_artifacts(home)
    accel = probe_accelerators(home, "qemu-system-x86_64", art).accel
    init = b"#!/bin/busybox sh\n/bin/busybox poweroff -f\n"
    entries = [Entry("bin", 0o040755), Entry("bin/busybox", 0o100755, Path("/bin/busybox").read_bytes()),
               Entry("init", 0o100755, init), Entry("dev", 0o040755)]
    initrd = tmp / "poweroff.cpio.gz"
    initrd.write_bytes(gzip_newc(entries))
    spec = QemuSpec(binary="qemu-system-x86_64", accel=accel, vcpus=1, memory_mib=256,
                    kernel=art.kernel, initramfs=initrd, console_log=tmp / "raw.log",
                    channel=None, qmp=None, tsc_khz=read_host_tsc_khz())
    t0 = time.perf_counter()
    subprocess.run(qemu_argv(spec), check=True, timeout=120, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        shared = Home(Path(os.environ.get("A3S_BOX_TEST_HOME", Path.home() / ".cache/a3s-box-test"))).ensure()
        home = tmp / "home"
        home.mkdir()
        (home / "cache").symlink_to(shared.cache)
        subprocess.run([sys.executable, str(ROOT / "examples/hello/make_image.py"), str(tmp / "image")],
                       check=True, stdout=subprocess.DEVNULL)
        boxfile = tmp / "Boxfile.yaml"
        boxfile.write_text(BOXFILE.format(image=tmp / "image"))
        box(home, "image", "import", str(tmp / "image"))  # "image cached"
        raw, ours = [], []
        for _ in range(args.rounds):
            raw.append(raw_qemu(shared, tmp))
            t0 = time.perf_counter()
            box(home, "apply", "-q", "-f", str(boxfile))
            t1 = time.perf_counter()
            box(home, "exec", "one", "--", "true")
            ours.append(time.perf_counter() - t0)
            if args.verbose:
                print(f"  round: raw {raw[-1]:.2f} s, apply {t1 - t0:.2f} s, exec {ours[-1] - (t1 - t0):.2f} s")
            if _ != args.rounds - 1:
                box(home, "delete", "-f", str(boxfile))
        from a3s_box import Host

        with Host(home) as host:
            row = host.find("one")
            with host.client(row) as c:
                c.run(["true"])
                n = 30
                t0 = time.perf_counter()
                for _ in range(n):
                    c.run(["true"])
                api_rtt = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(5):
            box(home, "exec", "one", "--", "true")
        cli_rtt = (time.perf_counter() - t0) / 5
        box(home, "delete", "-f", str(boxfile))
        krun_line = libkrun_vs_qemu(home, boxfile, statistics.median(ours), args.rounds)
    r, o = statistics.median(raw), statistics.median(ours)
    print(f"raw qemu boot to power-off (baseline): {r:6.2f} s (median of {args.rounds})")
    print(f"box apply -> first exec true:          {o:6.2f} s")
    print(f"ratio: {o / r:.2f}  (goal now <= 1.5; a snapshot or smaller kernel can go below 1.0)")
    print(f"exec round trip `true`: Python API {api_rtt * 1000:.1f} ms, CLI {cli_rtt * 1000:.0f} ms")
    print(krun_line)


def libkrun_vs_qemu(home: Path, boxfile: Path, qemu_seconds: float, rounds: int) -> str:
    """The same apply -> exec with --driver libkrun, where this host can boot it."""
    from a3s_box.drivers.krun import host_support

    support = host_support(Home(home))
    if not support.usable:
        return f"libkrun: not measured here: {support.detail}"
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        box(home, "apply", "-q", "--driver", "libkrun", "-f", str(boxfile))
        box(home, "exec", "one", "--", "true")
        times.append(time.perf_counter() - t0)
        box(home, "delete", "-f", str(boxfile))
    k = statistics.median(times)
    return f"libkrun cold start: {k:.2f} s; ratio libkrun / qemu: {k / qemu_seconds:.2f} (goal <= 0.5 on KVM)"


if __name__ == "__main__":
    main()
