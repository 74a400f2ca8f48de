"""Boot benchmark: from `box apply` (image cached) to the first `box exec ... true`
answering, cold and from a snapshot template, each as a ratio to raw QEMU booting the
same kernel with a minimal busybox initramfs that powers off, on the same accelerator,
in the same run. Also: a start from a snapshot through the Python API; a pool of 8
filled from empty, cold against snapshot; the memory (Pss) of 8 idle boxes booted cold,
as clones and parked; the exec round trip for `true` (Python API and CLI); libkrun
against QEMU where this host can boot libkrun.

    python3 bench/boot.py [--rounds 3] [-v]
    goals: snapshot apply -> exec <= 0.5 x raw QEMU; API start (to the first exec) < 150 ms,
           a connected box's < 250 ms (--connected);
           a confined VMM's cold start <= 1.1 x an unconfined one
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
    boot: {boot}
    namespaces: {{agent: {{command: ["/bin/sh", "-c", "exec sleep 100000"]}}}}
"""
POOL = """project: poolfill
boxes:
  member:
    image: hello
    boot: {boot}
    namespaces: {{agent: {{command: ["/bin/sh", "-c", "exec sleep 100000"]}}}}
pools:
  eight: {{box: member, min_ready: 8, max: 8, park: {park}, idle_timeout: 1h}}
"""


def pss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total / 1024


def qemu_pids(home: Path) -> list[int]:
    needle = str(home / "boxes").encode()
    out = []
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if cmd.split(b"\0")[0].endswith(b"qemu-system-x86_64") and needle in cmd:
            out.append(int(d.name))
    return out


def pool_fill(s: Scratch, boot: str, park: bool) -> tuple[float, float]:
    """Seconds to fill a pool of 8 from empty, and the Pss of its 8 idle members (MiB)."""
    boxfile = s.boxfile(f"pool-{boot}-{park}.yaml", POOL.format(boot=boot, park=str(park).lower()))
    seconds = s.box("apply", "-q", "-f", str(boxfile))
    time.sleep(2)  # settle: the guests idle
    mib = pss_mib(qemu_pids(s.home))
    s.box("delete", "-f", str(boxfile))
    return seconds, mib


def confined_vs_not(s: Scratch, rounds: int) -> tuple[float, float]:
    """A cold start through the driver (start -> first exec), with the VMM confined
    (security: strict) and with nothing of a3s_box.jail applied; medians in seconds."""
    import a3s_box.drivers.qemu.driver as qd
    from a3s_box.drivers.base import BoxLaunch
    from a3s_box.guest.client import GuestClient
    from a3s_box.guest.protocol import BoxConfig
    from a3s_box.image.store import ImageStore

    home = Home(s.home)
    store = ImageStore(home)
    record = store.list()[0]
    strict = qd.security_level  # type: ignore[attr-defined]  # the driver's own reference, swapped below
    out: dict[bool, list[float]] = {True: [], False: []}
    for i in range(rounds):
        for confined in (True, False):
            qd.security_level = (strict if confined  # type: ignore[attr-defined]
                                 else (lambda *_a: (False, False, False, "none")))
            rundir = home.box_dir(f"bench.c{i}{int(confined)}")
            rundir.mkdir(parents=True)
            launch = BoxLaunch(rundir.name, rundir, 1, 256, BoxConfig(hostname="c", argv=("/bin/sleep", "1000")),
                               disk=store.create_box_disk(record, rundir / "disk.qcow2"), boot="cold",
                               image=record.digest)
            driver = qd.QemuDriver(home)
            t0 = time.perf_counter()
            handle = driver.start(launch, 120)
            with GuestClient(driver.connect(handle, 5), box=rundir.name) as c:
                c.hello(5)
                c.run(["true"])
            out[confined].append(time.perf_counter() - t0)
            driver.stop(handle, 10)
    qd.security_level = strict  # type: ignore[attr-defined]
    return statistics.median(out[True]), statistics.median(out[False])


API_ROUNDS = 11  # a start is ~0.3 s: enough rounds for a median the host's noise moves little


def api_start(s: Scratch, boxfile: Path, rounds: int) -> tuple[float, float, float]:
    """In-process, one box from its template ready: (host.apply returning with the box
    running and its agent started, the same to its first exec answered); medians; and
    the share of rounds whose first exec was answered within API_GOAL."""
    import a3s_box

    started, answered = [], []
    with a3s_box.Host(s.home) as host:
        bf = host.load([boxfile])
        host.apply(bf)  # the process's first start imports what later ones find loaded
        host.delete("one")
        for _ in range(rounds):
            t0 = time.perf_counter()
            host.apply(bf)
            started.append(time.perf_counter() - t0)
            with host.client(host.find("one")) as c:
                c.run(["true"])
            answered.append(time.perf_counter() - t0)
            host.delete("one")
    within = sum(a < API_GOAL for a in answered) / len(answered)
    return statistics.median(started), statistics.median(answered), within


