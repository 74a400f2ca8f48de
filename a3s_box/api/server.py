"""Run the API: on a unix socket in the home (0600: only its user reaches it) by
default, or on TCP with a bearer token. uvicorn serves it (a well-kept ASGI server)."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from a3s_box.api.auth import ensure_token, token_file

API_SOCKET = "api.sock"


def serve(home: Path, listen: str | None = None, socket_path: Path | None = None,
          token_path: Path | None = None, log_level: str = "warning",
          reconcile: float | None = None, e2b_domain: str | None = None) -> None:
    """RECONCILE: the period of the host's reconcile loop (None: no loop). E2B_DOMAIN: the
    domain of E2B sandbox port URLs (default: the host the SDK called)."""
    import uvicorn

    from a3s_box.api.app import create_app

    home.mkdir(parents=True, exist_ok=True)
    if listen:
        host, _, port = listen.rpartition(":")
        token = ensure_token(token_path or token_file(home))
        app = create_app(home, token, reconcile, e2b_domain)
        uvicorn.run(app, host=host.strip("[]") or "127.0.0.1", port=int(port), log_level=log_level,
                    ws="websockets-sansio")
        return
    path = socket_path or home / API_SOCKET
    path.unlink(missing_ok=True)
    # bound here, not by uvicorn (which makes its unix sockets 0666): only this user connects
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    listener.listen(128)
    uvicorn.run(create_app(home, None, reconcile, e2b_domain), fd=listener.fileno(), log_level=log_level, ws="websockets-sansio")
