"""Run the guest init on this host (`init --serve-stdio`), talking over a socketpair.

The same protocol server as in a VM, minus mounting and the root switch: for tests and
for trying the guest side without booting anything. Namespaces are still created, so
the caller must be root.
"""
from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from a3s_box.errors import GuestError


def spawn_local_guest(binary: Path, *extra_args: str,
                      stderr: int | None = None) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start `binary --serve-stdio`; return the process and our end of its channel.

    The guest's log lines (what the console shows in a VM) go to `stderr` (default:
    inherited). The caller closes the socket and waits for the process.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            [str(binary), "--serve-stdio", "--root", "none", *extra_args],
            stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=stderr, close_fds=True)
    except OSError as e:
        ours.close()
        raise GuestError("", f"cannot start local guest {binary}: {e}") from e
    finally:
        theirs.close()
    return proc, ours
