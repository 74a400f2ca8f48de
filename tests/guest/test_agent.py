"""The agent's lifecycle (restart policy, crash-loop backoff, STATUS), CONFIG, SHUTDOWN
and connection loss, against the real guest init."""
from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from a3s_box.errors import GuestError
from a3s_box.guest.protocol import BoxConfig, ExecRequest, ExitKind, GuestStatus, Isolate, Namespace, Restart

if TYPE_CHECKING:
    from tests.guest.conftest import LocalGuest


def _status_until(g: LocalGuest, pred: Callable[[GuestStatus], bool], limit: float = 20.0) -> GuestStatus:
    """Poll STATUS until `pred` holds (a deadline on waiting, not an assertion on time)."""
    end = time.monotonic() + limit
    while True:
        st = g.client.status()
        if pred(st) or time.monotonic() > end:
            return st
        time.sleep(0.05)


def test_status_before_config(make_guest: Callable[[], LocalGuest]) -> None:
    g = make_guest()
    st = g.client.status()
    assert st.agent_state == "not-configured" and st.restarts == 0


def test_agent_runs_with_config_and_status_shows_it(guest: LocalGuest) -> None:
    st = guest.client.status()
    assert st.agent_state == "running"
    pid = int(st.values["agent_pid"])
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "sleep"
    assert "a3s-init: agent started" in guest.console()


def test_second_config_is_refused(guest: LocalGuest) -> None:
    with pytest.raises(GuestError, match="configure: already configured"):
        guest.client.configure(BoxConfig(hostname="again"), 5)


DEFAULT_ISOLATION = Isolate.MOUNT | Isolate.PID | Isolate.IPC | Isolate.UTS


def _agent_ns(g: "LocalGuest", kind: str) -> str:
    return os.readlink(f"/proc/{g.client.status().values['agent_pid']}/ns/{kind}")


def test_prepared_namespaces_are_adopted_and_named_by_config(make_guest: Callable[[], "LocalGuest"]) -> None:
    """PREPARE (a template) makes the agent's namespaces; CONFIG with the same isolation
    starts the agent in them, under its own hostname, with nothing made twice."""
    g = make_guest()
    g.client.prepare(int(DEFAULT_ISOLATION))
    with pytest.raises(GuestError, match="already prepared"):
        g.client.prepare(int(DEFAULT_ISOLATION))
    # the holder, and the agent's process and the first exec's, forked ahead
    holder, agent, first_exec = prepared = sorted(_children(g.proc.pid))
    g.client.configure(BoxConfig(hostname="adopted", argv=("sleep", "1000")), 5)
    st = _status_until(g, lambda s: s.agent_state == "running")
    assert st.agent_state == "running"
    # the agent is the process PREPARE forked into the holder's namespaces: it only
    # exec'd at CONFIG; nothing was forked again
    assert int(st.values["agent_pid"]) == agent and _children(g.proc.pid) == set(prepared)
    assert Path(f"/proc/{first_exec}/comm").read_text() == "a3s-ahead\n"
    assert g.client.run(["hostname"]).stdout == b"adopted\n"
    # ... and the first exec was the other one: it ran and ended, nothing left waiting
    _status_until(g, lambda s: _children(g.proc.pid) == {holder, agent})
    assert _children(g.proc.pid) == {holder, agent}
    assert _agent_ns(g, "uts") != os.readlink("/proc/self/ns/uts")
    assert _agent_ns(g, "pid") != os.readlink("/proc/self/ns/pid")


def _children(pid: int) -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(d.name))
        except (OSError, IndexError, ValueError):
            pass
    return out


def test_the_agent_forked_ahead_gets_its_arguments_environment_and_folder(
        make_guest: Callable[[], "LocalGuest"], tmp_path: Path) -> None:
    g = make_guest()
    g.client.prepare(int(DEFAULT_ISOLATION))
    prepared = _children(g.proc.pid)
    out = tmp_path / "out"
    script = 'printf "[%s]" "$@" "$EMPTY" "$PWD" > OUT; exec sleep 1000'.replace("OUT", str(out))
    g.client.configure(BoxConfig(hostname="a", argv=("/bin/sh", "-c", script, "zero", "", "two"),
                                 env=("EMPTY=", "PATH=/usr/bin:/bin"), workdir=str(tmp_path)), 5)
    st = _status_until(g, lambda s: s.agent_state == "running" and out.exists() and out.stat().st_size > 0)
    assert int(st.values["agent_pid"]) in prepared
    assert out.read_text() == f"[][two][][{tmp_path}]"  # an empty argument stays one


