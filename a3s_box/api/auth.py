"""The API token: made on first start in the home (0600), required over TCP as
`Authorization: Bearer TOKEN`; compared in constant time. Its id (a hash prefix) is
what the audit log records, never the token."""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

TOKEN_FILE = "api-token"


def token_file(home: Path, given: str | None = None) -> Path:
    return Path(given) if given else home / TOKEN_FILE


def ensure_token(path: Path) -> str:
    try:
        text = path.read_text().strip()
        if text:
            return text
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def check(header: str | None, token: str) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())
