"""`box serve --listen` on a free local port, as a user starts it, for the tests that talk
to a real server over TCP (the API, the remote client, tokens, MCP)."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def served(env: dict[str, str], log: Path) -> Iterator[str]:
    """The server's base URL once it accepts connections; its stderr goes to LOG (a pipe
    nobody reads would stall it); SIGINT after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "a3s_box.cli", "serve", "--listen", f"127.0.0.1:{port}"],
                                env=env, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
