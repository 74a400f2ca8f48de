"""Sandbox tokens on real microVMs, through a real `box serve` on TCP (httpx as the
client): a tenant's token acquires from its pool and runs code in what it acquired, sees
only that, cannot exec in the declared box or in another tenant's box, cannot acquire from
a pool outside its list nor apply; release gives the box back; the audit log names it."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import BoxCli, boxfile
from tests.served import served

pytestmark = pytest.mark.vm

BODY = """project: tenants
boxes:
  private:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "echo private > /tmp/secret; exec sleep 2147483647"]}}
  worker:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
pools:
  warm: {box: worker, min_ready: 2, max: 3}
  staff: {box: worker, min_ready: 0, max: 1}
"""


@pytest.fixture
def server(box: BoxCli, hello_image: Path, tmp_path: Path) -> Iterator[tuple[httpx.Client, str]]:
    f = boxfile(tmp_path, hello_image, BODY)
    box("apply", "-f", str(f), check=True)
    with served(box.env, tmp_path / "serve.log") as url, httpx.Client(base_url=url, timeout=300) as c:
        yield c, box("serve", "--print-token", check=True).out.strip()
    box("delete", "-f", str(f), check=True)
    assert box.vm_processes() == []


def test_a_tenants_token_runs_code_in_what_it_acquired_and_nothing_else(
        server: tuple[httpx.Client, str], box: BoxCli) -> None:
    client, admin = server
    as_admin = {"authorization": f"Bearer {admin}"}
    tokens = []
    for who in ("alice", "bob"):
        r = client.post("/v1/tokens", json={"templates": ["warm"], "name": who}, headers=as_admin)
        assert r.status_code == 201, r.text
        tokens.append(r.json())
    alice, bob = ({"authorization": f"Bearer {t['token']}"} for t in tokens)

    mine = client.post("/v1/pools/warm/acquire", headers=alice, json={"name": "a1", "timeout": 120})
    assert mine.status_code == 200, mine.text
    theirs = client.post("/v1/pools/warm/acquire", headers=bob, json={"name": "b1", "timeout": 120})
    assert theirs.status_code == 200, theirs.text
    r = client.post("/v1/boxes/a1/exec", headers=alice, json={"argv": ["sh", "-c", "echo hi; exit 3"]})
    assert (r.status_code, r.json()["exit_code"], r.json()["stdout"]) == (200, 3, "hi\n"), r.text
    assert [b["name"] for b in client.get("/v1/boxes", headers=alice).json()] == ["a1"]

    for name in ("private", "b1", "tenants.private"):
        r = client.post(f"/v1/boxes/{name}/exec", headers=alice, json={"argv": ["cat", "/tmp/secret"]})
        assert r.status_code == 404, (name, r.text)
    assert client.post("/v1/pools/staff/acquire", headers=alice, json={}).status_code == 403
    assert client.post("/v1/boxfile/apply", headers=alice, content="apiVersion: box.a3s.dev/v1\n").status_code == 403
    # the declared box is untouched and still the admin's
    r = client.post("/v1/boxes/private/exec", headers=as_admin, json={"argv": ["cat", "/tmp/secret"]})
    assert r.json()["stdout"] == "private\n"

    assert client.post("/v1/boxes/b1/release", headers=alice, json={}).status_code == 404
    assert client.post("/v1/boxes/a1/release", headers=alice, json={}).status_code == 204
    assert client.get("/v1/boxes", headers=alice).json() == []
    assert client.post("/v1/boxes/b1/release", headers=bob, json={}).status_code == 204
    events = [line for line in box("events", check=True).out.splitlines() if "acquire" in line]
    assert any(f"token:{tokens[0]['id']}" in line for line in events), events
