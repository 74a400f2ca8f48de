"""`attach`: this process's stdio pumped to a session, tty handling restored after."""
from __future__ import annotations

import fcntl
import os
import struct
import termios
from typing import TYPE_CHECKING

import pytest

from a3s_box.guest.protocol import ExecRequest, Namespace
from a3s_box.guest.terminal import attach

if TYPE_CHECKING:
    from tests.guest.conftest import LocalGuest


def test_attach_pipes_stdin_and_returns_the_exit_code(guest: LocalGuest,
                                                      capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    r, w = os.pipe()
    os.write(w, b"from stdin\n")
    os.close(w)
    s = guest.client.start(ExecRequest(argv=("sh", "-c", "cat; echo oops >&2; exit 5"),
                                       ns=Namespace.AGENT, stdin=True))
    try:
        code = attach(s, tty=False, stdin_fd=r)
    finally:
        os.close(r)
    out = capfdbinary.readouterr()
    assert code == 5
    assert out.out == b"from stdin\n" and out.err == b"oops\n"


def test_attach_with_a_tty_sets_raw_mode_then_restores_it(guest: LocalGuest,
                                                          capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    seen: list[list[object]] = []
    s = guest.client.start(ExecRequest(argv=("sh", "-c", "read x; stty size; echo got-$x"),
                                       tty=True, stdin=True, rows=24, cols=80))
    os.write(master, b"hello\n")  # typed ahead at our terminal: raw mode must keep it
    try:
        # attach sends our terminal's size first: set it so the guest's stty shows it
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 99, 0, 0))
        code = attach(s, tty=True, stdin_fd=slave)
        seen.append(termios.tcgetattr(slave))
    finally:
        os.close(master)
        os.close(slave)
    assert code == 0
    assert seen[0] == before
    out = capfdbinary.readouterr().out
    assert b"33 99" in out and b"got-hello" in out


def test_attach_reports_a_command_that_did_not_start(guest: LocalGuest) -> None:
    s = guest.client.start(ExecRequest(argv=("no-such-cmd-a3s",)))
    assert attach(s, tty=False) == 127


@pytest.mark.parametrize("sig", [15, 9])
def test_attach_maps_signals_to_128_plus(guest: LocalGuest, sig: int) -> None:
    s = guest.client.start(ExecRequest(argv=("sh", "-c", f"kill -{sig} $$")))
    assert attach(s, tty=False) == 128 + sig