API_GOAL = 0.25  # issue 26: a start through the Python API from a template, under TCG


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
    ap.add_argument("--connected", action="store_true", help="only the connected boxes' figures")
    args = ap.parse_args()
    if args.connected:
        with Scratch() as s:
            print(connected(s, Home(s.home), args.rounds))
        return
    with Scratch() as s:
        cold_f = s.boxfile("cold.yaml", ONE.format(boot="cold"))
        snap_f = s.boxfile("snap.yaml", ONE.format(boot="snapshot"))
        s.box("apply", "-q", "-f", str(snap_f))  # image cached, base disk and template built
        s.box("delete", "-f", str(snap_f))
        home = Home(s.home)
        raw, cold, snap = [], [], []
        for i in range(args.rounds):
            raw.append(raw_qemu(home, s.dir))
            cold.append(apply_to_exec(s, cold_f))
            s.box("delete", "-f", str(cold_f))
            snap.append(apply_to_exec(s, snap_f))
            if args.verbose:
                print(f"  round {i}: raw qemu {raw[-1]:.2f} s, apply -> exec cold {cold[-1]:.2f} s, "
                      f"snapshot {snap[-1]:.2f} s")
            if i != args.rounds - 1:
                s.box("delete", "-f", str(snap_f))
        import a3s_box

        with a3s_box.Host(s.home) as host, host.client(host.find("one")) as client:
            client.run(["true"])
            t0 = time.perf_counter()
            for _ in range(30):
                client.run(["true"])
            api_rtt = (time.perf_counter() - t0) / 30
        cli_rtt = statistics.median(s.box("exec", "one", "--", "true") for _ in range(5))
        s.box("delete", "-f", str(snap_f))
        api = api_start(s, snap_f, max(args.rounds, API_ROUNDS))
        fills = {(b, p): pool_fill(s, b, p) for b, p in (("cold", False), ("snapshot", False), ("snapshot", True))}
        confined, unconfined = confined_vs_not(s, args.rounds)
        krun_line = libkrun_vs_qemu(s, cold_f, statistics.median(cold), args.rounds)
    r, c, o = statistics.median(raw), statistics.median(cold), statistics.median(snap)
    print(f"raw qemu boot to power-off (baseline): {r:6.2f} s (median of {args.rounds})")
    print(f"box apply -> first exec, cold:         {c:6.2f} s  ratio {c / r:.2f}")
    print(f"box apply -> first exec, snapshot:     {o:6.2f} s  ratio {o / r:.2f}  (goal <= 0.5)")
    print(f"start from a snapshot, Python API:     {api[0] * 1000:6.0f} ms to started, {api[1] * 1000:.0f} ms to "
          f"the first exec answered  ratio to raw {api[1] / r:.3f}  (goal < 150 ms)")
    (fc, mc), (fs, ms), (fp, mp) = fills[("cold", False)], fills[("snapshot", False)], fills[("snapshot", True)]
    print(f"pool of 8 from empty: cold {8 / fc:.2f} boxes/s, snapshot {8 / fs:.2f} boxes/s "
          f"(ratio {fc / fs:.1f}), parked {8 / fp:.2f} boxes/s")
    print(f"Pss of 8 idle boxes: cold {mc:.0f} MiB, clones {ms:.0f} MiB ({ms / mc:.2f}), "
          f"parked {mp:.0f} MiB ({mp / mc:.2f})")
    print(f"exec round trip `true`: Python API {api_rtt * 1000:.1f} ms, CLI {cli_rtt * 1000:.0f} ms")
    print(f"cold start, VMM confined (strict) / unconfined: {confined:.2f} s / {unconfined:.2f} s = "
          f"{confined / unconfined:.2f}  (goal <= 1.1)")
    print(krun_line)
    with Scratch() as s:
        print(connected(s, Home(s.home), args.rounds))


CONNECTED = """project: conn
boxes:
  one:
    image: hello
    resources: {{memory: 256Mi}}
    namespaces: {{agent: {{command: ["/bin/sh", "-c", "exec sleep 100000"]}}}}
    network: {{mode: allowlist, egress: ["api.example.com:443"]}}
    secrets: {{TOKEN: {{env: BENCH_TOKEN, hosts: ["api.example.com:443"]}}}}
    volumes: [{{type: tmpfs, target: /scratch, size: 8Mi}}]
{more}"""
CONNECTED_POOL = """  member:  # as `one` above: its template is there (a template's key names its volumes' folders)
    image: hello
    resources: {{memory: 256Mi}}
    namespaces: {{agent: {{command: ["/bin/sh", "-c", "exec sleep 100000"]}}}}
    network: {{mode: allowlist, egress: ["api.example.com:443"]}}
    secrets: {{TOKEN: {{env: BENCH_TOKEN, hosts: ["api.example.com:443"]}}}}
    volumes: [{{type: tmpfs, target: /scratch, size: 8Mi}}]
pools:
  eight: {{box: member, min_ready: 8, max: 8, park: {park}, idle_timeout: 1h}}
"""


