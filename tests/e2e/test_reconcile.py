"""`box serve`'s reconcile loop on real microVMs: a box whose VMM is killed -9 comes
back by itself (restart: always, the default), and so does one whose virtiofsd is killed
(its shim stops the VM rather than run with its folder gone); a box whose egress proxy
(the host's daemon) is killed runs on, registered again with a fresh one; one with restart: no
stays down and says so, and a pool is refilled by the loop (no filler process) after
an acquire."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import BoxCli, boxfile

pytestmark = pytest.mark.vm

BODY = """project: rec
boxes:
  keep:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
  once:
    image: hello
    restart: "no"
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
  net:
    image: hello
    network: {mode: public, ports: ["127.0.0.1:PUBPORT:8080"]}
    namespaces: {agent: {command: ["/bin/sh", "-c", "while true; do echo served | nc -l -p 8080; done"]}}
  shared:
    image: hello
    volumes: ["./src:/workspace"]
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
  worker:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
pools:
  warm: {box: worker, min_ready: 1, max: 2}
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _fetch(port: int) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            return c.recv(100)
    except OSError:
        return b""


def until(check: Callable[[], Any], timeout: float = 120, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def ps(box: BoxCli) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in box("ps", "-o", "json", check=True).json()}


def egress_daemon(box: BoxCli) -> int | None:
    out = subprocess.run(["pgrep", "-f", f"a3s_box.network.daemon {box.home}"], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.stdout.split() else None


def virtiofsd_of(shim: int) -> int:
    out = subprocess.run(["pgrep", "-P", str(shim), "-f", "virtiofsd"], capture_output=True, text=True).stdout
    return int(out.split()[0])


def qemu_of(shim: int) -> int:
    out = subprocess.run(["pgrep", "-P", str(shim), "-f", "qemu-system"], capture_output=True, text=True).stdout
    return int(out.split()[0])


@pytest.fixture
def server(box: BoxCli, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`box serve` with its loop every half second; its log in serve.log."""
    sock = tmp_path / "api.sock"
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "a3s_box.cli", "serve", "--socket", str(sock),
                                 "--reconcile-period", "0.5"], env=box.env, stderr=log)
    until(sock.exists, 30, "the server's socket")
    yield proc
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_the_loop_restarts_what_died_and_refills_pools(box: BoxCli, hello_image: Path, tmp_path: Path,
                                                       server: subprocess.Popen[bytes]) -> None:
    pub = _free_port()
    f = boxfile(tmp_path, hello_image, BODY.replace("PUBPORT", str(pub)))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "kept.txt").write_text("still here\n")
    box("apply", "-f", str(f), check=True)
    before = ps(box)
    os.kill(qemu_of(before["keep"]["pid"]), signal.SIGKILL)  # the VMM, under its shim
    os.kill(before["once"]["pid"], signal.SIGKILL)  # the shim itself (its VMM follows it)
    daemon = egress_daemon(box)
    assert daemon is not None
    os.kill(daemon, signal.SIGKILL)  # the host's egress proxy: its boxes register again with a new one
    os.kill(virtiofsd_of(before["shared"]["pid"]), signal.SIGKILL)  # the volume's server: no folder, no VM

    back = until(lambda: (b := ps(box)["keep"])["status"] == "running" and b["pid"] != before["keep"]["pid"]
                 and "1 restart" in b["detail"] and b, what="keep restarted by the loop")
    assert "last exit: qemu was killed by SIGKILL" in back["detail"]
    events = [json.loads(line) for line in box("-o", "json", "events", check=True).out.splitlines()]
    said = [e for e in events if e["what"] == "restart" and e["target"] == "rec.keep"]
    assert said and said[-1]["who"] == "reconcile" and said[-1]["result"] == "ok", events[-5:]
    assert said[-1]["exited"] == "qemu was killed by SIGKILL" and said[-1]["restarts"] == 1
    assert box("exec", "keep", "--", "hostname", check=True).out == "keep\n"
    # the box stays up: its supervisor registered it with a fresh daemon, which serves its DNS
    until(lambda: (d := egress_daemon(box)) is not None and d != daemon, what="a fresh egress daemon")
    answer = until(lambda: "198.18." in (r := box("exec", "net", "--", "busybox", "nslookup", "example.com")).out and r,
                   what="the box's DNS served again")
    assert answer.code == 0
    # and its published port: the new daemon asks the box's shim for sockets of its namespace
    assert until(lambda: _fetch(pub) == b"served\n", what="the published port served again")
    assert ps(box)["net"]["pid"] == before["net"]["pid"] and "restart" not in ps(box)["net"]["detail"]
    shared = until(lambda: (b := ps(box)["shared"])["status"] == "running" and "1 restart" in b["detail"] and b,
                   what="shared restarted with a fresh virtiofsd")
    assert "virtiofsd of volume /workspace ended (killed by SIGKILL); the VM was stopped" in shared["detail"], shared
    assert box("exec", "shared", "--", "cat", "/workspace/kept.txt", check=True).out == "still here\n"
    down = until(lambda: "restart" in (b := ps(box)["once"])["detail"] and b, what="once left down")
    assert down["status"] == "exited"
    assert "0 restarts, last exit: the shim is gone without a word (killed?)" in down["detail"]

    # an acquire while the server runs spawns no filler: the loop refills the pool
    box("pool", "acquire", "warm", "--name", "job", check=True)
    state = until(lambda: (p := box("pool", "ls", "-o", "json", check=True).json()[0])["ready"] == 1 and p,
                  what="the pool refilled")
    assert (state["leased"], state["total"]) == (1, 2)
    fillers = subprocess.run(["pgrep", "-f", "a3s_box.orchestrator.pool_filler"], capture_output=True).stdout
    assert fillers == b""
    box("pool", "release", "job", check=True)
    box("delete", "-f", str(f), check=True)
    assert box.vm_processes() == []


def test_after_a_host_restart_the_server_brings_everything_back(box: BoxCli, hello_image: Path,
                                                                tmp_path: Path) -> None:
    """Every a3s-box process gone at once (as at a host restart: VMs, shims, helpers),
    then `box serve` started: declared boxes back, the pool full again, the lease kept."""
    f = boxfile(tmp_path, hello_image, BODY.replace('    restart: "no"\n', "").replace("PUBPORT", str(_free_port())),
                "restart.yaml")
    (tmp_path / "src").mkdir()
    box("apply", "-f", str(f), check=True)
    box("pool", "acquire", "warm", "--name", "held", check=True)
    # the filler that acquire started has refilled and gone (a host restart leaves none)
    until(lambda: subprocess.run(["pgrep", "-f", f"pool_filler {box.home}"], capture_output=True).returncode == 1,
          120, "the pool's filler done")
    for pid in box.vm_processes():
        os.kill(pid, signal.SIGKILL)
    until(lambda: box.vm_processes() == [], 30, "every VM process gone")
    assert all(b["status"] == "exited" for b in ps(box).values())
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "a3s_box.cli", "serve", "--socket",
                                   str(tmp_path / "api2.sock"), "--reconcile-period", "0.5"],
                                  env=box.env, stderr=out)
    try:
        back = until(lambda: (s := ps(box)) and all(s[n]["status"] == "running" and "restart" in s[n]["detail"]
                                                    for n in ("keep", "once", "net", "shared", "held")) and s,
                     timeout=300, what="every box back")
        assert box("exec", "held", "--", "hostname", check=True).out == "worker\n"  # the lease, kept
        pool = until(lambda: (p := box("pool", "ls", "-o", "json", check=True).json()[0])["ready"] == 1 and p,
                     what="the pool full again")
        assert (pool["leased"], pool["total"]) == (1, 2)
        assert back["held"]["pid"] is not None
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    box("pool", "release", "held", check=True)
    box("delete", "-f", str(f), check=True)
    assert box.vm_processes() == []
