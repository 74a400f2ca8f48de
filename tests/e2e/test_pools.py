"""Warm pools on real microVMs: fill on apply, acquire at once, refill behind, release,
template change, scale to zero; through the CLI and the Python API."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

import a3s_box
from tests.e2e.conftest import BoxCli, boxfile

pytestmark = pytest.mark.vm

POOL = """project: pools
boxes:
  coder:
    image: hello
    resources: {{memory: {mem}}}
    namespaces: {{agent: {{command: ["/bin/sh", "-c", "exec sleep 100000"]}}}}
pools:
  coders: {{box: coder, min_ready: {min_ready}, max: 3, idle_timeout: 1s}}
"""


def pool_state(box: BoxCli) -> dict[str, int]:
    rows = box("pool", "ls", "-o", "json", check=True).json()
    return {k: rows[0][k] for k in ("ready", "leased", "total")} if rows else {}


def wait_for(box: BoxCli, want: dict[str, int], timeout: float = 90) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    state = pool_state(box)
    while state != want and time.monotonic() < deadline:
        time.sleep(0.5)
        state = pool_state(box)
    return state


def test_pool_lifecycle(box: BoxCli, hello_image: Path, tmp_path: Path) -> None:
    f = boxfile(tmp_path, hello_image, POOL.format(mem="128Mi", min_ready=2))
    r = box("apply", "-f", str(f), check=True)
    assert "pool coders: created" in r.err
    assert pool_state(box) == {"ready": 2, "leased": 0, "total": 2}
    names = {b["name"] for b in box("ps", "-o", "json", check=True).json()}
    assert "coder" not in names  # a template is not booted on its own

    # CLI: acquire hands over a booted box at once; a replacement boots behind.
    r = box("pool", "acquire", "coders", "--name", "job1", "-o", "json", check=True)
    assert r.json()["name"] == "job1"
    assert box("exec", "job1", "--", "hostname", check=True).out == "coder\n"
    assert wait_for(box, {"ready": 2, "leased": 1, "total": 3}) == {"ready": 2, "leased": 1, "total": 3}

    # Python API: a leased box as a context manager, destroyed on exit.
    with a3s_box.Host(box.home) as host:
        with host.leased("coders") as leased:
            res = leased.run(["sh", "-c", "echo $((6*7))"])
            assert (res.exit.code, res.stdout) == (0, b"42\n")
            taken = leased.name
        assert all(b.name != taken for b in host.ps())

    box("pool", "release", "job1", check=True)
    assert "job1" not in {b["name"] for b in box("ps", "-o", "json", check=True).json()}
    assert wait_for(box, {"ready": 2, "leased": 0, "total": 2})["ready"] == 2

    # A template change replaces idle boxes (update: recreate).
    before = {b["name"] for b in box("ps", "-o", "json", check=True).json()}
    f2 = boxfile(tmp_path, hello_image, POOL.format(mem="160Mi", min_ready=2), "v2.yaml")
    plan = box("plan", "-f", str(f2), check=True).out
    assert "~ pool coders" in plan
    box("apply", "-f", str(f2), check=True)
    after = {b["name"] for b in box("ps", "-o", "json", check=True).json()}
    assert len(after) == 2 and not (after & before)

    # min_ready 0 scales to zero once the idle timeout has passed.
    f3 = boxfile(tmp_path, hello_image, POOL.format(mem="160Mi", min_ready=0), "v3.yaml")
    box("apply", "-f", str(f3), check=True)
    time.sleep(1.2)
    box("pool", "fill", "-p", "pools", check=True)
    assert pool_state(box) == {"ready": 0, "leased": 0, "total": 0}
    box("delete", "-f", str(f3), check=True)
    assert box.vm_processes() == []


def test_acquire_from_an_unknown_or_empty_pool_is_a_clear_error(box: BoxCli) -> None:
    r = box("pool", "acquire", "nope")
    assert r.code == 1 and "pool nope: no such pool" in r.err


def test_a_burst_of_acquires_beyond_min_ready_is_served(box: BoxCli, hello_image: Path, tmp_path: Path) -> None:
    """min_ready 1, max 3: three acquirers at once all get a box (one ready, two booted
    on demand); a fourth, with the pool at max and every member leased, is refused once
    its wait runs out."""
    from concurrent.futures import ThreadPoolExecutor

    from a3s_box.orchestrator.pools import PoolExhausted

    f = boxfile(tmp_path, hello_image, POOL.format(mem="128Mi", min_ready=1), "burst.yaml")
    box("apply", "-f", str(f), check=True)
    with a3s_box.Host(box.home) as host:
        def take(i: int) -> str:
            with a3s_box.Host(box.home) as h:
                return h.acquire("coders", name=f"burst{i}", timeout=300).name
        with ThreadPoolExecutor(3) as ex:
            names = sorted(ex.map(take, range(3)))
        assert names == ["burst0", "burst1", "burst2"]
        for n in names:
            assert host.box(n).run(["hostname"]).stdout == b"coder\n"
        with pytest.raises(PoolExhausted, match=r"no ready box after waiting 1s \(3 of max 3 leased"):
            host.acquire("coders", timeout=1)
        for n in names:
            host.release(n)  # each release starts a filler, which may be booting as the pool goes
    box("delete", "-f", str(f), check=True)
    assert box.vm_processes_after(60) == []
