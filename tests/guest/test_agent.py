"""The agent's lifecycle (restart policy, crash-loop backoff, STATUS), CONFIG, SHUTDOWN
and connection loss, against the real guest init."""
from __future__ import annotations

import os
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
