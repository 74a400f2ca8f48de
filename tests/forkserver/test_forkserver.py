"""The fork server, real: started on demand, forking real shims, attacked over its socket.

Faked: the shims' VMM is /bin/sleep (their launch.json says so); the shim around it is
the real one, supervising it as it would QEMU. Booting VMs here would prove nothing more
about the fork server (tests/e2e boot every box through it).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from a3s_box.drivers.common.environ import host_process_env
from a3s_box.drivers.common.supervision import is_supervisor
from a3s_box.drivers.qemu.shim_loop import build_shim_loop
from a3s_box.forkserver import client, wire
from a3s_box.logs.writer import LogLimits
from tests.socket_peer import ask_as

SHIM = "a3s_box.drivers.qemu.shim"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("A3S_BOX_FORKSERVER_IDLE_EXIT", "600")
    yield tmp_path
    for pid in _servers(tmp_path):
        os.kill(pid, signal.SIGKILL)


def _servers(home: Path) -> list[int]:
    title = f"a3s_box.forkserver.server {home}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(title):
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def _rundir(home: Path, name: str) -> Path:
    rundir = home / "boxes" / name
    rundir.mkdir(parents=True)
    (rundir / "launch.json").write_text(json.dumps({"loop": str(build_shim_loop(home / "cache")),
        "box_id": name, "argv": ["/bin/sleep", "120"], "channel": str(rundir / "channel.sock"),
        "console": str(rundir / "console.log"), "console_socket": None, "guest_socket": str(rundir / "guest.sock"),
        "jail": None, "logging": LogLimits().to_json()}))
    return rundir


def _spawn(home: Path, rundir: Path, env: dict[str, str] | None = None) -> int:
    with open(rundir / "shim.log", "ab") as log, open(os.devnull, "rb") as null:
        return client.spawn(home, SHIM, [str(rundir)], (null.fileno(), log.fileno(), log.fileno()),
                            env if env is not None else host_process_env())


def _end(pid: int, rundir: Path) -> None:
    os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        if not is_supervisor(pid, str(rundir), SHIM):
            return
        time.sleep(0.05)
    raise AssertionError(f"shim {pid} did not end")


def _wait_for_vmm(rundir: Path) -> None:
    """The real shim runs its stand-in VMM and says so in its log once it has exec'd (a
    child caught before its exec has the shim's memory, not yet the VMM's environment)."""
    for _ in range(200):
        if b"qemu pid" in (rundir / "shim.log").read_bytes():
            return
        time.sleep(0.05)
    raise AssertionError(f"no VMM started for {rundir}")


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().split("=", 1) for e in raw if e)


def _status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(name)


def test_a_shim_is_forked_named_for_its_box_in_a_session_of_its_own(home: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("A_SECRET_OF_THE_CALLER", "sk-must-not-reach-the-shim")
    rundir = _rundir(home, "p.one")
    old = os.umask(0o027)
    try:
        pid = _spawn(home, rundir)
    finally:
        os.umask(old)
    try:
        # what the drivers, `ps` and the reaper read: the module and the box's folder
        assert Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0") == f"{SHIM} {rundir}".encode()
        assert is_supervisor(pid, str(rundir), SHIM)
        assert os.getsid(pid) == pid and os.getpgid(pid) == pid
        assert int(_status_field(pid, "PPid")) != os.getpid()  # not the caller's child
        assert _status_field(pid, "Umask") == "0027"
        _wait_for_vmm(rundir)
        # the VMM gets the environment the caller gave: nothing of the caller's own (its
        # secrets), nothing of the server's (the title room)
        (vmm,) = map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
        assert _environ(vmm) == host_process_env()
        assert (rundir / "shim.pid").read_text().strip() == str(pid)
    finally:
        _end(pid, rundir)
    assert json.loads((rundir / "exit.json").read_text())["reason"].endswith("while stopping (SIGTERM to the shim)")


def test_boxes_do_not_share_a_fate_with_each_other_or_with_the_server(home: Path) -> None:
    a, b = _rundir(home, "p.a"), _rundir(home, "p.b")
    pa, pb = _spawn(home, a), _spawn(home, b)
    (server,) = _servers(home)
    try:
        os.kill(pa, signal.SIGKILL)
        for _ in range(100):
            if not is_supervisor(pa, str(a), SHIM):
                break
            time.sleep(0.05)
        assert not is_supervisor(pa, str(a), SHIM) and is_supervisor(pb, str(b), SHIM)
        assert _servers(home) == [server]
        os.kill(server, signal.SIGKILL)
        for _ in range(100):
            if not _servers(home):
                break
            time.sleep(0.05)
        assert is_supervisor(pb, str(b), SHIM)  # orphaned, still serving its box
        c = _rundir(home, "p.c")
        pc = _spawn(home, c)  # a new server is started for it
        assert is_supervisor(pc, str(c), SHIM) and len(_servers(home)) == 1
        _end(pc, c)
    finally:
        _end(pb, b)


def test_a_caller_of_another_environment_gets_a_server_of_its_own(home: Path) -> None:
    a, b = _rundir(home, "p.a"), _rundir(home, "p.b")
    pa = _spawn(home, a)
    pb = _spawn(home, b, {**host_process_env(), "TZ": "UTC"})
    try:
        assert len(_servers(home)) == 2
        for rundir in (a, b):
            _wait_for_vmm(rundir)
        (va,), (vb,) = (map(int, Path(f"/proc/{p}/task/{p}/children").read_text().split()) for p in (pa, pb))
        assert _environ(vb).get("TZ") == "UTC" and "TZ" not in _environ(va)
    finally:
        _end(pa, a)
        _end(pb, b)


def test_the_server_exits_when_nobody_asks(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("A3S_BOX_FORKSERVER_IDLE_EXIT", "0.5")
    rundir = _rundir(home, "p.idle")
    pid = _spawn(home, rundir)
    try:
        for _ in range(200):
            if not _servers(home):
                break
            time.sleep(0.05)
        assert not _servers(home)
        assert is_supervisor(pid, str(rundir), SHIM)
        assert "not asked for 0.5s, exiting" in (home / "run" / wire.LOG_NAME).read_text()
    finally:
        _end(pid, rundir)


def _raw(home: Path, packet: bytes, fds: int = 3, uid: int = 0) -> str:
    """What a client of the server's socket gets for PACKET with FDS descriptors, as UID."""
    return ask_as(home / "run", wire.socket_name(client.fingerprint(host_process_env())), packet, uid=uid, fds=fds)


