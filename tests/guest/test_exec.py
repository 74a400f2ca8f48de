"""Exec sessions against the real guest init (`--serve-stdio`): streams, exit codes,
signals, env and workdir, missing commands, concurrency, stdin, tty."""
from __future__ import annotations

import errno
import signal
from typing import TYPE_CHECKING

import pytest

from a3s_box.guest.protocol import ExecRequest, ExitKind, Namespace

if TYPE_CHECKING:
    from tests.guest.conftest import LocalGuest


def test_hello_reports_version_and_transport(guest: LocalGuest) -> None:
    info = guest.client.hello(5)
    assert info["version"] == "1"
    assert info["transport"] == "stdio"
    assert info["kernel"]


def test_ping_answers(guest: LocalGuest) -> None:
    assert guest.client.ping(5) >= 0


def test_console_says_ready_once(guest: LocalGuest) -> None:
    assert guest.console().count("a3s-init: ready\n") == 1


def test_stdout_and_stderr_are_separate_and_exit_code_kept(guest: LocalGuest) -> None:
    r = guest.client.run(["sh", "-c", "echo out; echo err >&2; echo out2; exit 3"],
                         ns=Namespace.ROOT)
    assert (r.exit.kind, r.exit.value, r.exit.code) == (ExitKind.EXITED, 3, 3)
    assert r.stdout == b"out\nout2\n"
    assert r.stderr == b"err\n"


def test_output_written_just_before_exit_is_not_lost(guest: LocalGuest) -> None:
    r = guest.client.run(["sh", "-c", "head -c 300000 /dev/zero; head -c 5000 /dev/zero >&2"],
                         ns=Namespace.AGENT)
    assert (len(r.stdout), len(r.stderr)) == (300000, 5000)


def test_signal_reaches_the_session(guest: LocalGuest) -> None:
    s = guest.client.start(ExecRequest(argv=("sleep", "1000"), ns=Namespace.AGENT))
    assert guest.client.ping(5) >= 0  # STARTED has been sent before this PONG
    s.signal(signal.SIGTERM)
    st = s.wait(10)
    assert (st.kind, st.value, st.code) == (ExitKind.SIGNALED, signal.SIGTERM, 128 + 15)
    assert s.pid and s.pid > 1


def test_env_layers_box_then_request_and_default_path(guest: LocalGuest) -> None:
    r = guest.client.run(["sh", "-c", 'echo "$BOX_ENV $SHARED $MINE"; echo "$PATH"'],
                         env={"SHARED": "from-request", "MINE": "1"})
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "box from-request 1"
    assert lines[1].startswith("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/.a3s")


def test_workdir_defaults_to_the_agents_and_can_be_given(guest: LocalGuest) -> None:
    assert guest.client.run(["pwd"]).stdout == b"/tmp\n"
    assert guest.client.run(["pwd"], workdir="/usr").stdout == b"/usr\n"
    assert guest.client.run(["pwd"], ns=Namespace.ROOT).stdout == b"/\n"


def test_missing_command_is_not_started_with_enoent(guest: LocalGuest) -> None:
    r = guest.client.run(["no-such-command-a3s"])
    assert r.exit.kind is ExitKind.NOT_STARTED
    assert r.exit.value == errno.ENOENT
    assert r.exit.code == 127
    assert "no-such-command-a3s" in r.exit.message
    assert "No such file or directory" in r.exit.message


def test_missing_workdir_is_not_started_and_named(guest: LocalGuest) -> None:
    r = guest.client.run(["true"], workdir="/no/such/dir")
    assert (r.exit.kind, r.exit.value) == (ExitKind.NOT_STARTED, errno.ENOENT)
    assert "/no/such/dir" in r.exit.message


def test_stdin_is_streamed_and_closed(guest: LocalGuest) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB, more than any pipe holds
    r = guest.client.run(["cat"], stdin=data)
    assert r.exit.code == 0 and r.stdout == data


def test_without_stdin_the_command_reads_eof(guest: LocalGuest) -> None:
    r = guest.client.run(["sh", "-c", "cat; echo done"])
    assert r.stdout == b"done\n"


def test_concurrent_sessions_are_independent(guest: LocalGuest) -> None:
    sessions = [guest.client.start(ExecRequest(argv=("sh", "-c", "read x; echo got-$x; exit $x"),
                                               stdin=True)) for _ in range(8)]
    for i, s in reversed(list(enumerate(sessions))):  # answer them in the other order
        s.write(f"{i}\n".encode())
    outs = []
    for i, s in enumerate(sessions):
        st = s.wait(10)
        outs.append((st.value, b"".join(d for fd, d in s if fd == 1)))
    assert outs == [(i, f"got-{i}\n".encode()) for i in range(8)]


def test_tty_session_has_a_terminal_and_follows_resize(guest: LocalGuest) -> None:
    s = guest.client.start(ExecRequest(argv=("sh", "-c", "stty size; read x; stty size"),
                                       tty=True, stdin=True, rows=30, cols=100))
    out = b""
    chunks = iter(s)
    while b"30 100" not in out:  # the size given at start, before any resize
        fd, data = next(chunks)
        assert fd == 1  # with a tty everything is stdout
        out += data
    s.resize(40, 120)
    s.write(b"go\n")
    assert s.wait(10).code == 0
    rest = b"".join(d for _, d in chunks)
    assert b"40 120" in rest and b"30 100" not in rest


@pytest.mark.parametrize("ns", [Namespace.AGENT, Namespace.BUSINESS, Namespace.ROOT])
def test_exec_runs_in_each_namespace(guest: LocalGuest, ns: Namespace) -> None:
    r = guest.client.run(["sh", "-c", "echo ok"], ns=ns)
    assert r.stdout == b"ok\n"