def test_an_agent_that_cannot_start_from_ahead_fails_as_a_forked_one(make_guest: Callable[[], "LocalGuest"]) -> None:
    g = make_guest()
    g.client.prepare(int(DEFAULT_ISOLATION))
    g.client.configure(BoxConfig(hostname="a", argv=("/no/such/agent",), restart=Restart.NEVER), 5)
    st = _status_until(g, lambda s: s.agent_state == "exited")
    assert st.agent_state == "exited" and st.values["last_exit"] == f"not-started:{errno.ENOENT}"
    assert "agent not started: /no/such/agent: No such file or directory" in g.console()


def test_an_agent_forked_ahead_and_killed_is_forked_again(make_guest: Callable[[], "LocalGuest"]) -> None:
    g = make_guest()
    g.client.prepare(int(DEFAULT_ISOLATION))
    prepared = _children(g.proc.pid)
    for ahead in sorted(prepared)[1:]:  # the agent's and the first exec's (after the holder)
        os.kill(ahead, signal.SIGKILL)
    _status_until(g, lambda s: len(_children(g.proc.pid)) == 1)
    g.client.configure(BoxConfig(hostname="a", argv=("sleep", "1000")), 5)
    st = _status_until(g, lambda s: s.agent_state == "running")
    assert st.agent_state == "running" and int(st.values["agent_pid"]) not in prepared
    assert g.console().count("a process forked ahead ended") == 2
    assert g.client.run(["hostname"]).stdout == b"a\n"  # forked now, in the prepared namespaces all the same


def test_the_first_exec_forked_ahead_gets_its_stdio_and_status(make_guest: Callable[[], "LocalGuest"]) -> None:
    g = make_guest()
    g.client.prepare(int(DEFAULT_ISOLATION))
    g.client.configure(BoxConfig(hostname="a", argv=("sleep", "1000")), 5)
    first = g.client.run(["sh", "-c", 'cat; echo "to err $0 [$1]" >&2; exit 3', "zero", ""], stdin=b"fed\n",
                         env={"EMPTY": ""})
    again = g.client.run(["sh", "-c", 'cat; echo "to err $0 [$1]" >&2; exit 3', "zero", ""], stdin=b"fed\n")
    assert (first.exit.value, first.stdout, first.stderr) == (3, b"fed\n", b"to err zero []\n")
    assert (again.exit.value, again.stdout, again.stderr) == (first.exit.value, first.stdout, first.stderr)


def _first_exec_of_a_missing_program(g: "LocalGuest") -> object:
    try:
        r = g.client.run(["/no/such/program"])
        return ("exit", r.exit, r.stdout, r.stderr)
    except GuestError as e:
        return ("error", str(e))


def test_a_first_exec_from_ahead_that_cannot_start_fails_as_a_forked_one(
        make_guest: Callable[[], "LocalGuest"]) -> None:
    ahead, forked = make_guest(), make_guest()
    ahead.client.prepare(int(DEFAULT_ISOLATION))
    for g in (ahead, forked):
        g.client.configure(BoxConfig(hostname="a", argv=("sleep", "1000")), 5)
    said = _first_exec_of_a_missing_program(ahead)
    assert said == _first_exec_of_a_missing_program(forked)
    assert "No such file or directory" in repr(said)


def test_a_first_exec_on_a_terminal_from_ahead(make_guest: Callable[[], "LocalGuest"]) -> None:
    from a3s_box.guest.protocol import ExecRequest
    g = make_guest()
    g.client.prepare(int(DEFAULT_ISOLATION))
    g.client.configure(BoxConfig(hostname="a", argv=("sleep", "1000")), 5)
    s = g.client.start(ExecRequest(argv=("sh", "-c", "stty size; tty"), tty=True, rows=30, cols=100))
    assert s.wait(10).code == 0
    out = b"".join(d for fd, d in s if fd == 1)
    assert b"30 100" in out and b"/dev/pts/" in out


