"""Wire this process's terminal to a guest session (`box exec -i -t`).

stdout/stderr of the session go to ours; our stdin goes to the session when it was
started with stdin. With a tty our terminal is put in raw mode (restored on the way
out, whatever happens) and SIGWINCH becomes a RESIZE.
"""
from __future__ import annotations

import os
import signal
import sys
import termios
import threading
import tty as ttymod
from collections.abc import Callable
from types import FrameType
from typing import Any, BinaryIO

from a3s_box.guest.client import Session


def _writer(stream: BinaryIO) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()

    return write


def _pump_stdin(session: Session, fd: int) -> None:
    try:
        while data := os.read(fd, 1 << 16):
            session.write(data)
        session.close_stdin()
    except Exception:  # noqa: BLE001 - the session ended or stdin broke: stop pumping
        return


def attach(session: Session, tty: bool, stdin_fd: int = 0) -> int:
    """Pump our stdio to `session` until it exits; its exit code (shell convention)."""
    out = sys.stdout.buffer
    err = sys.stderr.buffer
    session.set_handlers(_writer(out), _writer(err))
    saved: list[Any] | None = None
    old_winch: Any = None
    is_tty = tty and os.isatty(stdin_fd)
    if is_tty:
        saved = termios.tcgetattr(stdin_fd)
        ttymod.setraw(stdin_fd, termios.TCSANOW)  # keep what was typed ahead

        def on_winch(_sig: int, _frame: FrameType | None) -> None:
            size = os.get_terminal_size(stdin_fd)
            session.resize(size.lines, size.columns)

        old_winch = signal.signal(signal.SIGWINCH, on_winch)
        on_winch(signal.SIGWINCH, None)
    try:
        if session.request.stdin:
            threading.Thread(target=_pump_stdin, args=(session, stdin_fd), daemon=True).start()
        return session.wait().code
    finally:
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        if is_tty:
            signal.signal(signal.SIGWINCH, old_winch)
