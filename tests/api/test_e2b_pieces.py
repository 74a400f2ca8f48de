"""The E2B API's pure pieces: the committed envd modules are what E2B's protos generate,
a sandbox's tokens, when sandboxes end, the domain of port URLs, the Host pattern."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
from starlette.requests import Request

from a3s_box.api.e2b import keys
from a3s_box.api.e2b.control import domain_for
from a3s_box.api.e2b.envd import generate
from a3s_box.api.e2b.expiry import due
from a3s_box.api.e2b.filesystem import _permissions
from a3s_box.api.e2b.gateway import PORT_HOST
from a3s_box.orchestrator.state import BoxRow, SandboxRow


def test_the_generated_envd_modules_are_current() -> None:
    with tempfile.TemporaryDirectory() as d:
        for made in generate.generate(Path(d)):
            committed = Path(generate.__file__).parent / made.relative_to(d)
            assert made.read_text() == committed.read_text(), f"stale {committed}: python -m {generate.__name__}"


def _rec(box: str, end: float, on_timeout: str = "kill", nonce: str = "n") -> SandboxRow:
    return SandboxRow(box, box, "warm", {}, {}, nonce, True, 0.0, end, on_timeout)


def _row(box: str, status: str = "running") -> BoxRow:
    return BoxRow(id=box, project="p", name=box, spec_hash="h", spec={}, image="i", driver="qemu", handle=None,
                  status=status)


def test_tokens_differ_by_sandbox_purpose_and_nonce_and_only_the_same_matches(tmp_path: Path) -> None:
    key = keys.ServerKey(tmp_path).value
    assert (tmp_path / keys.KEY_FILE).stat().st_mode & 0o777 == 0o600
    a, b, a2 = _rec("a", 0), _rec("b", 0), _rec("a", 0, nonce="other")
    tokens = {keys.envd_token(key, a), keys.envd_token(key, b), keys.envd_token(key, a2), keys.traffic_token(key, a)}
    assert len(tokens) == 4
    assert keys.matches(keys.envd_token(key, a), keys.envd_token(key, a))
    assert not keys.matches(None, keys.envd_token(key, a)) and not keys.matches("", keys.envd_token(key, a))
    assert keys.envd_token(keys.ServerKey(tmp_path).value, a) == keys.envd_token(key, a)  # stable: connect again


def test_sandboxes_end_past_their_time_killed_or_paused_and_paused_ones_wait() -> None:
    now = time.time()
    pairs = [(_rec("old", now - 1), _row("old")), (_rec("new", now + 60), _row("new")),
             (_rec("nap", now - 1, "pause"), _row("nap")), (_rec("napped", now - 1, "pause"), _row("napped", "paused"))]
    assert [(a, r.name) for a, r in due(pairs, now)] == [("kill", "old"), ("pause", "nap")]


@pytest.mark.parametrize(("host", "configured", "domain"), [
    ("127.0.0.1:8787", None, "localhost:8787"), ("localhost:8787", None, "localhost:8787"),
    ("box.example.com", None, "box.example.com"), ("10.0.0.5:80", None, "10.0.0.5:80"),
    ("127.0.0.1:8787", "sbx.example.com", "sbx.example.com")])
def test_the_domain_of_port_urls(host: str, configured: str | None, domain: str) -> None:
    request = Request({"type": "http", "headers": [(b"host", host.encode())]})
    assert domain_for(request, configured) == domain


def test_the_port_host_pattern() -> None:
    hit = PORT_HOST.match("8000-warm-1a2b3c.localhost:8787")
    assert hit is not None and hit.groups() == ("8000", "warm-1a2b3c")
    for host in ("127.0.0.1:8787", "localhost:8787", "warm-1a2b3c.localhost", "8000-.x", "123456-a.x"):
        assert PORT_HOST.match(host) is None, host


def test_permissions_read_as_envd_writes_them() -> None:
    assert _permissions(0o100644) == "-rw-r--r--"
    assert _permissions(0o040755) == "drwxr-xr-x"
    assert _permissions(0o120777) == "Lrwxrwxrwx"
