"""Sandbox tokens attacked as their holders would (a real `box serve` on TCP, httpx as the
client): a token an agent or a tenant holds must not apply a Boxfile (root on the host
through a volume), see or touch another token's boxes or the declared ones, acquire from
pools outside its list, issue tokens or read the audit log; a revoked token is refused at
once; the audit log names the token.

Faked: the boxes are rows put in the state store (no VM boots here: access is decided
before a VM is asked anything); tests/e2e/test_sandbox_tokens.py does it with real VMs."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from a3s_box import audit
from a3s_box.orchestrator.state import BoxRow, PoolRow, StateStore
from tests.api.test_api import api  # noqa: F401 - the fixture: a real server on TCP

Api = tuple[httpx.Client, str, Path]


def _row(name: str, owner: str | None, pool: str | None = "warm") -> BoxRow:
    return BoxRow(id=f"proj.{name}", project="proj", name=name, spec_hash="h", spec={}, image="sha256:0",
                  driver="qemu", handle=None, status="running", pool=pool, lease=name if owner else None,
                  owner=owner)


@pytest.fixture
def tenants(api: Api) -> Iterator[tuple[httpx.Client, dict[str, str], dict[str, str]]]:  # noqa: F811
    """Two sandbox tokens for pool warm, each with a box leased for it; a declared box."""
    client, admin, home = api
    made = []
    for label in ("alice", "bob"):
        r = client.post("/v1/tokens", json={"templates": ["warm"], "name": label},
                        headers={"authorization": f"Bearer {admin}"})
        assert r.status_code == 201, r.text
        made.append(r.json())
    store = StateStore(home / "state.db")
    with store.transaction():
        store.put_pool(PoolRow("proj", "warm", "h", {"box": "worker", "box_spec": "h", "min_ready": 0, "max": 2}))
        store.put_pool(PoolRow("proj", "other", "h", {"box": "worker", "box_spec": "h", "min_ready": 0, "max": 2}))
        store.put_box(_row("mine", made[0]["id"]))
        store.put_box(_row("theirs", made[1]["id"]))
        store.put_box(_row("declared", None, pool=None))
    store.close()
    alice = {"authorization": f"Bearer {made[0]['token']}"}
    yield client, alice, made[0]


def test_a_sandbox_token_cannot_reach_what_makes_it_root(tenants: tuple[httpx.Client, dict[str, str],
                                                                        dict[str, str]]) -> None:
    client, alice, _ = tenants
    boxfile = "apiVersion: box.a3s.dev/v1\nboxes:\n  x: {image: hello, volumes: ['/:/host']}\n"
    for method, path, kw in (("POST", "/v1/boxfile/apply", {"content": boxfile}),
                             ("POST", "/v1/boxfile/plan", {"content": boxfile}),
                             ("POST", "/v1/images/pull", {"json": {"ref": "busybox"}}),
                             ("GET", "/v1/images", {}), ("GET", "/v1/events?follow=false", {}),
                             ("GET", "/metrics", {}), ("GET", "/v1/tokens", {}),
                             ("POST", "/v1/tokens", {"json": {"templates": ["other"]}})):
        r = client.request(method, path, headers=alice, **kw)
        assert r.status_code == 403, (method, path, r.text)
        assert "a sandbox token may not call" in r.json()["detail"]


def test_a_sandbox_token_sees_and_touches_only_its_own_boxes(tenants: tuple[httpx.Client, dict[str, str],
                                                                           dict[str, str]]) -> None:
    client, alice, _ = tenants
    listed = client.get("/v1/boxes", headers=alice)
    assert listed.status_code == 200 and [b["name"] for b in listed.json()] == ["mine"]
    assert client.get("/v1/boxes/mine", headers=alice).status_code == 200
    for name in ("theirs", "declared", "proj.theirs", "nobody"):
        for method, path in (("GET", f"/v1/boxes/{name}"), ("POST", f"/v1/boxes/{name}/exec"),
                             ("GET", f"/v1/boxes/{name}/files?path=/etc/hostname"),
                             ("POST", f"/v1/boxes/{name}/stop"), ("DELETE", f"/v1/boxes/{name}"),
                             ("POST", f"/v1/boxes/{name}/release")):
            r = client.request(method, path, headers=alice, json={"argv": ["true"]} if "exec" in path else None)
            assert r.status_code == 404, (method, path, r.text)  # as if it did not exist
            assert r.json()["detail"] == f"box {name}: no such box (see `box ps`)"


def test_a_sandbox_token_acquires_only_from_its_pools(tenants: tuple[httpx.Client, dict[str, str],
                                                                    dict[str, str]]) -> None:
    client, alice, _ = tenants
    assert [p["name"] for p in client.get("/v1/pools", headers=alice).json()] == ["warm"]
    r = client.post("/v1/pools/other/acquire", headers=alice, json={})
    assert r.status_code == 403 and "may not acquire from pool other" in r.json()["detail"], r.text


def test_a_websocket_exec_on_anothers_box_is_refused_as_on_no_box(tenants: tuple[httpx.Client, dict[str, str],
                                                                                  dict[str, str]]) -> None:
    """Refused at the handshake (uvicorn answers a WebSocket closed before accept with 403),
    the same for another's box as for none: nothing says the box exists."""
    import websockets.sync.client as ws

    client, alice, _ = tenants
    base = str(client.base_url).replace("http://", "ws://")
    refusals = []
    for name in ("theirs", "nobody"):
        with pytest.raises(Exception) as refused:
            with ws.connect(f"{base}/v1/boxes/{name}/exec/ws", additional_headers=alice) as conn:
                conn.recv(timeout=10)
        refusals.append(str(refused.value))
    assert refusals == ["server rejected WebSocket connection: HTTP 403"] * 2


def test_a_revoked_token_is_refused_at_once_and_the_audit_log_names_tokens(
        tenants: tuple[httpx.Client, dict[str, str], dict[str, str]], api: Api) -> None:  # noqa: F811
    client, alice, made = tenants
    _, admin, home = api
    assert client.delete("/v1/boxes/mine", headers=alice).status_code in (204, 400, 502)  # no VM: it may fail
    entries, _ = audit.read(home)
    assert any(e["what"] == "delete" and e["who"] == f"token:{made['id']}" for e in entries), entries
    assert any(e["what"] == "token create" and e["target"] == made["id"] for e in entries)
    assert client.delete(f"/v1/tokens/{made['id']}", headers={"authorization": f"Bearer {admin}"}).status_code == 204
    r = client.get("/v1/boxes", headers=alice)
    assert r.status_code == 401, r.text
    listed = client.get("/v1/tokens", headers={"authorization": f"Bearer {admin}"}).json()
    assert [t["name"] for t in listed] == ["bob"] and "token" not in listed[0]
    assert made["token"] not in (home / "state.db").read_bytes().decode("latin-1")  # only its digest
    assert json.dumps(made["token"]) not in (home / "audit.log").read_text()
