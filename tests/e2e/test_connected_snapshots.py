"""Boxes with a network, a secret, a named volume and a tmpfs start from snapshot templates
(issue 26), on real microVMs: two siblings boot as clones of one template (BOOT column),
each reaches its allowed host with the secret injected and has its own flows and
placeholder; a connected box forks, and the fork's flows are its own; a parked pool of
connected boxes hands out a member that reaches its allowed host.

"The internet" is tests/network's pair of servers on 127.0.0.1 (its CA trusted by the
host side through SSL_CERT_FILE), named by `hosts:`."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import BoxCli, boxfile
from tests.network.conftest import Internet, internet  # noqa: F401 - the fixture
from tests.network.tools_image import build_tools_image

pytestmark = pytest.mark.vm
TOKEN = "sk-live-2626-from-a-snapshot"


@pytest.fixture(scope="module")
def connected(box: BoxCli, internet: Internet,  # noqa: F811
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    box.env["SSL_CERT_FILE"] = str(internet.ca)
    box.env["A3S_TEST_TOKEN"] = TOKEN
    folder = tmp_path_factory.mktemp("connected")
    image = build_tools_image(folder / "image")
    s = internet.https_port

    def connected_box(extra: str = "") -> str:
        return f"""
    image: hello
    resources: {{memory: 160Mi}}
    namespaces: {{agent: {{command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}}}
    network:
      mode: allowlist
      egress: ["api.test:{s}"]
      hosts: {{api.test: 127.0.0.1}}
    secrets:
      TOKEN: {{env: A3S_TEST_TOKEN, hosts: ["api.test:{s}"]}}{extra}"""
    volumes = """
    volumes:
      - {type: tmpfs, target: /scratch, size: 8Mi}"""
    f = boxfile(folder, image, f"""project: conn
volumes:
  data-a: {{size: 64Mi}}
  data-b: {{size: 64Mi}}
boxes:
  a:{connected_box(volumes + chr(10) + "      - {type: volume, source: data-a, target: /data}")}
  b:{connected_box(volumes + chr(10) + "      - {type: volume, source: data-b, target: /data}")}
  solo:{connected_box(volumes)}
  worker:{connected_box()}
pools:
  warm: {{box: worker, min_ready: 1, max: 2, park: true}}
""")
    r = box("apply", "-f", str(f))
    assert r.code == 0, r.out + r.err
    yield {"file": f, "https": s}
    box("delete", "-f", str(f))
    # the pool's filler may still be booting the member that replaced a released one: the
    # next module (containerd's) counts every QEMU on the host
    assert box.vm_processes_after(60) == []


def _ps(box: BoxCli) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in box("ps", "-o", "json", check=True).json()}


def _sh(box: BoxCli, name: str, script: str) -> str:
    r = box("exec", name, "--", "sh", "-c", script, timeout=120)
    assert r.code == 0, r.err
    return r.out


def _flows(box: BoxCli, name: str) -> list[dict[str, Any]]:
    box_id = next(b["id"] for b in box("ps", "-o", "json", check=True).json() if b["name"] == name)
    log = box.home / "boxes" / box_id / "net" / "network.log"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def _call(box: BoxCli, name: str, path: str, https: int) -> str:
    return _sh(box, name, f'curl -sS -m 15 -H "Authorization: Bearer $TOKEN" https://api.test:{https}{path}')


def test_siblings_boot_from_one_template_each_with_its_own_network_and_secret(
        box: BoxCli, connected: dict[str, Any], internet: Internet) -> None:  # noqa: F811
    ps = _ps(box)
    assert ps["a"]["boot"].startswith("snapshot ") and ps["a"]["boot"] == ps["b"]["boot"], ps
    assert ps["solo"]["boot"].startswith("snapshot ") and ps["solo"]["boot"] != ps["a"]["boot"]
    s = connected["https"]
    placeholders = {}
    for name in ("a", "b"):
        # the volumes of its own, mounted after the restore
        out = _sh(box, name, f"echo {name} > /data/who; cat /data/who; mount | grep -c ' /scratch type tmpfs'")
        assert out.split() == [name, "1"]
        placeholders[name] = _sh(box, name, "echo $TOKEN").strip()
        other = "b" if name == "a" else "a"
        before = {n: len(_flows(box, n)) for n in ("a", "b")}
        reply = _call(box, name, f"/from-{name}", s)
        assert internet.last(f"/from-{name}")["headers"]["authorization"] == f"Bearer {TOKEN}"
        assert TOKEN not in reply
        # its own proxy logged the flow; the sibling's saw nothing of it
        assert len(_flows(box, name)) > before[name] and len(_flows(box, other)) == before[other]
    assert placeholders["a"] != placeholders["b"]
    assert all(p.startswith("a3s-secret-token-") for p in placeholders.values())
    # TRUST, in the clone: its own CA alone, the image's store with it, and the store itself;
    # eth0 without IPv6 (the box's network is IPv4 alone: no timers for clones to run on)
    out = _sh(box, "a", "grep -c BEGIN /.a3s/box-ca.pem; cmp /.a3s/ca-bundle.pem /etc/ssl/certs/ca-certificates.crt"
                        " && echo same; cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6")
    assert out.split() == ["1", "same", "1"], out
    ca_a, ca_b = (_sh(box, n, "cat /.a3s/box-ca.pem") for n in ("a", "b"))
    assert ca_a != ca_b and _sh(box, "a", "tail -c %d /.a3s/ca-bundle.pem" % len(ca_a)) == ca_a
    # a name outside the allow-list stays out of reach from a clone
    out = _sh(box, "a", "curl -sS -m 5 https://evil.test/ 2>&1; echo rc=$?")
    assert "rc=0" not in out


def test_a_connected_box_forks_with_a_network_of_its_own(
        box: BoxCli, connected: dict[str, Any], internet: Internet) -> None:  # noqa: F811
    s = connected["https"]
    _sh(box, "solo", "echo before-fork > /tmp/mark")
    r = box("fork", "solo", "--name", "solo-copy", timeout=300)
    assert r.code == 0, r.out + r.err
    try:
        assert _sh(box, "solo-copy", "cat /tmp/mark").strip() == "before-fork"
        before = len(_flows(box, "solo"))
        _call(box, "solo-copy", "/from-fork", s)
        assert internet.last("/from-fork")["headers"]["authorization"] == f"Bearer {TOKEN}"
        assert len(_flows(box, "solo")) == before  # the source's proxy saw none of it
        assert any(f["verdict"] == "allow" for f in _flows(box, "solo-copy"))
    finally:
        box("delete", "solo-copy")


def test_a_parked_pool_of_connected_boxes(box: BoxCli, connected: dict[str, Any],
                                          internet: Internet) -> None:  # noqa: F811
    parked = [b for b in box("ps", "-o", "json", check=True).json() if b["name"].startswith("warm-")]
    assert parked and all(b["status"] == "parked" for b in parked), parked
    assert all(b["boot"].startswith("snapshot ") for b in parked), parked
    r = box("pool", "acquire", "warm", "-o", "json", timeout=300)
    assert r.code == 0, r.err
    name = r.json()["name"]
    try:
        _call(box, name, "/from-pool", connected["https"])
        assert internet.last("/from-pool")["headers"]["authorization"] == f"Bearer {TOKEN}"
    finally:
        box("pool", "release", name)
