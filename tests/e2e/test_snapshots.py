"""Boxes start as clones of a snapshot template (real VMs): clones do not share RNG state
or files, a different size uses a different template, a broken template falls back to a
cold boot that says so, and a restart of a clone boots cold from its own disk."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from a3s_box.drivers.qemu.qmp import Qmp
from tests.e2e.conftest import BoxCli, boxfile

pytestmark = pytest.mark.vm

TWO = """project: snaps
boxes:
  c1:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
  c2:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
"""


def _boot(box: BoxCli) -> dict[str, str]:
    return {b["name"]: b["boot"] for b in box("ps", "-o", "json", check=True).json()}


def _qemu_of(home: Path, box_id: str) -> tuple[list[str], str]:
    """The argv and /proc status of the box's QEMU."""
    for d in Path("/proc").iterdir():
        try:
            argv = (d / "cmdline").read_bytes().decode().split("\0")
            if argv[0].endswith("qemu-system-x86_64") and any(f"{home}/boxes/{box_id}/" in a for a in argv):
                return argv, (d / "status").read_text()
        except (OSError, UnicodeDecodeError):
            continue
    raise AssertionError(f"no QEMU for {box_id}")


def test_clones_of_one_template(box: BoxCli, hello_image: Path, tmp_path: Path) -> None:
    f = boxfile(tmp_path, hello_image, TWO)
    box("apply", "-f", str(f), check=True)
    boots = _boot(box)
    assert boots["c1"].startswith("snapshot ") and boots["c1"] == boots["c2"], boots
    outs = [box("exec", n, "--", "sh", "-c", "head -c 32 /dev/urandom | md5sum; date +%s", check=True).out.split()
            for n in ("c1", "c2")]
    # a clone's QEMU is not handed the kernel and initramfs (its RAM holds them booted),
    # and under TCG takes no huge pages for its code cache
    argv, status = _qemu_of(box.home, "snaps.c1")
    assert "-incoming" in argv and "-kernel" not in argv and "-initrd" not in argv, argv
    if "tcg" in " ".join(argv):
        assert "THP_enabled:\t0" in status
    assert outs[0][0] != outs[1][0]  # reseeded: no shared RNG state
    assert all(abs(int(o[-1]) - time.time()) < 3 for o in outs)  # the clock is now, not the template's
    box("exec", "c1", "--", "sh", "-c", "echo mine > /root/f && sync", check=True)
    assert box("exec", "c2", "--", "cat", "/root/f").code != 0
    # a restart boots cold from the clone's own disk, which kept the file
    box("stop", "c1", check=True)
    box("start", "c1", check=True)
    assert box("exec", "c1", "--", "cat", "/root/f", check=True).out == "mine\n"
    assert _boot(box)["c1"] == "cold"
    # another memory size: another template
    big = tmp_path / "big.yaml"
    big.write_text("boxes:\n  c2:\n    resources: {memory: 320Mi}\n")
    box("apply", "-f", str(f), "-f", str(big), check=True)
    assert _boot(box)["c2"].startswith("snapshot ") and _boot(box)["c2"] != boots["c2"]
    keys = box("snapshot", "ls", "-o", "json", check=True).json()
    assert len({k["key"] for k in keys}) >= 2
    box("delete", "-f", str(f), check=True)


SHARES = """project: shares
boxes:
  s1:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
    volumes: ["./one:/work", "./ro:/ro:ro"]
  s2:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
    volumes: ["./two:/work", "./ro:/ro:ro"]
"""


def test_clones_get_their_own_bind_volumes_hot_plugged(box: BoxCli, hello_image: Path, tmp_path: Path) -> None:
    for name in ("one", "two", "ro"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "mine").write_text(f"{name}\n")
    f = boxfile(tmp_path, hello_image, SHARES)
    box("apply", "-f", str(f), check=True)
    boots = _boot(box)
    # one template (no share in it: vhost-user-fs is not migratable), each clone's plugged in
    assert boots["s1"].startswith("snapshot ") and boots["s1"] == boots["s2"], boots
    assert box("exec", "s1", "--", "cat", "/work/mine", check=True).out == "one\n"
    assert box("exec", "s2", "--", "cat", "/work/mine", check=True).out == "two\n"
    box("exec", "s1", "--", "sh", "-c", "echo from-s1 > /work/new", check=True)
    assert (tmp_path / "one" / "new").read_text() == "from-s1\n" and not (tmp_path / "two" / "new").exists()
    # root in a clone remounts its read-only share read-write: the host side still refuses
    r = box("exec", "s2", "--", "sh", "-c", "mount -o remount,rw /ro; echo x > /ro/mine")
    assert r.code != 0 and (tmp_path / "ro" / "mine").read_text() == "ro\n"
    # its RAM is its own memfd (virtiofsd sees what it writes), the template's file not in its jail
    argv, _status = _qemu_of(box.home, "shares.s1")
    line = " ".join(argv)
    assert "mem-path=/proc/self/fd/" in line and "/snapshots/" not in line and "-kernel" not in line, line
    assert "vhost-user-fs" not in line  # hot-plugged over QMP, not on its command line
    box("delete", "-f", str(f), check=True)