def test_prepared_namespaces_for_other_isolation_are_replaced(make_guest: Callable[[], "LocalGuest"]) -> None:
    g = make_guest()
    g.client.prepare(int(Isolate.MOUNT | Isolate.PID))
    prepared = _children(g.proc.pid)
    g.client.configure(BoxConfig(hostname="own", argv=("sleep", "1000"), agent_isolate=DEFAULT_ISOLATION), 5)
    assert _status_until(g, lambda s: s.agent_state == "running").agent_state == "running"
    assert g.client.run(["hostname"]).stdout == b"own\n"  # a UTS namespace the prepared set lacked
    assert _agent_ns(g, "uts") != os.readlink("/proc/self/ns/uts")
    # the process forked ahead into the prepared set was let go; the agent forked anew
    _status_until(g, lambda s: not prepared & _children(g.proc.pid))
    assert not prepared & _children(g.proc.pid)
    assert int(g.client.status().values["agent_pid"]) not in prepared


@pytest.mark.parametrize("payload", [b"", b"\x00\x00\x00", b"\x00\x00\x00\x01\x00", b"\x00\x00\x01\x00"])
def test_a_bad_prepare_is_refused(make_guest: Callable[[], "LocalGuest"], payload: bytes) -> None:
    from a3s_box.guest import protocol as p
    g = make_guest()
    with pytest.raises(GuestError, match="bad PREPARE payload"):
        g.client._ctl_request(p.encode(p.MsgType.PREPARE, 0, payload), 5, "prepare")
    assert g.client.status().agent_state == "not-configured"
    g.client.prepare(int(DEFAULT_ISOLATION))  # a refused one prepared nothing


def test_prepare_makes_the_volume_targets_it_is_given(make_guest: Callable[[], "LocalGuest"], tmp_path: Path) -> None:
    """The init runs on the host here: its root is the host's, the targets under TMP_PATH."""
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    g = make_guest()
    g.client.prepare(int(DEFAULT_ISOLATION), targets=(f"{tmp_path}/a/b", f"{tmp_path}/link/c", f"{tmp_path}/a/b"))
    assert (tmp_path / "a" / "b").is_dir()
    assert not (tmp_path / "elsewhere").exists()  # no symlink followed: not made, logged
    assert f"mount target {tmp_path}/link/c not made" in g.console()


@pytest.mark.parametrize("targets", [["relative"], ["/a/../b"], [f"/t{i}" for i in range(65)]])
def test_bad_volume_targets_are_refused(make_guest: Callable[[], "LocalGuest"], targets: list[str]) -> None:
    from a3s_box.guest import protocol as p
    g = make_guest()
    payload = p.Writer().u32(int(DEFAULT_ISOLATION)).str("").strlist([]).strlist(targets).bytes()
    with pytest.raises(GuestError, match="bad PREPARE payload"):
        g.client._ctl_request(p.encode(p.MsgType.PREPARE, 0, payload), 5, "prepare")
    assert g.client.status().agent_state == "not-configured"


def test_crashing_agent_is_restarted_with_backoff(make_guest: Callable[[], LocalGuest]) -> None:
    g = make_guest()
    g.client.configure(BoxConfig(hostname="c", argv=("sh", "-c", "exit 3"),
                                 restart=Restart.ALWAYS), 5)
    st = _status_until(g, lambda s: s.restarts >= 3)
    assert st.restarts >= 3
    assert st.values["last_exit"] == "exited:3"
    assert st.agent_state in ("backoff", "running")
    # backoff doubles: after 3 restarts the guest waits at least 800 ms, so a burst of
    # STATUS calls sees the count stand still instead of racing up
    before = g.client.status().restarts
    seen = {g.client.status().restarts for _ in range(5)}
    assert max(seen) <= before + 1


def test_agent_that_cannot_start_is_counted_as_not_started(make_guest: Callable[[], LocalGuest]) -> None:
    g = make_guest()
    g.client.configure(BoxConfig(hostname="c", argv=("no-such-agent-a3s",),
                                 restart=Restart.ON_FAILURE), 5)
    st = _status_until(g, lambda s: s.restarts >= 1)
    assert st.values["last_exit"] == "not-started:2"
    assert "agent not started: no-such-agent-a3s: No such file or directory" in g.console()