def test_the_socket_is_its_owners_alone_and_refuses_what_it_does_not_run(home: Path) -> None:
    rundir = _rundir(home, "p.first")
    pid = _spawn(home, rundir)  # the server runs
    _end(pid, rundir)
    good = wire.encode_request(wire.Request(SHIM, ("/nowhere",)))
    assert _raw(home, good, uid=65534) == "refused by the socket's mode"
    sock = home / "run" / wire.socket_name(client.fingerprint(host_process_env()))
    assert sock.stat().st_mode & 0o777 == 0o600 and (home / "run").stat().st_mode & 0o777 == 0o700
    try:  # open the doors the modes keep shut: SO_PEERCRED still keeps the stranger out
        (home / "run").chmod(0o711)
        sock.chmod(0o666)
        assert _raw(home, good, uid=65534) == "closed unanswered"
    finally:
        sock.chmod(0o600)
        (home / "run").chmod(0o700)
    python = json.dumps({"v": 1, "module": "runpy", "args": ["-c", "x"], "cwd": "/", "umask": 18}).encode()
    assert json.loads(_raw(home, python)) == {"error": "not a module this server runs: 'runpy'"}
    assert json.loads(_raw(home, good, fds=4)) == {"error": "4 descriptors, not 3"}
    assert json.loads(_raw(home, good, fds=0)) == {"error": "0 descriptors, not 3"}
    assert "not JSON" in json.loads(_raw(home, b"\xff" * 100))["error"]
    # and it serves on
    again = _rundir(home, "p.again")
    pid = _spawn(home, again)
    assert is_supervisor(pid, str(again), SHIM)
    _end(pid, again)


def test_a_home_run_folder_of_another_uid_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir(mode=0o700)
    os.chown(tmp_path / "run", 65534, 65534)
    with pytest.raises(client.SpawnError, match="belongs to uid 65534"):
        with open(os.devnull, "rb") as null:
            client.spawn(tmp_path, SHIM, ["/x"], (null.fileno(),) * 3, host_process_env())
