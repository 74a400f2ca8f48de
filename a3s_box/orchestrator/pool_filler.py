"""Background filler of one warm pool: `python -m a3s_box.orchestrator.pool_filler HOME PROJECT POOL`.

Started detached by `acquire`/`release`; boots replacements until the pool is at
min_ready. While a leased member has a lifetime (`lifetime.idle_timeout`,
`max_duration`), it stays and checks every WATCH_INTERVAL, ending leases past theirs;
then it exits. Only one filler per pool runs (a per-pool flock); a filler that finds
the lock taken exits at once, the running one re-reads the pool each pass.
"""
from __future__ import annotations

import faulthandler
import signal
import sys
import time
from pathlib import Path

from a3s_box.errors import BoxError
from a3s_box.home import Home
from a3s_box.orchestrator.pools import PoolKeeper, pool_lock

MAX_FAILED_PASSES = 20
WATCH_INTERVAL = 1.0


def fill(home: Home, project: str, pool: str, log: "object") -> int:
    from a3s_box.image import ImageStore
    from a3s_box.orchestrator.lifecycle import BoxRuntime
    from a3s_box.orchestrator.state import StateStore

    store = StateStore(home.state_db)
    keeper = PoolKeeper(BoxRuntime(home, store), ImageStore(home))
    failures = 0
    while failures < MAX_FAILED_PASSES:
        try:
            results = keeper.converge(project, pool)
        except BoxError as e:
            print(f"{time.strftime('%H:%M:%S')} {e}", file=log, flush=True)  # type: ignore[call-overload]
            return 1
        for step, outcome in results:
            print(f"{time.strftime('%H:%M:%S')} {step.op} {step.member or ''} ({step.reason}): {outcome}",
                  file=log, flush=True)  # type: ignore[call-overload]
        if any(o != "ok" for _, o in results):
            failures += 1
            time.sleep(min(30.0, 2.0 ** failures))  # back off on a template that fails to boot
            continue
        if any(s.op == "create" for s, _ in results):
            continue
        if not keeper.watching(project, pool):
            return 0
        time.sleep(WATCH_INTERVAL)
    return 0


def main() -> int:
    home, project, pool = Home(Path(sys.argv[1])), sys.argv[2], sys.argv[3]
    logfile = home.root / "pools" / f"{project}.{pool}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "a") as log:
        # `kill -USR1 PID` writes where each thread is into the pool's log (a stuck boot)
        faulthandler.register(signal.SIGUSR1, file=log, all_threads=True)
        for _ in range(3):  # an acquire may land just as the previous filler exits
            with pool_lock(home.root, project, pool, wait=False) as got:
                if not got:
                    return 0
                rc = fill(home, project, pool, log)
            time.sleep(0.2)
        return rc


if __name__ == "__main__":
    sys.exit(main())
