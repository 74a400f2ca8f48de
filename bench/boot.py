"""Boot benchmark: from `box apply` (image cached) to the first `box exec ... true`
answering, as a ratio to raw QEMU booting the same kernel with a minimal busybox
initramfs that powers off, on the same accelerator, in the same run. Also: the exec
round trip for `true` on a running box (Python API and CLI), and libkrun against QEMU
where this host can boot libkrun.

    python3 bench/boot.py [--rounds 3] [-v]        (goal now: ratio <= 1.5)
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path

from scratch import Scratch

from a3s_box.drivers.common.artifacts import ensure_guest_artifacts
from a3s_box.drivers.common.cpio import Entry, gzip_newc
from a3s_box.drivers.qemu.probe import probe_accelerators
from a3s_box.drivers.qemu.argv import QemuSpec, qemu_argv, read_host_tsc_khz
from a3s_box.home import Home

ONE = """project: bench
boxes:
  one:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 100000"]}}
"""


def raw_qemu(home: Home, tmp: Path) -> float:
    art = ensure_guest_artifacts(home)
    accel = probe_accelerators(home, "qemu-system-x86_64", art).accel
    entries = [Entry.dir("bin"), Entry.file("bin/busybox", Path("/bin/busybox").read_bytes(), 0o755),
               Entry.file("init", b"#!/bin/busybox sh\n/bin/busybox poweroff -f\n", 0o755),
               Entry.dir("dev")]
    initrd = tmp / "poweroff.cpio.gz"
    initrd.write_bytes(gzip_newc(entries))
    spec = QemuSpec(binary="qemu-system-x86_64", accel=accel, vcpus=1, memory_mib=256,
                    kernel=art.kernel, initramfs=initrd, console_log=tmp / "raw.log",
                    channel=None, qmp=None, tsc_khz=read_host_tsc_khz())
    t0 = time.perf_counter()
    subprocess.run(qemu_argv(spec), check=True, timeout=120, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def apply_to_exec(s: Scratch, boxfile: Path, *flags: str) -> float:
    t0 = time.perf_counter()
    s.box("apply", "-q", *flags, "-f", str(boxfile))
    s.box("exec", "one", "--", "true")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    with Scratch() as s:
        boxfile = s.boxfile("Boxfile.yaml", ONE)
        s.box("apply", "-q", "-f", str(boxfile))  # "image cached": imported, base disk built
        s.box("delete", "-f", str(boxfile))
        home = Home(s.home)
        raw, ours = [], []
        for i in range(args.rounds):
            raw.append(raw_qemu(home, s.dir))
            ours.append(apply_to_exec(s, boxfile))
            if args.verbose:
                print(f"  round {i}: raw qemu {raw[-1]:.2f} s, apply -> exec {ours[-1]:.2f} s")
            if i != args.rounds - 1:
                s.box("delete", "-f", str(boxfile))
        import a3s_box

        with a3s_box.Host(s.home) as host, host.client(host.find("one")) as c:
            c.run(["true"])
            t0 = time.perf_counter()
            for _ in range(30):
                c.run(["true"])
            api_rtt = (time.perf_counter() - t0) / 30
        cli_rtt = statistics.median(s.box("exec", "one", "--", "true") for _ in range(5))
        s.box("delete", "-f", str(boxfile))
        krun_line = libkrun_vs_qemu(s, boxfile, statistics.median(ours), args.rounds)
    r, o = statistics.median(raw), statistics.median(ours)
    print(f"raw qemu boot to power-off (baseline): {r:6.2f} s (median of {args.rounds})")
    print(f"box apply -> first exec true:          {o:6.2f} s")
    print(f"ratio: {o / r:.2f}  (goal now <= 1.5; a snapshot or smaller kernel can go below 1.0)")
    print(f"exec round trip `true`: Python API {api_rtt * 1000:.1f} ms, CLI {cli_rtt * 1000:.0f} ms")
    print(krun_line)


def libkrun_vs_qemu(s: Scratch, boxfile: Path, qemu_seconds: float, rounds: int) -> str:
    """The same apply -> exec with --driver libkrun, where this host can boot it."""
    from a3s_box.drivers.krun import host_support

    support = host_support(Home(s.home))
    if not support.usable:
        return f"libkrun: not measured here: {support.detail}"
    times = []
    for _ in range(rounds):
        times.append(apply_to_exec(s, boxfile, "--driver", "libkrun"))
        s.box("delete", "-f", str(boxfile))
    k = statistics.median(times)
    return f"libkrun cold start: {k:.2f} s; ratio libkrun / qemu: {k / qemu_seconds:.2f} (goal <= 0.5 on KVM)"


if __name__ == "__main__":
    main()
