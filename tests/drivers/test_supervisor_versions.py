"""Supervisors of older releases after an upgrade: an older shim (its module's old name)
is seen as running but outdated, so that the plan replaces its box instead of calling it
dead and booting a second VM beside it (the leak this guards against), and stop() ends it.

Faked: the older shim is a stand-in process with the old module name and the box's run
folder on its command line (what the drivers recognise a supervisor by); building a
release from 2026-11 to start a real one needs its own guest artifacts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from a3s_box.drivers.base import VmHandle, VmState
from a3s_box.drivers.common.supervision import (SUPERVISOR_PROTOCOL, SupervisorRecord, connect_unix, is_supervisor,
                                                observe_supervised, read_supervisor_record, stop_supervised,
                                                write_supervisor_record)
from a3s_box.drivers.qemu.driver import SHIMS
from a3s_box.version import __version__


def _stand_in(rundir: Path, module: str) -> subprocess.Popen[bytes]:
    # argv[0..] as `python -m MODULE RUNDIR`: sleep under that command line, once it says
    # it runs (a loaded CI host once looked at it before its command line was there)
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; print('up', flush=True); time.sleep(60)",
                             "-m", module, str(rundir)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with proc.stdout:
        assert proc.stdout.readline() == b"up\n"
    return proc


def test_an_older_shim_is_running_but_outdated_and_stop_ends_it(tmp_path: Path) -> None:
    proc = _stand_in(tmp_path, "a3s_box.drivers.shim")
    try:
        handle = VmHandle("qemu", "p.b", proc.pid, str(tmp_path / "guest.sock"), "", "tcg",
                          {"rundir": str(tmp_path)})
        seen = observe_supervised(handle, SHIMS, "shim")
        assert seen.state is VmState.RUNNING
        assert seen.outdated == "its VM runs under an older a3s-box's shim (a3s_box.drivers.shim)"
        # no guest to ask to power off (no channel): SIGTERM ends it
        stop_supervised(handle, SHIMS, lambda h, t: connect_unix(h.box_id, h.channel, t), 1.0)
        assert proc.wait(10) is not None
        assert observe_supervised(handle, SHIMS, "shim").state is not VmState.RUNNING
    finally:
        proc.kill()
        proc.wait()


def test_this_releases_shim_is_not_outdated_and_a_stranger_is_not_a_shim(tmp_path: Path) -> None:
    ours, stranger = _stand_in(tmp_path, SHIMS[0]), _stand_in(tmp_path, "some.other.module")
    try:
        mine = VmHandle("qemu", "p.b", ours.pid, "", "", "tcg", {"rundir": str(tmp_path)})
        assert observe_supervised(mine, SHIMS, "shim") == observe_supervised(mine, SHIMS[0], "shim")
        assert observe_supervised(mine, SHIMS, "shim").outdated == ""
        other = VmHandle("qemu", "p.b", stranger.pid, "", "", "tcg", {"rundir": str(tmp_path)})
        assert observe_supervised(other, SHIMS, "shim").state is not VmState.RUNNING
    finally:
        for p in (ours, stranger):
            p.kill()
            p.wait()


def test_the_handshake_adopts_the_protocols_it_knows_and_calls_the_others_outdated(tmp_path: Path) -> None:
    """supervisor.json: none (v0.1.0) and this release's are adopted; a newer host's
    protocol, or a record that cannot be read, makes the box outdated (the plan replaces
    it, stopping the VM cleanly) instead of a host driving a supervisor it does not know."""
    ours = _stand_in(tmp_path, SHIMS[0])
    try:
        handle = VmHandle("qemu", "p.b", ours.pid, "", "", "tcg", {"rundir": str(tmp_path)})
        assert observe_supervised(handle, SHIMS, "shim").outdated == ""  # no record: v0.1.0's
        write_supervisor_record(tmp_path)
        assert read_supervisor_record(tmp_path) == SupervisorRecord(SUPERVISOR_PROTOCOL, __version__)
        assert observe_supervised(handle, SHIMS, "shim").outdated == ""
        (tmp_path / "supervisor.json").write_text('{"protocol": 7, "release": "9.0.0"}')
        seen = observe_supervised(handle, SHIMS, "shim")
        assert seen.state is VmState.RUNNING
        assert seen.outdated == ("its VM runs under a shim of a3s-box 9.0.0 speaking protocol 7; "
                                 "this release adopts protocols 1, 2")
        (tmp_path / "supervisor.json").write_text("{not json")
        assert "speaking protocol 0" in observe_supervised(handle, SHIMS, "shim").outdated
    finally:
        ours.kill()
        ours.wait()


EXECS = r'''
import os, sys
script, n, exe, title = sys.argv
if int(n):
    os.execv(exe, [title, script, str(int(n) - 1), exe, title])
'''


def test_a_supervisor_caught_in_an_exec_is_still_recognised(tmp_path: Path) -> None:
    """A shim execs its C loop: for a moment /proc/PID/cmdline reads empty. Asked then,
    the driver must not take it for gone (it would call a starting box's shim dead)."""
    rundir = str(tmp_path / "p.box")
    script = tmp_path / "execs.py"
    script.write_text(EXECS)
    title = f"a3s_box.drivers.qemu.shim {rundir}"
    proc = subprocess.Popen([title, str(script), "60", sys.executable, title], executable=sys.executable)
    answers = []
    while proc.poll() is None:
        answers.append(is_supervisor(proc.pid, rundir, SHIMS[0]))
    assert len(answers) > 20 and all(answers[:-1]), answers.count(False)  # the last may see it exit
