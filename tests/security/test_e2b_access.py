"""The E2B-compatible API attacked from a tenant's side (a real `box serve` on TCP, httpx as
the client): no API key or a made-up one; a sandbox token reaching another token's
sandbox, a template outside its list or a declared box; envd calls without the
sandbox's access token, with another sandbox's, or for an unknown sandbox; a private
sandbox's port without its traffic token; a create asking for an insecure sandbox.

Faked: the boxes are rows put in the state store (no VM boots: access is decided before
a VM is asked anything); tests/e2e/test_e2b_sdk.py does it all with E2B's SDK on VMs."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from a3s_box.api.e2b import keys
from a3s_box.orchestrator.state import BoxRow, PoolRow, SandboxRow, StateStore
from tests.api.test_api import api  # noqa: F401 - the fixture: a real server on TCP

Api = tuple[httpx.Client, str, Path]


def _box(name: str, owner: str | None, status: str = "running", pool: str | None = "warm") -> BoxRow:
    return BoxRow(id=f"proj.{name}", project="proj", name=name, spec_hash="h", spec={}, image="sha256:0",
                  driver="qemu", handle=None, status=status, pool=pool, lease=name if owner else None, owner=owner)


def _sandbox(name: str, public: bool = True) -> SandboxRow:
    now = time.time()
    return SandboxRow(box_id=f"proj.{name}", sandbox_id=name, template="warm", metadata={}, env={},
                      nonce=name * 4, public=public, started_at=now, end_at=now + 3600, on_timeout="kill")


@pytest.fixture
def tenants(api: Api) -> Iterator[tuple[httpx.Client, str, str, Path]]:  # noqa: F811
    """Two sandbox tokens for pool warm (alice's sandbox `mine`, bob's `theirs`, private),
    a declared box; (client, alice's key, bob's key, home)."""
    client, admin, home = api
    made = [client.post("/v1/tokens", json={"templates": ["warm"], "name": who},
                        headers={"authorization": f"Bearer {admin}"}).json() for who in ("alice", "bob")]
    store = StateStore(home / "state.db")
    with store.transaction():
        store.put_pool(PoolRow("proj", "warm", "h", {"box": "worker", "box_spec": "h", "min_ready": 0, "max": 2}))
        store.put_pool(PoolRow("proj", "other", "h", {"box": "worker", "box_spec": "h", "min_ready": 0, "max": 2}))
        store.put_box(_box("mine", made[0]["id"]))
        store.put_box(_box("theirs", made[1]["id"]))
        store.put_box(_box("asleep", made[0]["id"], status="paused"))
        store.put_box(_box("declared", None, pool=None))
        store.put_sandbox(_sandbox("mine"))
        store.put_sandbox(_sandbox("theirs", public=False))
        store.put_sandbox(_sandbox("asleep"))
    store.close()
    yield client, made[0]["token"], made[1]["token"], home


def _envd_token(home: Path, name: str) -> str:
    return keys.envd_token(keys.ServerKey(home).value, _sandbox(name))


def test_the_control_api_needs_a_key_it_knows(tenants: tuple[httpx.Client, str, str, Path]) -> None:
    client = tenants[0]
    for headers in ({}, {"X-API-Key": "a3s_sb_made-up"}, {"X-API-Key": "e2b_0123456789abcdef"}):
        r = client.get("/e2b/v2/sandboxes", headers=headers)
        assert r.status_code == 401 and r.json()["code"] == 401, r.text
        assert client.post("/e2b/sandboxes", json={"templateID": "warm"}, headers=headers).status_code == 401


def test_a_body_is_read_only_for_a_known_key_and_only_up_to_its_cap(
        tenants: tuple[httpx.Client, str, str, Path]) -> None:
    client, alice, _bob, _home = tenants
    big = b"{" + b" " * (9 << 20) + b"}"
    r = client.post("/e2b/sandboxes", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 401
    r = client.post("/e2b/sandboxes", content=big, headers={"X-API-Key": alice, "Content-Type": "application/json"})
    assert r.status_code == 413, r.text

    def chunks() -> Iterator[bytes]:  # no Content-Length to refuse early: the cap counts as it reads
        yield b"{"
        for _ in range(9):
            yield b" " * (1 << 20)
        yield b"}"
    r = client.post("/e2b/sandboxes", content=chunks(), headers={"X-API-Key": alice})
    assert r.status_code == 413, r.text


def test_a_sandbox_key_sees_only_its_own_sandboxes(tenants: tuple[httpx.Client, str, str, Path]) -> None:
    client, alice, _bob, _home = tenants
    key = {"X-API-Key": alice}
    assert sorted(s["sandboxID"] for s in client.get("/e2b/v2/sandboxes", headers=key).json()) == ["asleep", "mine"]
    assert client.get("/e2b/sandboxes/mine", headers=key).json()["state"] == "running"
    for method, path, body in (("GET", "/e2b/sandboxes/theirs", None), ("DELETE", "/e2b/sandboxes/theirs", None),
                               ("POST", "/e2b/sandboxes/theirs/timeout", {"timeout": 1}),
                               ("POST", "/e2b/sandboxes/theirs/pause", None),
                               ("POST", "/e2b/sandboxes/theirs/connect", {"timeout": 10}),
                               ("POST", "/e2b/sandboxes/declared/connect", {"timeout": 10})):
        r = client.request(method, path, json=body, headers=key)
        assert r.status_code == 404, (method, path, r.text)


def test_a_sandbox_key_creates_only_from_its_templates_and_never_insecure(
        tenants: tuple[httpx.Client, str, str, Path]) -> None:
    client, alice, _bob, _home = tenants
    key = {"X-API-Key": alice}
    for template in ("other", "declared", "proj.other"):
        r = client.post("/e2b/v2/sandboxes", json={"templateID": template}, headers=key)
        assert r.status_code == 403 and "may not use it" in r.json()["message"], r.text
    assert client.post("/e2b/v2/sandboxes", json={"templateID": "nothing"}, headers=key).status_code == 404
    r = client.post("/e2b/v2/sandboxes", json={"templateID": "warm", "secure": False}, headers=key)
    assert r.status_code == 400 and "secure" in r.json()["message"]
    r = client.post("/e2b/v2/sandboxes", json={"templateID": "warm", "network": {"allowOut": ["0.0.0.0/0"]}},
                    headers=key)
    assert r.status_code == 400 and "Boxfile" in r.json()["message"]
    # the template has no network: asking for the internet is refused, not silently ignored
    r = client.post("/e2b/v2/sandboxes", json={"templateID": "warm", "allow_internet_access": True}, headers=key)
    assert r.status_code == 400 and "no network" in r.json()["message"]


def test_envd_needs_the_sandboxs_own_access_token(tenants: tuple[httpx.Client, str, str, Path]) -> None:
    client, _alice, _bob, home = tenants
    rpc = "/e2b/process.Process/List"
    json_ = {"Content-Type": "application/json"}
    for token in (None, "", _envd_token(home, "theirs"), "a3s_ea_" + "A" * 43):
        headers = {**json_, "E2b-Sandbox-Id": "mine"}
        if token is not None:
            headers["X-Access-Token"] = token
        r = client.post(rpc, content=b"{}", headers=headers)
        assert r.status_code == 401 and r.json()["code"] == "unauthenticated", r.text
        assert client.get("/e2b/files", params={"path": "/etc/passwd"}, headers=headers).status_code == 401
        r = client.post("/e2b/filesystem.Filesystem/Stat", content=b'{"path": "/"}', headers=headers)
        assert r.status_code == 401, r.text
    # the right token for a sandbox whose box does not serve: unavailable, nothing asked of a VM
    r = client.post(rpc, content=b"{}", headers={**json_, "E2b-Sandbox-Id": "asleep",
                                                 "X-Access-Token": _envd_token(home, "asleep")})
    assert r.status_code == 503 and r.json()["code"] == "unavailable", r.text
    r = client.post(rpc, content=b"{}", headers={**json_, "E2b-Sandbox-Id": "ghost", "X-Access-Token": "x"})
    assert r.json()["code"] == "unavailable" and "not found" in r.json()["message"]


def test_a_private_sandbox_port_needs_its_traffic_token(tenants: tuple[httpx.Client, str, str, Path]) -> None:
    client, _alice, _bob, home = tenants
    port = client.base_url.port
    r = client.get("/", headers={"Host": f"8000-theirs.localhost:{port}"})
    assert r.status_code == 401 and "traffic" in r.text
    wrong = keys.traffic_token(keys.ServerKey(home).value, _sandbox("mine"))
    r = client.get("/", headers={"Host": f"8000-theirs.localhost:{port}", "e2b-traffic-access-token": wrong})
    assert r.status_code == 401
    assert client.get("/", headers={"Host": f"8000-ghost.localhost:{port}"}).status_code == 502
