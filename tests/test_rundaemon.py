"""rundaemon: a per-home daemon's socket, tried by another local user and by racing starters."""
from __future__ import annotations

import os
import socket
import stat
import sys
import threading
from pathlib import Path

import pytest

from a3s_box import rundaemon
from tests.socket_peer import ask_as

# A stand-in daemon: binds through rundaemon, forks off, answers each connection's packet with "hi".
DAEMON = """
import os, sys, threading
from pathlib import Path
from a3s_box import rundaemon
listener = rundaemon.bind_listening(Path(sys.argv[1]), "d.sock", 8)
with open(Path(sys.argv[1]) / "starts", "a") as f:
    f.write("x")
if os.fork():
    os._exit(0)
def serve(conn):
    if conn.recv(100) == b"stop":
        os._exit(0)
    conn.send(b"hi")
    conn.close()
while True:
    threading.Thread(target=serve, args=(listener.accept()[0],)).start()
"""


def _start(run_path: Path, run: int) -> None:
    rc = rundaemon.start_detached([sys.executable, "-c", DAEMON, str(run_path)], run, "d.log",
                                  timeout=30, max_log=1000)
    assert rc == 0, rundaemon.log_tail(run, "d.log")


def test_concurrent_callers_start_one_daemon_and_reach_it(tmp_path: Path) -> None:
    run_path = tmp_path / "run"
    socks: list[socket.socket] = []

    def caller() -> None:
        run = rundaemon.open_run_dir(run_path)
        try:
            socks.append(rundaemon.connect_or_start(run, "d.sock", "d.lock", lambda: _start(run_path, run)))
        finally:
            os.close(run)

    threads = [threading.Thread(target=caller) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(socks) == 6
        assert (run_path / "starts").read_text() == "x"
        for s in socks:
            s.send(b"ping")
            assert s.recv(10) == b"hi"
        mode = os.stat(run_path / "d.sock").st_mode
        assert stat.S_IMODE(mode) == 0o600 and stat.S_IMODE(os.stat(run_path).st_mode) == 0o700
        assert ask_as(run_path, "d.sock", b"ping", uid=65534) == "refused by the socket's mode"
        assert ask_as(run_path, "d.sock", b"ping", uid=0) == "hi"
    finally:
        for s in socks:
            s.close()
        assert ask_as(run_path, "d.sock", b"stop") == "closed unanswered"


def test_a_stale_socket_is_replaced_by_the_next_starter(tmp_path: Path) -> None:
    run_path = tmp_path / "run"
    run = rundaemon.open_run_dir(run_path)
    try:
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stale.bind(str(run_path / "d.sock"))
        stale.close()  # a daemon that died: its socket file stays, nobody listens
        assert rundaemon.try_connect(run, "d.sock") is None
        with rundaemon.connect_or_start(run, "d.sock", "d.lock", lambda: _start(run_path, run)) as s:
            s.send(b"ping")
            assert s.recv(10) == b"hi"
    finally:
        os.close(run)
        ask_as(run_path, "d.sock", b"stop")


def test_a_folder_of_another_user_or_a_link_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    with pytest.raises(rundaemon.DaemonSocketError, match="belongs to uid 65534"):
        rundaemon.open_run_dir(theirs)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(rundaemon.DaemonSocketError, match="link"):
        rundaemon.open_run_dir(tmp_path / "link")


def test_an_open_folder_is_closed_to_others(tmp_path: Path) -> None:
    run_path = tmp_path / "run"
    run_path.mkdir(mode=0o777)
    os.chmod(run_path, 0o777)
    os.close(rundaemon.open_run_dir(run_path))
    assert stat.S_IMODE(os.stat(run_path).st_mode) == 0o700


def test_a_starter_that_fails_says_why(tmp_path: Path) -> None:
    run = rundaemon.open_run_dir(tmp_path / "run")
    try:
        rc = rundaemon.start_detached([sys.executable, "-c", "import sys; sys.exit('no port for you')"], run,
                                      "d.log", timeout=30, max_log=1000)
        assert rc == 1
        assert rundaemon.log_tail(run, "d.log") == "no port for you"
    finally:
        os.close(run)