PREPARED = """project: prepared
boxes:
  p1:
    image: hello
    resources: {memory: 176Mi}
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
    volumes: [{type: tmpfs, target: /scratch, size: 4Mi}]
  p2:
    image: hello
    hostname: other-name
    resources: {memory: 176Mi}
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
    volumes: [{type: tmpfs, target: /scratch, size: 4Mi}]
  p3:
    image: hello
    resources: {memory: 176Mi}
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"], isolate: [mount, pid]}}
    volumes: [{type: tmpfs, target: /scratch, size: 4Mi}]
    depends_on: [p1]
  p4:
    image: hello
    resources: {memory: 176Mi}
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
    depends_on: [p3]
"""

AGENT_VIEW = ("hostname; echo $$; ls /proc | grep -c '^[0-9]'; "
              "grep -c ' /scratch tmpfs' /proc/self/mounts; readlink /proc/self/ns/uts; readlink /proc/self/ns/mnt")


def test_clones_adopt_the_templates_agent_namespaces_or_make_their_own(
        box: BoxCli, hello_image: Path, tmp_path: Path) -> None:
    """The template made the agent's namespaces before its snapshot (PREPARE): a clone
    isolated the same way adopts them, named as itself, and sees the volumes mounted
    after the restore; a clone isolated otherwise makes its own. Fails if a clone's
    agent shares a hostname, a process table or mounts it should not."""
    f = boxfile(tmp_path, hello_image, PREPARED)
    box("apply", "-f", str(f), check=True)
    boots = _boot(box)
    assert boots["p1"].startswith("snapshot ") and boots["p1"] == boots["p2"] == boots["p3"], boots
    # the template's disk has the folder its boxes mount /scratch on (PREPARE made it; its
    # key names it): a box without that volume has a template of its own, and no folder
    assert boots["p4"].startswith("snapshot ") and boots["p4"] != boots["p1"], boots
    assert box("exec", "p4", "--", "sh", "-c", "test -e /scratch || echo absent", check=True).out.strip() == "absent"
    # the template settled before its snapshot: the boot's delayed kernel work (2 s of
    # uptime) done, which every clone would otherwise run again (a cold boot answers ~1.5 s in)
    key = boots["p1"].split()[1]
    meta = json.loads(next((box.home / "cache" / "snapshots").glob(f"{key}*/meta.json")).read_text())
    assert meta["guest_settled_ms"] >= 2000, meta
    # ... and read its agent's program into its page cache (guest/init/warm.c): a clone
    # reads the whole of it without touching its disk (sectors read, before and after)
    assert meta["guest_warmed_kib"] > 0, meta
    template_console = next((box.home / "cache" / "snapshots").glob(f"{key}*/console.log")).read_text()
    assert "warmed /bin/sh (" in template_console
    reads = box("exec", "p1", "--", "sh", "-c", "r() { awk '$3 == \"vda\" { print $6 }' /proc/diskstats; }; "
                "r; cat /bin/sh > /dev/null; r", check=True).out.split()
    assert len(reads) == 2 and reads[0] == reads[1], reads
    # reading a file writes nothing either: the root is mounted noatime (guest/init/boot.c)
    root_opts = box("exec", "--ns", "root", "p1", "--", "awk", "$2 == \"/\" { print $4 }", "/proc/mounts",
                    check=True).out.split()
    assert root_opts and "noatime" in root_opts[-1].split(","), root_opts
    view = {n: box("exec", n, "--", "sh", "-c", AGENT_VIEW, check=True).out.split() for n in ("p1", "p2", "p3")}
    root = {n: box("exec", "--ns", "root", n, "--", "sh", "-c", "hostname; readlink /proc/self/ns/uts",
                   check=True).out.split() for n in ("p1", "p2")}
    for name, host in (("p1", "p1"), ("p2", "other-name")):
        hostname, pid, procs, scratch, uts, _mnt = view[name]
        assert hostname == host and root[name][0] == host, (view, root)
        assert uts != root[name][1]  # the agent's own UTS namespace, named as the box
        assert int(pid) > 1 and int(procs) < 8  # its own PID namespace: sleep, sh and a few
        assert scratch == "1"  # mounted after the restore, seen in the prepared namespace
    hostname, _pid, procs, scratch, _uts, _mnt = view["p3"]
    assert hostname == "p3" and int(procs) < 8 and scratch == "1"  # its own namespaces, made after MOUNT
    # nothing the agent mounts reaches init's namespace
    box("exec", "p1", "--", "sh", "-c", "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m", check=True)
    assert box("exec", "--ns", "root", "p1", "--", "sh", "-c", "grep -c ' /tmp/m ' /proc/self/mounts").out.strip() == "0"
    box("delete", "-f", str(f), check=True)