def test_agent_that_succeeds_is_not_restarted_on_failure_policy(make_guest: Callable[[], LocalGuest]) -> None:
    g = make_guest()
    g.client.configure(BoxConfig(hostname="c", argv=("true",), restart=Restart.ON_FAILURE), 5)
    st = _status_until(g, lambda s: s.agent_state == "exited")
    assert (st.agent_state, st.restarts, st.values["last_exit"]) == ("exited", 0, "exited:0")


def test_never_policy_leaves_a_killed_agent_dead(make_guest: Callable[[], LocalGuest]) -> None:
    g = make_guest()
    g.client.configure(BoxConfig(hostname="c", argv=("sleep", "1000"), restart=Restart.NEVER,
                                 agent_isolate=Isolate(0)), 5)
    pid = int(g.client.status().values["agent_pid"])
    os.kill(pid, 9)
    st = _status_until(g, lambda s: s.agent_state == "exited")
    assert (st.agent_state, st.values["last_exit"], st.restarts) == ("exited", "signaled:9", 0)


def test_shutdown_answers_then_stops_everything(make_guest: Callable[[], LocalGuest]) -> None:
    g = make_guest()
    g.client.configure(BoxConfig(hostname="c", argv=("sleep", "1000")), 5)
    s = g.client.start(ExecRequest(argv=("sleep", "1000"), ns=Namespace.ROOT))
    g.client.ping()
    agent = int(g.client.status().values["agent_pid"])
    g.client.shutdown()
    assert g.proc.wait(10) == 0
    assert s.wait(5).kind is ExitKind.SIGNALED  # told before the guest went away
    for pid in (agent, s.pid):
        assert not os.path.exists(f"/proc/{pid}") or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_closing_the_connection_kills_its_sessions(make_guest: Callable[[], LocalGuest]) -> None:
    g = make_guest()
    s = g.client.start(ExecRequest(argv=("sleep", "1000"), ns=Namespace.ROOT))
    g.client.ping()
    assert s.pid and os.path.exists(f"/proc/{s.pid}")
    g.client.close()
    assert g.proc.wait(10) == 0  # stdio mode: the channel closing ends the guest
    assert not os.path.exists(f"/proc/{s.pid}")


def test_a_mount_waiting_for_its_source_takes_it_once_it_appears(make_guest: Callable[[], "LocalGuest"],
                                                                 tmp_path: Path) -> None:
    """MOUNT's wait flag (a snapshot clone's hot-plugged share): a source that is not
    there yet is retried until it appears; without the flag it fails at once."""
    import subprocess
    import threading

    img = tmp_path / "vol.ext4"
    subprocess.run(["mkfs.ext4", "-q", str(img), "8M"], check=True)
    loop = subprocess.run(["losetup", "--find", "--show", str(img)], capture_output=True, text=True,
                          check=True).stdout.strip()
    later, target = tmp_path / "dev" / "vdb", tmp_path / "mnt"
    later.parent.mkdir()
    g = make_guest()
    g.client.hello(10)
    appear = threading.Timer(0.5, lambda: later.symlink_to(loop))
    try:
        with pytest.raises(GuestError, match="No such file"):
            g.client.mount("ext4", str(later), str(target))
        appear.start()
        g.client.mount("ext4", str(later), str(target), wait=True)
        assert os.path.ismount(target)
    finally:
        appear.cancel()
        subprocess.run(["umount", str(target)], capture_output=True)
        subprocess.run(["losetup", "-d", loop], capture_output=True)


def test_net_configures_nothing_outside_a_vm(make_guest: Callable[[], "LocalGuest"]) -> None:
    """NET (a clone's hot-plugged NIC) would reconfigure the host's eth0 in local mode:
    only a VM's PID 1 takes it (the e2e pod tests take it in real VMs)."""
    g = make_guest()
    g.client.hello(10)
    with pytest.raises(GuestError, match="outside a VM"):
        g.client.net("10.0.0.2/24,10.0.0.1,-")