def host_pids(home: Path) -> tuple[list[int], list[int]]:
    """(QEMU, every other process of the home's boxes: shims, network helpers, virtiofsd,
    and the home's egress daemon and fork server)."""
    needle = str(home / "boxes").encode()
    qemu: list[int] = []
    other: list[int] = []
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if not d.name.isdigit():
            continue
        if needle in cmd:
            (qemu if cmd.split(b"\0")[0].endswith(b"qemu-system-x86_64") else other).append(int(d.name))
        elif (b"a3s_box.network.daemon\0" + str(home).encode() in cmd
              or cmd.startswith(b"a3s_box.forkserver.server " + str(home).encode() + b"\0")):
            other.append(int(d.name))  # the egress daemon, the fork server: their share is per box
    return qemu, other


def is_shared(pid: int) -> bool:
    """The egress daemon and the fork server: one per home, whatever the number of boxes."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"a3s_box.network.daemon\0" in cmd or cmd.startswith(b"a3s_box.forkserver.server ")


def by_kind(pids: list[int]) -> str:
    """'4 x a3s_box.drivers.qemu.shim 6.4 MiB, ...': the Pss of each kind of process."""
    kinds: dict[str, list[int]] = {}
    for pid in pids:
        try:
            words = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ").split()
        except OSError:
            continue
        name = next((w.decode() for w in words if w.startswith(b"a3s_box.")), words[0].decode() if words else "?")
        kinds.setdefault(name.rsplit("/", 1)[-1], []).append(pid)
    return ", ".join(f"{len(p)} x {k} {pss_mib(p) / len(p):.1f} MiB" for k, p in sorted(kinds.items()))


def connected(s: Scratch, home: Home, rounds: int) -> str:
    """A box with an allow-list, a secret and a tmpfs: apply -> first exec from its template
    against raw QEMU; a start through the Python API; a pool of 8 filled, running and
    parked, with the Pss per box of QEMU and of everything else apart (the box's own
    processes, and the home's shared ones divided among its boxes)."""
    s.env["BENCH_TOKEN"] = "bench-secret-value"
    one = s.boxfile("conn.yaml", CONNECTED.format(more=""))
    s.box("apply", "-q", "-f", str(one))  # the template
    s.box("delete", "-f", str(one))
    raw, snap = [], []
    for _ in range(rounds):
        raw.append(raw_qemu(home, s.dir))
        snap.append(apply_to_exec(s, one))
        s.box("delete", "-f", str(one))
    import os

    os.environ["BENCH_TOKEN"] = "bench-secret-value"  # the in-process start reads it here
    api = api_start(s, one, max(rounds, API_ROUNDS))
    lines = []
    r, o = statistics.median(raw), statistics.median(snap)
    lines.append(f"connected box (allow-list, secret, tmpfs): apply -> first exec from a snapshot {o:.2f} s, "
                 f"ratio to raw qemu {o / r:.2f}  (goal <= 0.5); Python API start {api[0] * 1000:.0f} ms to started, "
                 f"{api[1] * 1000:.0f} ms to the first exec answered (goal < 250 ms; {api[2]:.0%} of "
                 f"{max(rounds, API_ROUNDS)} starts within it)")
    for park in (False, True):
        f = s.boxfile(f"conn-pool-{park}.yaml", CONNECTED.format(more="") .split("boxes:")[0] + "boxes:\n"
                      + CONNECTED_POOL.format(park=str(park).lower()))
        seconds = s.box("apply", "-q", "-f", str(f))
        time.sleep(2)
        qemu, other = host_pids(s.home)
        n = max(len(qemu), 1)
        shared = [pid for pid in other if is_shared(pid)]
        own = pss_mib([pid for pid in other if pid not in shared]) / n
        lines.append(f"pool of 8 connected boxes, {'parked' if park else 'running'}: filled at {8 / seconds:.2f} "
                     f"boxes/s; Pss per box: QEMU {pss_mib(qemu) / n:.0f} MiB, the other host processes "
                     f"{pss_mib(other) / n:.1f} MiB (goal <= 5) = {own:.2f} of the box's own + "
                     f"{pss_mib(shared):.1f} MiB shared by the home's boxes / {n} "
                     f"({len(other)} processes for {len(qemu)} boxes: {by_kind(other)})")
        s.box("delete", "-f", str(f))
    return "\n".join(lines)


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