def test_a_broken_template_falls_back_to_a_cold_boot(box: BoxCli, hello_image: Path, tmp_path: Path) -> None:
    f = boxfile(tmp_path, hello_image, TWO.replace("  c2:\n", "  c3:\n").replace("snaps", "broken"))
    box("apply", "-f", str(f), check=True)
    key = _boot(box)["c1"].split()[1]
    box("delete", "-f", str(f), check=True)
    state = next((box.home / "cache" / "snapshots").glob(f"{key}*/state"))
    state.write_bytes(b"\0" * 4096)  # corrupted
    box("apply", "-f", str(f), check=True)
    boots = _boot(box)
    assert all(boots[n].startswith("cold (snapshot restore failed") for n in ("c1", "c3")), boots
    assert box("exec", "c1", "--", "true").code == 0
    box("delete", "-f", str(f), check=True)


COUNTER = """project: forks
boxes:
  src:
    image: hello
    namespaces:
      agent:
        command: ["/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/n.t; mv /tmp/n.t /tmp/n; sleep 0.2; done"]
"""


def _count(box: BoxCli, name: str) -> int:
    return int(box("exec", name, "--", "cat", "/tmp/n", check=True).out)


def _rising(box: BoxCli, name: str) -> int:
    first = _count(box, name)
    deadline = time.monotonic() + 30
    while (now := _count(box, name)) <= first and time.monotonic() < deadline:
        time.sleep(0.3)
    assert now > first, f"{name}: its counter stopped at {first}"
    return now


def test_fork_keeps_the_running_processes_and_splits_the_disk(box: BoxCli, hello_image: Path,
                                                              tmp_path: Path) -> None:
    f = boxfile(tmp_path, hello_image, COUNTER)
    box("apply", "-f", str(f), check=True)
    box("exec", "src", "--", "sh", "-c", "echo before > /root/before && sync", check=True)
    _rising(box, "src")
    at_fork = _count(box, "src")
    r = box("fork", "src", "--name", "copy", check=True)
    assert "copy: forked from src" in r.out
    # the fork's agent is the source's, mid-run: its counter goes on from where it was
    assert _count(box, "copy") >= at_fork
    _rising(box, "copy")
    _rising(box, "src")
    boots = _boot(box)
    assert boots["copy"] == "fork of forks.src", boots
    # both see the disk as it was, then diverge
    for n in ("src", "copy"):
        assert box("exec", n, "--", "cat", "/root/before", check=True).out == "before\n"
    box("exec", "src", "--", "sh", "-c", "echo s > /root/only-src && sync", check=True)
    box("exec", "copy", "--", "sh", "-c", "echo c > /root/only-copy && sync", check=True)
    assert box("exec", "copy", "--", "cat", "/root/only-src").code != 0
    assert box("exec", "src", "--", "cat", "/root/only-copy").code != 0
    rnd = [box("exec", n, "--", "sh", "-c", "head -c 32 /dev/urandom | md5sum", check=True).out
           for n in ("src", "copy")]
    assert rnd[0] != rnd[1]
    # the frozen layer is listed with both boxes on it, and cannot be removed under them
    # (the snapshot store is shared by the test homes: other tests' layers may be there)
    layers = [s for s in box("snapshot", "ls", "-o", "json", check=True).json()
              if s["kind"] == "fork" and s["boxes"]]
    assert len(layers) == 1 and layers[0]["boxes"] == "copy, src", layers
    r = box("snapshot", "rm", layers[0]["key"])
    assert r.code != 0 and "sit on it" in r.err
    # no Boxfile manages the fork: apply leaves it alone
    r = box("apply", "-f", str(f), check=True)
    assert "copy" not in r.out + r.err
    # restarts boot cold from each box's own disk, which kept what it wrote
    for n, own in (("src", "only-src"), ("copy", "only-copy")):
        box("stop", n, check=True)
        box("start", n, check=True)
        assert box("exec", n, "--", "cat", f"/root/{own}", "/root/before", check=True).out.split()[-1] == "before"
    box("delete", "copy", check=True)
    box("delete", "-f", str(f), check=True)
    r = box("snapshot", "prune", check=True)
    assert layers[0]["key"][:12] in r.out
    assert box("fork", "nosuch", "--name", "x").code != 0


