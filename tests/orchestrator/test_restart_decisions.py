"""The reconcile loop's decisions, as tables: when a box whose VM ended is started
again (restart policy, back-off, reset), and what `box ps` says of it."""
from __future__ import annotations

import pytest

from a3s_box.orchestrator.reconcile import (BACKOFF_CAP, after_restart, backoff, decide_restart,
                                            restart_summary)
from a3s_box.orchestrator.state import RestartRecord


def test_backoff_starts_at_once_then_doubles_to_its_cap() -> None:
    assert [backoff(n) for n in range(11)] == [0, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert backoff(1000) == BACKOFF_CAP


WAITING = RestartRecord("p.b", 2, "qemu was killed by SIGKILL", 100.0, 104.0)
RESTARTED = RestartRecord("p.b", 2, "qemu was killed by SIGKILL", 100.0, 0.0)

# policy, clean power-off, record before -> record after (None: left down)
CASES = [
    ("always", False, None, RestartRecord("p.b", 0, "gone", 50.0, 50.0)),
    (None, False, None, RestartRecord("p.b", 0, "gone", 50.0, 50.0)),  # the default is always
    ("always", True, None, RestartRecord("p.b", 0, "gone", 50.0, 50.0)),
    ("on-failure", False, None, RestartRecord("p.b", 0, "gone", 50.0, 50.0)),
    ("on-failure", True, None, None),
    ("no", False, None, None),
    ("always", False, WAITING, WAITING),  # the same exit, still waiting its turn
    ("always", False, RESTARTED, RestartRecord("p.b", 2, "gone", 50.0, 54.0)),  # a new exit: backs off
]


@pytest.mark.parametrize("policy,clean,before,after", CASES)
def test_decide_restart(policy: str | None, clean: bool, before: RestartRecord | None,
                        after: RestartRecord | None) -> None:
    assert decide_restart("p.b", policy, clean, "gone", before, now=50.0) == after


def test_a_restart_counts_and_a_failed_one_backs_off() -> None:
    assert after_restart(WAITING, now=105.0) == RestartRecord("p.b", 3, WAITING.last_exit, 100.0, 0.0)
    failed = after_restart(WAITING, now=105.0, error="no space")
    assert failed == RestartRecord("p.b", 3, "restart failed: no space", 105.0, 105.0 + backoff(3))


def test_what_box_ps_says() -> None:
    assert restart_summary(None, 0.0) == ""
    assert restart_summary(WAITING, now=101.0) == "2 restarts, last exit: qemu was killed by SIGKILL, next try in 3s"
    assert restart_summary(replace_count(RESTARTED, 1), now=500.0) == "1 restart, last exit: qemu was killed by SIGKILL"


def replace_count(r: RestartRecord, n: int) -> RestartRecord:
    from dataclasses import replace

    return replace(r, count=n)
