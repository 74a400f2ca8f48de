"""The HTTP API without VMs (a real `box serve` on TCP, httpx as the client): the committed OpenAPI
document is the served one, every request over TCP needs the token, errors are problem
details with the CLI's messages and locations, bodies are bounded, /metrics parses and
moves, and state changes land in the audit log, which `box events` prints."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from a3s_box import audit
from a3s_box.api.auth import token_id
from a3s_box.api.openapi import text
from a3s_box.cli.main import cli
from tests.served import served

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def api(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str, Path]]:
    log = tmp_path_factory.mktemp("serve") / "stderr"
    with served({**os.environ, "A3S_BOX_HOME": str(tmp_path)}, log) as url:
        token = (tmp_path / "api-token").read_text().strip()
        with httpx.Client(base_url=url) as client:
            yield client, token, tmp_path
    assert b"Traceback" not in log.read_bytes(), log.read_text(errors="replace")


def test_the_committed_openapi_document_is_the_served_one(api: tuple[httpx.Client, str, Path]) -> None:
    client, token, _ = api
    committed = (ROOT / "schema/openapi.json").read_text()
    assert committed == text(), "stale: run `python -m a3s_box.api.openapi > schema/openapi.json`"
    served = client.get("/openapi.json", headers={"authorization": f"Bearer {token}"}).json()
    assert json.dumps(served, indent=2, sort_keys=True) + "\n" == committed
    assert served["openapi"].startswith("3.1")


def test_every_request_needs_the_token(api: tuple[httpx.Client, str, Path]) -> None:
    client, token, home = api
    for method, path in [("get", "/v1/boxes"), ("get", "/openapi.json"), ("post", "/v1/boxfile/apply"),
                         ("delete", "/v1/boxes/x"), ("get", "/metrics")]:
        r = client.request(method.upper(), path)
        assert r.status_code == 401 and r.json()["title"] == "unauthorized", (method, path)
    assert client.get("/v1/boxes", headers={"authorization": "Bearer nope"}).status_code == 401
    assert client.get("/v1/boxes", headers={"authorization": f"Bearer {token}"}).json() == []
    assert not (home / "state.db").exists() or not (home / audit.AUDIT_LOG).exists()  # nothing changed
    assert (home / "api-token").stat().st_mode & 0o777 == 0o600


def test_errors_are_problem_details_with_the_clis_message(api: tuple[httpx.Client, str, Path]) -> None:
    client, token, _ = api
    auth = {"authorization": f"Bearer {token}"}
    r = client.get("/v1/boxes/nosuch", headers=auth)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "box nosuch: no such box (see `box ps`)"
    r = client.post("/v1/boxfile/validate", headers={**auth, "content-type": "application/yaml"},
                    content=b"apiVersion: box.a3s.dev/v1\nboxes:\n  web: {vcpus: 2}\n")
    assert r.status_code == 422
    assert r.json()["problems"][0].startswith("Boxfile.yaml:3:3: boxes.web")
    r = client.post("/v1/boxfile/validate", headers={**auth, "content-type": "application/yaml"},
                    content=b"x" * (2 << 20))
    assert r.status_code == 413


def test_metrics_parse_and_move(api: tuple[httpx.Client, str, Path]) -> None:
    client, token, _ = api
    auth = {"authorization": f"Bearer {token}"}

    def requests_total() -> float:
        text = client.get("/metrics", headers=auth).text
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert "a3s_box_boxes" in fams and "a3s_box_image_store_bytes" in fams
        return sum(s.value for s in fams["a3s_box_api_requests"].samples if s.name.endswith("_total"))
    before = requests_total()
    for _ in range(3):
        client.get("/v1/boxes", headers=auth)
    assert requests_total() >= before + 3


def test_changes_are_audited_with_who_and_box_events_prints_them(api: tuple[httpx.Client, str, Path]) -> None:
    client, token, home = api
    auth = {"authorization": f"Bearer {token}"}
    assert client.delete("/v1/boxes/ghost", headers=auth).status_code == 404
    entries, _ = audit.read(home)
    assert entries[-1]["what"] == "delete" and entries[-1]["target"] == "ghost"
    assert entries[-1]["who"] == f"token:{token_id(token)}" and entries[-1]["result"].startswith("failed: ")
    r = CliRunner().invoke(cli, ["--home", str(home), "-o", "json", "events"])
    assert r.exit_code == 0 and json.loads(r.output.splitlines()[-1])["target"] == "ghost"


@pytest.mark.skipif(os.geteuid() != 0, reason="connects as another user (root can switch)")
def test_the_unix_socket_admits_only_its_owner(tmp_path: Path) -> None:
    env = {**os.environ, "A3S_BOX_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "a3s_box.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sock = tmp_path / "api.sock"
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert sock.stat().st_mode & 0o777 == 0o600
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, base_url="http://a3s") as c:
            assert c.get("/v1/boxes").json() == []  # the owner needs no token
        tmp_path.chmod(0o755)  # let the other user reach the socket's folder: the socket itself refuses
        other = subprocess.run([sys.executable, "-c", f"""
import os, socket
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX)
try:
    s.connect({str(sock)!r})
    print("connected")
except PermissionError:
    print("refused")
"""], capture_output=True, text=True, timeout=30)
        assert other.stdout.strip() == "refused", other
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert b"Traceback" not in err, err.decode(errors="replace")


def test_apply_reports_a_build_with_its_steps(api: tuple[httpx.Client, str, Path], tmp_path: Path) -> None:
    client, token, _ = api
    ctx = tmp_path / "proj" / "ctx"
    ctx.mkdir(parents=True)
    (ctx / "hello.txt").write_text("hello\n")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\nLABEL a=b\n")
    body = "apiVersion: box.a3s.dev/v1\nproject: q\nimages: {app: {build: {context: ./ctx}}}\n"
    r = client.post("/v1/boxfile/apply", params={"path": str(tmp_path / "proj" / "Boxfile.yaml")},
                    content=body, headers={"authorization": f"Bearer {token}", "content-type": "application/yaml"})
    assert r.status_code == 200, r.text
    [image] = r.json()["outcomes"]
    assert (image["op"], image["status"], image["build"]) == ("build", "ok", {"cached": 0, "total": 2})