PARKED = """project: parked
boxes:
  agent:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "date +%s > /tmp/started; exec sleep 2147483647"]}}
    volumes: ["./shared:/shared"]
pools:
  warm: {box: agent, min_ready: 2, max: 4, park: true}
"""


def test_a_parked_pool_hands_over_running_boxes(box: BoxCli, hello_image: Path, tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "hello").write_text("from the host\n")
    f = boxfile(tmp_path, hello_image, PARKED)
    box("apply", "-f", str(f), check=True)
    members = box("ps", "-o", "json", check=True).json()
    assert sorted(m["status"] for m in members) == ["parked", "parked"], members
    assert all(m["boot"].startswith("snapshot ") for m in members), members
    r = box("exec", members[0]["name"], "--", "true")
    assert r.code != 0 and "parked member of pool warm" in r.err
    for m in members:  # parked: loaded, its vCPUs stopped (no CPU, no memory touched)
        with Qmp(box.home / "boxes" / m["id"] / "vmm" / "qmp.sock", m["name"]) as q:
            assert q.command("query-status")["status"] == "paused"
    taken = []
    for job in ("job1", "job2"):
        got = box("pool", "acquire", "warm", "--name", job, "-o", "json", check=True).json()
        taken.append(got["name"])
        # the agent started on acquire, not at boot: it stamps the time it began
        started = int(box("exec", job, "--", "cat", "/tmp/started", check=True).out)
        assert abs(started - time.time()) < 5
        # its share was hot-plugged while it was parked, and mounted once it ran
        assert box("exec", job, "--", "cat", "/shared/hello", check=True).out == "from the host\n"
    rnd = [box("exec", n, "--", "sh", "-c", "head -c 32 /dev/urandom | md5sum", check=True).out for n in taken]
    assert rnd[0] != rnd[1]
    status = {m["name"]: m["status"] for m in box("ps", "-o", "json", check=True).json()}
    assert status["job1"] == status["job2"] == "running"
    box("delete", "-f", str(f), check=True)


def test_kill_9_while_making_a_template_leaves_nothing_half_made(box: BoxCli, hello_image: Path,
                                                                tmp_path: Path) -> None:
    f = boxfile(tmp_path, hello_image, TWO.replace("snaps", "killed").replace(
        "image: hello\n", "image: hello\n    resources: {memory: 272Mi}\n"))
    snaps = box.home / "cache" / "snapshots"
    before = {s["key"] for s in box("snapshot", "ls", "-o", "json", check=True).json()}
    proc = box.popen("apply", "-f", str(f))
    deadline = time.monotonic() + 120
    while not list(snaps.glob(".tmp-*/console.log")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(snaps.glob(".tmp-*")), "the template was never started"
    time.sleep(0.5)  # mid-boot
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    after = {s["key"] for s in box("snapshot", "ls", "-o", "json", check=True).json()}
    assert after == before  # the staging folder is no template
    box("apply", "-f", str(f), check=True)  # recovers, builds the template again
    boots = _boot(box)
    assert boots["c1"].startswith("snapshot ") and boots["c1"] == boots["c2"], boots
    assert not [d for d in snaps.glob(".tmp-*")], "a dead builder's staging folder is left"
    box("delete", "-f", str(f), check=True)
