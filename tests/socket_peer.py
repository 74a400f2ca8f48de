"""A client of a host daemon's SOCK_SEQPACKET socket in a process of its own, running as
any uid: how the tests of the egress daemon and the fork server play another local
user (or a malformed caller) against the real socket."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def ask_as(run_dir: Path, name: str, packet: bytes, *, uid: int = 0, fds: int = 0) -> str:
    """What RUN_DIR/NAME answers PACKET sent with FDS descriptors (of /dev/null) by a
    process of UID: the reply's text, "closed unanswered", or "refused by the socket's
    mode". It reaches the socket through a descriptor of RUN_DIR, as pytest's tmp_path
    above it is closed to other users."""
    run = os.open(run_dir, os.O_PATH | os.O_DIRECTORY)
    code = f"""
import array, os, socket, sys
os.setgid({uid}); os.setuid({uid})
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
try:
    s.connect("/proc/self/fd/{run}/{name}")
except PermissionError:
    print("refused by the socket's mode"); sys.exit()
null = os.open("/dev/null", os.O_RDONLY)
try:
    s.sendmsg([{packet!r}], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [null] * {fds}))] if {fds} else [])
    s.settimeout(10)
    print(s.recv(4096).decode(errors="replace") or "closed unanswered")
except (BrokenPipeError, ConnectionResetError):
    print("closed unanswered")
"""
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                              pass_fds=(run,)).stdout.strip()
    finally:
        os.close(run)
