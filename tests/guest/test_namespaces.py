"""Agent and business namespaces, and nsexec, against the real guest init."""
from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING

from a3s_box.guest.protocol import ExitKind, Namespace

if TYPE_CHECKING:
    from tests.guest.conftest import LocalGuest


def _ns(guest: LocalGuest, ns: Namespace, kind: str) -> str:
    return guest.client.run(["readlink", f"/proc/self/ns/{kind}"], ns=ns).stdout.decode().strip()


def test_namespaces_are_distinct_and_nested(guest: LocalGuest) -> None:
    for kind in ("pid", "mnt", "ipc"):
        ids = {_ns(guest, ns, kind) for ns in Namespace}
        assert len(ids) == 3, kind
    # uts is isolated for the agent only: business shares the agent's
    assert _ns(guest, Namespace.BUSINESS, "uts") == _ns(guest, Namespace.AGENT, "uts")
    assert _ns(guest, Namespace.AGENT, "uts") != _ns(guest, Namespace.ROOT, "uts")


def test_agent_gets_the_box_hostname(guest: LocalGuest) -> None:
    assert guest.client.run(["hostname"]).stdout == b"coder\n"
    assert guest.client.run(["hostname"], ns=Namespace.BUSINESS).stdout == b"coder\n"


def test_business_cannot_see_or_signal_agent_processes(guest: LocalGuest) -> None:
    # the agent's sleep, as the agent namespace numbers it
    agent_pids = guest.client.run(["sh", "-c", "pgrep -x sleep || "
                                   "grep -l '^sleep' /proc/[0-9]*/comm"]).stdout.split()
    assert agent_pids
    pid = agent_pids[0].decode().split("/")[2] if b"/" in agent_pids[0] else agent_pids[0].decode()
    seen = guest.client.run(["sh", "-c", "cat /proc/[0-9]*/comm"], ns=Namespace.BUSINESS)
    assert b"sleep" not in seen.stdout.split()
    r = guest.client.run(["kill", "-0", pid], ns=Namespace.BUSINESS)
    assert r.exit.code != 0
    # and the agent is still running
    assert guest.client.status().agent_state == "running"


def test_business_has_its_own_proc(guest: LocalGuest) -> None:
    r = guest.client.run(["sh", "-c", "echo $$; ls /proc | grep '^[0-9]'"], ns=Namespace.BUSINESS)
    mypid, *pids = r.stdout.split()
    # only the namespace's reaper (pid 1), this shell and ls/grep: not the agent's or host's
    assert pids[0] == b"1" and mypid in pids and len(pids) <= 5


def test_nsexec_from_the_agent_lands_in_business(guest: LocalGuest) -> None:
    business = _ns(guest, Namespace.BUSINESS, "pid")
    r = guest.client.run(["nsexec", "--", "readlink", "/proc/self/ns/pid"])
    assert r.exit.code == 0, r.stderr
    assert r.stdout.decode().strip() == business
    assert business != _ns(guest, Namespace.AGENT, "pid")


def test_nsexec_passes_stdio_env_and_exit_status(guest: LocalGuest) -> None:
    r = guest.client.run(["sh", "-c", "echo hi | FOO=bar nsexec -- sh -c "
                          "'read x; echo $x-$FOO; echo e >&2; exit 5'; echo rc=$?"])
    assert r.stdout == b"hi-bar\nrc=5\n"
    assert r.stderr == b"e\n"


def test_nsexec_reports_a_missing_command(guest: LocalGuest) -> None:
    r = guest.client.run(["sh", "-c", "nsexec -- no-such-cmd-a3s; echo rc=$?"])
    assert r.stdout == b"rc=127\n"
    assert b"no-such-cmd-a3s: No such file or directory" in r.stderr


def test_nsexec_forwards_signals_and_dies_the_same_way(guest: LocalGuest) -> None:
    r = guest.client.run(["sh", "-c", "nsexec -- sleep 1000 & p=$!; "
                          "while ! nsexec -- pgrep -x sleep >/dev/null; do sleep 0.05; done; "
                          "kill -TERM $p; wait $p; echo rc=$?"], timeout=30)
    assert r.stdout == b"rc=143\n"


def test_nsexec_without_command_is_a_usage_error(guest: LocalGuest) -> None:
    r = guest.client.run(["nsexec"])
    assert r.exit.code == 2 and b"usage" in r.stderr


def test_business_exec_needs_a_business_namespace(make_guest: Callable[[], LocalGuest]) -> None:
    from a3s_box.guest.protocol import BoxConfig

    g = make_guest()
    g.client.hello(5)
    r = g.client.run(["true"], ns=Namespace.AGENT)
    assert (r.exit.kind, r.exit.value) == (ExitKind.NOT_STARTED, errno.ESRCH)
    assert "not configured" in r.exit.message
    g.client.configure(BoxConfig(hostname="x"), 5)
    r = g.client.run(["true"], ns=Namespace.BUSINESS)
    assert r.exit.kind is ExitKind.NOT_STARTED and "no business namespace" in r.exit.message
    r = g.client.run(["sh", "-c", "nsexec -- true; echo rc=$?"])
    assert r.stdout == b"rc=126\n" and b"no business namespace" in r.stderr
