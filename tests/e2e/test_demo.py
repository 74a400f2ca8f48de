"""The demo, end to end through the `box` CLI on real microVMs (TCG here, KVM where
the host can): apply, ps, exec, namespaces, logs, change, drift, stop/start, delete."""
from __future__ import annotations

import os
import platform
import signal
import shutil
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, BoxCli

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def demo(box: BoxCli, hello_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo")
    shutil.copy(ROOT / "examples/hello/Boxfile.yaml", folder / "Boxfile.yaml")
    (folder / "image").symlink_to(hello_image)
    r = box("apply", "-f", str(folder / "Boxfile.yaml"))
    assert r.code == 0, r.err
    assert 'Project "hello": converged (3 changed).' in r.out
    return folder / "Boxfile.yaml"


def _ps(box: BoxCli) -> dict[str, dict[str, object]]:
    return {b["name"]: b for b in box("ps", "-o", "json", check=True).json()}


def test_apply_boots_both_boxes(box: BoxCli, demo: Path) -> None:
    ps = _ps(box)
    assert sorted(ps) == ["agent", "db"]
    assert {b["status"] for b in ps.values()} == {"running"}
    assert all(b["accel"] in ("kvm", "tcg") for b in ps.values())
    assert ps["agent"]["detail"] == "agent running"


def test_the_guest_runs_its_own_kernel(box: BoxCli, demo: Path) -> None:
    r = box("exec", "agent", "--", "uname", "-r", check=True)
    assert r.out.strip() and r.out.strip() != platform.release()


def test_exit_codes_and_separate_streams(box: BoxCli, demo: Path) -> None:
    r = box("exec", "db", "--", "sh", "-c", "echo to-out; echo to-err >&2; exit 7")
    assert (r.code, r.out, r.err) == (7, "to-out\n", "to-err\n")
    r = box("exec", "db", "--", "no-such-command")
    assert r.code == 127 and "No such file or directory" in r.err


def test_stdin_is_forwarded_with_i(box: BoxCli, demo: Path) -> None:
    r = box("exec", "-i", "db", "--", "sh", "-c", "tr a-z A-Z", stdin="hello\n")
    assert (r.code, r.out) == (0, "HELLO\n")


def test_the_root_is_the_image_with_its_layers_applied(box: BoxCli, demo: Path) -> None:
    r = box("exec", "agent", "--", "sh", "-c",
            "cat /etc/motd; test -e /etc/draft.txt && echo draft-present || echo draft-gone; "
            "test -x /app/agent.sh && echo agent-script", check=True)
    assert r.out.splitlines() == ["Welcome to an a3s-box microVM.", "draft-gone", "agent-script"]


def test_the_agent_runs_the_images_entrypoint_and_env(box: BoxCli, demo: Path) -> None:
    r = box("exec", "agent", "--", "sh", "-c", "echo $GREETING $LOG_LEVEL; pwd; cat /tmp/agent-tick",
            check=True)
    lines = r.out.splitlines()
    assert lines[0] == "hello info" and lines[1] == "/app" and lines[2].startswith("agent: tick")


def test_business_namespace_cannot_see_or_signal_the_agent(box: BoxCli, demo: Path) -> None:
    agent_view = box("exec", "agent", "--", "ps", "-o", "pid,args", check=True).out
    assert "agent.sh" in agent_view
    agent_pid = next(line.split()[0] for line in agent_view.splitlines() if "agent.sh" in line)
    business_view = box("exec", "--ns", "business", "agent", "--", "ps", "-o", "pid,args", check=True).out
    assert "agent.sh" not in business_view
    r = box("exec", "--ns", "business", "agent", "--", "kill", "-0", agent_pid)
    assert r.code != 0  # no such process in its pid namespace
    # nsexec, run by the agent, lands in the same place as --ns business
    via_nsexec = box("exec", "agent", "--", "nsexec", "--", "ps", "-o", "pid,args", check=True).out
    assert "agent.sh" not in via_nsexec and "ps -o pid,args" in via_nsexec


def test_business_code_is_contained_in_a_real_vm(box: BoxCli, demo: Path) -> None:
    """Business code as an attacker: before containment it ran as root with every
    capability, read the VM's disk and rewrote the agent's /tmp (issue 22, item 13)."""
    assert box("exec", "agent", "--", "sh", "-c", "echo agent-data > /tmp/agent-file").code == 0
    r = box("exec", "--ns", "business", "agent", "--", "sh", "-c",
            "id -u; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; "
            "cat /tmp/agent-file; echo tampered > /tmp/agent-file; "
            "head -c 1 /dev/vda; echo vda=$?; head -c 1 /dev/mem; echo mem=$?; echo DEV: $(ls /dev); "
            "mount -t tmpfs x /mnt; echo mount=$?; touch /etc/owned; echo touch=$?")
    out = r.out + r.err
    assert out.split()[:7] == ["65534", "CapEff:", "0000000000000000", "NoNewPrivs:", "1", "Seccomp:", "2"], out
    assert "agent-data" not in out and "vda=0" not in out and "mem=0" not in out, out
    assert "mount=0" not in out and "touch=0" not in out, out
    dev = next(line for line in out.splitlines() if line.startswith("DEV:"))
    assert dev == "DEV: fd full null ptmx pts random shm stderr stdin stdout tty urandom zero", dev
    assert box("exec", "agent", "--", "cat", "/tmp/agent-file").out == "agent-data\n"
    # nsexec from the agent lands there too
    via = box("exec", "agent", "--", "nsexec", "--", "id", "-u", check=True).out
    assert via.strip() == "65534"


def test_logs_show_the_agent_output(box: BoxCli, demo: Path) -> None:
    r = box("logs", "agent", check=True)
    assert "a3s-init: ready" in r.out and "agent: hello from agent" in r.out


def test_reapply_is_a_no_op_that_touches_nothing(box: BoxCli, demo: Path) -> None:
    before = {n: b["pid"] for n, b in _ps(box).items()}
    assert box("plan", "-f", str(demo), "--detailed-exitcode").code == 0
    r = box("apply", "-f", str(demo), check=True)
    assert "no changes" in r.out
    assert {n: b["pid"] for n, b in _ps(box).items()} == before


def test_a_changed_box_is_recreated_with_the_change_shown(box: BoxCli, demo: Path) -> None:
    override = demo.parent / "override.yaml"
    override.write_text("boxes:\n  db:\n    resources: {memory: 192Mi}\n")
    db_pid = _ps(box)["db"]["pid"]
    agent_pid = _ps(box)["agent"]["pid"]
    r = box("plan", "-f", str(demo), "-f", str(override), "--detailed-exitcode")
    assert r.code == 2
    assert "~ box db" in r.out and "recreate: resources.memory 128Mi -> 192Mi" in r.out
    box("apply", "-f", str(demo), "-f", str(override), check=True)
    ps = _ps(box)
    assert ps["db"]["pid"] != db_pid and ps["agent"]["pid"] == agent_pid
    r = box("exec", "db", "--", "sh", "-c", "free -m | awk '/Mem:/ {print $2}'", check=True)
    assert 150 < int(r.out.strip()) <= 192


def test_a_killed_vm_is_seen_and_repaired(box: BoxCli, demo: Path) -> None:
    override = demo.parent / "override.yaml"
    files = ["-f", str(demo)] + (["-f", str(override)] if override.exists() else [])
    pid = int(str(_ps(box)["agent"]["pid"]))
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _ps(box)["agent"]["status"] != "exited" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _ps(box)["agent"]["status"] == "exited"
    assert box("exec", "agent", "--", "true").code != 0
    r = box("plan", *files)
    assert "~ box agent" in r.out and "recreate: VM exited" in r.out
    assert box("diff", *files).code == 2
    box("apply", *files, check=True)
    assert _ps(box)["agent"]["status"] == "running"
    assert box("exec", "agent", "--", "true").code == 0


def test_stop_and_start(box: BoxCli, demo: Path) -> None:
    box("exec", "db", "--", "sh", "-c", "echo kept > /root/note && sync", check=True)
    box("stop", "db", check=True)
    assert _ps(box)["db"]["status"] == "stopped"
    r = box("exec", "db", "--", "true")
    assert r.code == 1 and "is stopped, not running" in r.err
    box("start", "db", check=True)
    assert box("exec", "db", "--", "cat", "/root/note", check=True).out == "kept\n"


def test_the_guest_crng_is_seeded_and_its_clock_is_the_hosts(box: BoxCli, demo: Path) -> None:
    """The host seeds the guest's CRNG at boot (a cold TCG guest's is uninitialized for
    seconds otherwise, so getrandom() would block) and sets its clock."""
    r = box("exec", "db", "--", "sh", "-c", "cat /proc/sys/kernel/random/entropy_avail; date +%s",
            check=True)
    entropy, guest_now = r.out.split()
    assert int(entropy) >= 256  # the CRNG is ready
    assert abs(int(guest_now) - time.time()) < 3


def test_pause_stops_a_busy_loop_and_resume_continues_it(box: BoxCli, demo: Path) -> None:
    loop = box.popen("exec", "db", "--", "sh", "-c",
                     "i=0; while :; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/count; done")
    try:
        time.sleep(1)
        qemu = next(p for p in box.vm_processes()
                    if b"qemu-system" in Path(f"/proc/{p}/cmdline").read_bytes() and b"hello.db" in
                    Path(f"/proc/{p}/cmdline").read_bytes())

        def cpu_ticks() -> int:
            fields = Path(f"/proc/{qemu}/stat").read_text().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])
        box("pause", "db", check=True)
        assert _ps(box)["db"]["status"] == "paused"
        r = box("exec", "db", "--", "true")
        assert r.code == 1 and "is paused (resume it with `box resume db`)" in r.err
        before = cpu_ticks()
        time.sleep(1.5)
        assert cpu_ticks() - before < 30  # a busy guest burns ~150 ticks in that time
        box("resume", "db", check=True)
        first = int(box("exec", "db", "--", "cat", "/tmp/count", check=True).out)
        time.sleep(0.5)
        assert int(box("exec", "db", "--", "cat", "/tmp/count", check=True).out) > first  # it goes on
    finally:
        loop.kill()
        loop.communicate()


def test_delete_removes_vms_disks_and_state(box: BoxCli, demo: Path) -> None:
    override = demo.parent / "override.yaml"
    r = box("delete", "-f", str(demo), check=True)
    assert sorted(r.out.split()) == sorted(["agent:", "deleted", "db:", "deleted"])
    assert box("ps", "-o", "json", check=True).json() == []
    assert list((box.home / "boxes").iterdir()) == []
    assert box.vm_processes() == []
    if override.exists():
        override.unlink()

