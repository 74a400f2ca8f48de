"""The E2B-compatible API with E2B's own Python SDK (`e2b` from PyPI, pinned in
pyproject's test extra), unchanged and configured only through its documented options
(api_url, sandbox_url, api_key), against `box serve` on real microVMs: create from a
pool (warm) and from a declared box, commands (exit codes, streams, stdin, background
and kill), files (write/read/list/remove/make_dir/rename/watch_dir), timeouts and
expiry, pause and resume through connect, list, kill, an HTTP server in the box reached
through the SDK's port URL, and what a sandbox token may not do."""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import CommandExitException, FileType, PtySize, Sandbox
from e2b.exceptions import AuthenticationException, SandboxException

from tests.e2e.conftest import BoxCli, boxfile
from tests.network.tools_image import TOOLS, build_tools_image
from tests.served import served

pytestmark = pytest.mark.vm
HERE = Path(__file__).parent

BODY = """project: agents
boxes:
  coder:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
  solo:
    image: hello
    resources: {memory: 256Mi}
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
pools:
  warm: {box: coder, min_ready: 1, max: 4}
"""


@pytest.fixture(scope="module")
def bash_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo image with the host's bash (E2B's SDK runs commands as `bash -l -c`) and curl."""
    return build_tools_image(tmp_path_factory.mktemp("e2b") / "image", tools=(*TOOLS, "/bin/bash"))


@pytest.fixture(scope="module")
def e2b_server(box: BoxCli, bash_image: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[str, str, str]]:
    """(the /e2b URL, the admin token, a sandbox token for template warm)."""
    folder = tmp_path_factory.mktemp("e2b-boxfile")
    f = boxfile(folder, bash_image, BODY)
    box("apply", "-f", str(f), check=True)
    with served(box.env, folder / "serve.log") as url:
        admin = box("serve", "--print-token", check=True).out.strip()
        sandbox = box("token", "create", "--template", "warm", check=True).out.strip()
        yield url + "/e2b", admin, sandbox
    box("delete", "-f", str(f), check=True)


def _opts(server: tuple[str, str, str], admin: bool = False) -> dict[str, Any]:
    url, admin_token, sandbox_token = server
    return {"api_url": url, "sandbox_url": url, "api_key": admin_token if admin else sandbox_token}


def _ps(box: BoxCli) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in box("-o", "json", "ps", check=True).json()}


def test_commands_files_and_lifecycle_with_the_python_sdk(box: BoxCli, e2b_server: tuple[str, str, str]) -> None:
    sbx = Sandbox.create("warm", timeout=300, metadata={"who": "e2e"}, envs={"GREETING": "hi"}, **_opts(e2b_server))
    assert sbx.sandbox_id.startswith("warm-")
    row = _ps(box)[sbx.sandbox_id]  # an ordinary box: `box ps` shows it, leased from the pool
    assert row["status"] == "running"

    # commands: streams apart, exit codes, the sandbox's envVars
    r = sbx.commands.run("echo out-$GREETING; echo err >&2")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "out-hi\n", "err\n")
    with pytest.raises(CommandExitException) as failed:
        sbx.commands.run("echo partial; exit 7")
    assert failed.value.exit_code == 7 and failed.value.stdout == "partial\n"
    seen: list[str] = []
    r = sbx.commands.run("for i in 1 2 3; do echo line$i; done", on_stdout=seen.append)
    assert "".join(seen) == "line1\nline2\nline3\n"

    # per command: a folder and variables
    assert sbx.commands.run("pwd; echo $ONE", cwd="/tmp", envs={"ONE": "1"}).stdout == "/tmp\n1\n"

    # a terminal: what is typed is echoed, the shell answers, resize reaches it
    pty = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.resize(pty.pid, PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(pty.pid, b"busybox stty size; echo pty-$((6*7)); exit 3\n")
    typed = bytearray()
    with pytest.raises(CommandExitException):
        pty.wait(on_pty=typed.extend)
    assert b"30 100" in typed and b"pty-42" in typed, typed

    # stdin, then EOF
    h = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "fed through stdin\n")
    sbx.commands.close_stdin(h.pid)
    assert h.wait().stdout == "fed through stdin\n"

    # background, listed, killed
    h = sbx.commands.run("sleep 600", background=True)
    assert h.pid in [p.pid for p in sbx.commands.list()]
    assert h.kill()
    with pytest.raises(CommandExitException):
        h.wait()
    assert h.pid not in [p.pid for p in sbx.commands.list()]

    # files
    info = sbx.files.write("/tmp/work/notes/a.txt", "first\n")  # parents are made
    assert info.path == "/tmp/work/notes/a.txt"
    assert sbx.files.read("/tmp/work/notes/a.txt") == "first\n"
    assert sbx.files.read("/tmp/work/notes/a.txt", format="bytes") == b"first\n"
    assert sbx.files.make_dir("/tmp/work/sub") is True
    assert sbx.files.make_dir("/tmp/work/sub") is False
    entries = {e.name: e for e in sbx.files.list("/tmp/work")}
    assert entries["notes"].type == FileType.DIR and entries["sub"].type == FileType.DIR
    deep = {e.path for e in sbx.files.list("/tmp/work", depth=2)}
    assert "/tmp/work/notes/a.txt" in deep
    moved = sbx.files.rename("/tmp/work/notes/a.txt", "/tmp/work/sub/b.txt")
    assert moved.path == "/tmp/work/sub/b.txt" and moved.size == 6
    assert not sbx.files.exists("/tmp/work/notes/a.txt") and sbx.files.exists("/tmp/work/sub/b.txt")
    assert sbx.files.get_info("/tmp/work/sub/b.txt").type == FileType.FILE
    sbx.files.remove("/tmp/work/sub")
    assert not sbx.files.exists("/tmp/work/sub/b.txt")
    # what the SDK wrote is in the box, as `box exec` sees it
    assert sbx.commands.run("ls /tmp/work").stdout == "notes\n"

    watcher = sbx.files.watch_dir("/tmp/work", recursive=True)
    sbx.files.write("/tmp/work/notes/c.txt", "watched\n")
    deadline = time.monotonic() + 30
    events: list[Any] = []
    while time.monotonic() < deadline and not any(e.name == "notes/c.txt" for e in events):
        events += watcher.get_new_events()
        time.sleep(0.2)
    watcher.stop()
    assert any(e.name == "notes/c.txt" for e in events), events

    # a fork: the sandbox's memory and disk at this instant, then a life of its own
    sbx.files.write("/tmp/before-fork.txt", "shared past\n")
    [child] = sbx.fork(timeout=120)
    assert isinstance(child, Sandbox) and child.sandbox_id != sbx.sandbox_id
    assert child.files.read("/tmp/before-fork.txt") == "shared past\n"
    child.files.write("/tmp/only-child.txt", "mine\n")
    assert not sbx.files.exists("/tmp/only-child.txt")
    child.kill()

    # pause, then connect resumes it
    sbx.pause()
    assert _ps(box)[sbx.sandbox_id]["status"] == "paused"
    again = Sandbox.connect(sbx.sandbox_id, **_opts(e2b_server))
    assert again.commands.run("echo back").stdout == "back\n"

    # list, metadata, kill
    listed = Sandbox.list(**_opts(e2b_server)).next_items()
    assert [s.metadata for s in listed if s.sandbox_id == sbx.sandbox_id] == [{"who": "e2e"}]
    sbx.kill()
    assert sbx.sandbox_id not in _ps(box)


def test_a_port_of_the_box_through_the_sdk_url(e2b_server: tuple[str, str, str]) -> None:
    sbx = Sandbox.create("warm", **_opts(e2b_server))
    try:
        sbx.files.write("/tmp/www/index.html", "served from the box\n")
        sbx.commands.run("busybox httpd -f -p 8000 -h /tmp/www", background=True)
        host = sbx.get_host(8000)
        assert host.startswith(f"8000-{sbx.sandbox_id}.localhost:")
        out = ""
        for _ in range(50):  # until httpd listens
            r = subprocess.run(["curl", "-sS", "-m", "10", f"http://{host}/index.html"],
                               capture_output=True, text=True)
            out = r.stdout
            if out == "served from the box\n":
                break
            time.sleep(0.2)
        assert out == "served from the box\n"
        closed = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10",
                                 f"http://{host.replace('8000-', '8001-', 1)}/"], capture_output=True, text=True)
        assert closed.stdout == "502"
    finally:
        sbx.kill()


def test_timeouts_expire_and_a_declared_box_is_a_template(box: BoxCli, e2b_server: tuple[str, str, str]) -> None:
    sbx = Sandbox.create("solo", timeout=300, **_opts(e2b_server, admin=True))  # made like the declared box
    assert sbx.sandbox_id.startswith("solo-") and _ps(box)[sbx.sandbox_id]["status"] == "running"
    assert sbx.commands.run("uname -s").stdout == "Linux\n"
    sbx.set_timeout(2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sbx.sandbox_id in _ps(box):
        time.sleep(0.5)
    assert sbx.sandbox_id not in _ps(box)  # killed at its timeout, as on E2B
    assert not sbx.is_running()


def test_what_a_sandbox_token_may_not_do(box: BoxCli, e2b_server: tuple[str, str, str]) -> None:
    url = e2b_server[0]
    with pytest.raises(SandboxException) as refused:
        Sandbox.create("solo", **_opts(e2b_server))  # not among its templates
    assert "may not use it" in str(refused.value)
    with pytest.raises(AuthenticationException):
        Sandbox.create("warm", api_url=url, sandbox_url=url, api_key="a3s_sb_not-a-token")
    mine = Sandbox.create("warm", **_opts(e2b_server, admin=True))
    try:
        # another key's sandbox does not exist for this one
        assert mine.sandbox_id not in [s.sandbox_id for s in Sandbox.list(**_opts(e2b_server)).next_items()]
        r = httpx.post(f"{url}/sandboxes/{mine.sandbox_id}/timeout", json={"timeout": 1},
                       headers={"X-API-Key": e2b_server[2]})
        assert r.status_code == 404
        # envd without this sandbox's access token, or with another's
        other = Sandbox.create("warm", **_opts(e2b_server))
        try:
            rpc = f"{url}/process.Process/List"
            for token in (None, other._envd_access_token):
                headers = {"E2b-Sandbox-Id": mine.sandbox_id, "Content-Type": "application/json"}
                if token:
                    headers["X-Access-Token"] = token
                r = httpx.post(rpc, content=b"{}", headers=headers)
                assert r.status_code == 401 and json.loads(r.text)["code"] == "unauthenticated", r.text
        finally:
            other.kill()
    finally:
        mine.kill()


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_the_javascript_sdk(box: BoxCli, e2b_server: tuple[str, str, str], tmp_path: Path) -> None:
    """E2B's npm package, at the version its lock file pins, installed with `npm ci`."""
    work = tmp_path / "js"
    shutil.copytree(HERE / "e2b_client_ts", work)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=work, check=True, capture_output=True, timeout=600)
    r = subprocess.run(["node", "client.mjs", e2b_server[0], e2b_server[2], "warm"], cwd=work,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["ok"] == {"exitCode": 0, "stdout": "out\n", "stderr": "err\n"}
    assert seen["failed"] == {"exitCode": 5, "stdout": "partial\n"}
    assert seen["listed"] is True and seen["killed"] is True
    assert seen["stdin"] == "via stdin\n"
    assert seen["read"] == "from js\n" and seen["madeDir"] is True
    assert seen["list"] == ["dir:/tmp/js/sub", "file:/tmp/js/sub/b.txt"]
    assert seen["existsAfterRemove"] is False
    assert seen["host"].startswith(f"8000-{seen['id']}.localhost:")
    assert seen["inList"] is True and seen["runningAfterKill"] is False
    assert seen["id"] not in _ps(box)


def test_the_async_python_sdk(e2b_server: tuple[str, str, str]) -> None:
    """AsyncSandbox: the same API over asyncio (streams read as they come)."""
    from e2b import AsyncSandbox

    async def go() -> tuple[str, list[str], str, bool]:
        sbx = await AsyncSandbox.create("warm", **_opts(e2b_server))
        try:
            seen: list[str] = []
            r = await sbx.commands.run("echo one; sleep 0.2; echo two", on_stdout=seen.append)
            await sbx.files.write("/tmp/async.txt", "async\n")
            read = await sbx.files.read("/tmp/async.txt")
            return r.stdout, seen, read, await sbx.is_running()
        finally:
            await sbx.kill()
    stdout, seen, read, running = asyncio.run(go())
    assert stdout == "one\ntwo\n" and "".join(seen) == "one\ntwo\n"
    assert read == "async\n" and running
