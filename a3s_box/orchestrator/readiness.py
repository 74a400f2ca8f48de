"""Waiting for a box to reach a depends_on condition: started, healthy or completed.

Every wait has a deadline the user can set (box `timeouts.ready`); a wait that runs out
says what it last saw, so "not healthy" comes with the healthcheck's own output.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from a3s_box.boxfile.model import BoxDef
from a3s_box.errors import BoxError, GuestError

ClientFor = Callable[[], AbstractContextManager[Any]]


class NotReady(BoxError):
    def __init__(self, box: str, condition: str, last: str) -> None:
        self.box = box
        super().__init__(f"box {box}: did not become {condition} in time (last: {last})")


def wait_for(name: str, box: BoxDef, condition: str, client_for: ClientFor,
             timeout: float, clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> None:
    if condition == "started":
        return  # the create step already waited for the agent to start
    deadline = clock() + timeout
    if condition == "healthy":
        _wait_healthy(name, box, client_for, deadline, clock, sleep)
    elif condition == "completed":
        _wait_completed(name, client_for, deadline, clock, sleep)
    else:
        raise BoxError(f"box {name}: unknown depends_on condition {condition!r}")


def _wait_healthy(name: str, box: BoxDef, client_for: ClientFor, deadline: float,
                  clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
    hc = box.healthcheck
    if hc is None:
        raise BoxError(f"box {name}: a dependant waits for it to be healthy, "
                       "but it declares no healthcheck")
    started = clock()
    failures = 0
    last = "no check run yet"
    sleep(max(0.0, min(hc.start_period, deadline - clock())) if hc.start_period else 0.0)
    while True:
        try:
            with client_for() as c:
                res = c.run(list(hc.command), timeout=hc.timeout)
            if res.exit.code == 0:
                return
            out = (res.stdout + res.stderr).decode(errors="replace").strip().splitlines()
            last = f"exit {res.exit.code}" + (f": {out[-1]}" if out else "")
        except GuestError as e:
            last = str(e)
        if clock() - started >= hc.start_period:
            failures += 1
        if failures >= hc.retries or clock() + hc.interval > deadline:
            raise NotReady(name, "healthy", last)
        sleep(hc.interval)


def _wait_completed(name: str, client_for: ClientFor, deadline: float,
                    clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
    last = "unknown"
    while True:
        try:
            with client_for() as c:
                st = c.status()
            last = f"agent {st.agent_state} {st.values.get('last_exit', '')}".strip()
            if st.agent_state == "exited":
                if st.values.get("last_exit") == "exited:0":
                    return
                raise BoxError(f"box {name}: its agent completed unsuccessfully ({last})")
        except GuestError as e:
            last = str(e)
        if clock() + 0.5 > deadline:
            raise NotReady(name, "completed", last)
        sleep(0.5)
