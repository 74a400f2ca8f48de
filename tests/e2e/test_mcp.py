"""The MCP server with the official SDK clients, on real microVMs: the Python `mcp` client
over streamable HTTP on `box serve` (a sandbox token: acquire, run, files, the console log
resource, delete; refused on the declared box) and over stdio (`box mcp`, the user's own
rights); the TypeScript `@modelcontextprotocol/sdk` client over HTTP (its pinned lock in
tests/e2e/mcp_client_ts, installed with `npm ci` from the registry)."""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import TextContent, TextResourceContents

from tests.e2e.conftest import BoxCli, boxfile
from tests.served import served

pytestmark = pytest.mark.vm
HERE = Path(__file__).parent

BODY = """project: tools
boxes:
  private:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "echo private-agent-up; exec sleep 2147483647"]}}
  worker:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "echo worker-agent-up; exec sleep 2147483647"]}}
pools:
  warm: {box: worker, min_ready: 1, max: 3}
"""


@pytest.fixture
def server(box: BoxCli, hello_image: Path, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A Boxfile applied, `box serve` on TCP; (its /mcp URL, a sandbox token for pool warm)."""
    f = boxfile(tmp_path, hello_image, BODY)
    box("apply", "-f", str(f), check=True)
    with served(box.env, tmp_path / "serve.log") as url:
        yield url + "/mcp", box("token", "create", "--template", "warm", check=True).out.strip()
    box("delete", "-f", str(f), check=True)
    assert box.vm_processes() == []


def _text(result: Any) -> str:
    """The text of a tool result's first content, or of a resource read's first contents."""
    first = (result.content if hasattr(result, "content") else result.contents)[0]
    assert isinstance(first, (TextContent, TextResourceContents)), first
    return first.text


@asynccontextmanager
async def _http(url: str, token: str) -> AsyncIterator[Client]:
    """The official client over streamable HTTP with the bearer token (its HTTP client closed after)."""
    async with httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=300) as hc, \
            Client(streamable_http_client(url, http_client=hc)) as c:
        yield c


def test_the_python_mcp_client_over_http_with_a_sandbox_token(server: tuple[str, str]) -> None:
    url, token = server

    async def session() -> None:
        async with _http(url, token) as c:
            names = sorted(t.name for t in (await c.list_tools()).tools)
            assert names == ["acquire", "delete_box", "list_boxes", "list_files", "list_pools", "read_file",
                             "run", "stop_box", "write_file"]
            assert [p["name"] for p in (await c.call_tool("list_pools", {})).structured_content["result"]] == ["warm"]
            got = (await c.call_tool("acquire", {"pool": "warm", "wait_seconds": 120})).structured_content
            ran = (await c.call_tool("run", {"box": got["id"], "command": ["sh", "-c", "echo out; echo err >&2; exit 5"]}))
            assert ran.structured_content == {"exit_code": 5, "signal": None, "stdout": "out\n", "stderr": "err\n"}
            await c.call_tool("write_file", {"box": got["id"], "path": "/tmp/m.txt", "content": "model wrote\n"})
            assert _text(await c.call_tool("read_file", {"box": got["id"], "path": "/tmp/m.txt"})) == "model wrote\n"
            listed = (await c.call_tool("list_files", {"box": got["id"], "path": "/tmp"})).structured_content
            assert "m.txt" in [e["name"] for e in listed["result"]]
            log = await c.read_resource(f"box://{got['id']}/logs")
            assert "worker-agent-up" in _text(log)
            assert [b["name"] for b in (await c.call_tool("list_boxes", {})).structured_content["result"]] \
                == [got["name"]]
            for tool, args in (("run", {"box": "private", "command": ["true"]}),
                               ("read_file", {"box": "tools.private", "path": "/etc/hostname"})):
                denied = await c.call_tool(tool, args)
                assert denied.is_error and "no such box" in _text(denied), denied
            refused = await c.call_tool("acquire", {"pool": "elsewhere"})
            assert refused.is_error
            await c.call_tool("delete_box", {"box": got["id"]})
            assert (await c.call_tool("list_boxes", {})).structured_content["result"] == []
    asyncio.run(session())
    with httpx2.Client() as plain:  # no token: refused before any tool runs
        r = plain.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert r.status_code == 401


def test_the_python_mcp_client_over_stdio(box: BoxCli, hello_image: Path, tmp_path: Path) -> None:
    f = boxfile(tmp_path, hello_image, BODY)
    box("apply", "-f", str(f), check=True)

    async def session() -> None:
        params = StdioServerParameters(command=sys.executable, args=["-m", "a3s_box.cli", "mcp"], env=box.env)
        async with Client(params) as c:
            r = await c.call_tool("run", {"box": "private", "command": ["hostname"]})
            assert r.structured_content["stdout"] == "private\n"  # the user's own rights
            log = await c.read_resource("box://private/logs")
            assert "private-agent-up" in _text(log)
    asyncio.run(session())
    box("delete", "-f", str(f), check=True)


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_the_typescript_mcp_client_over_http(server: tuple[str, str], tmp_path: Path) -> None:
    url, token = server
    work = tmp_path / "ts"
    shutil.copytree(HERE / "mcp_client_ts", work)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=work, check=True, capture_output=True, timeout=600)
    out = subprocess.run(["node", "client.mjs", url, token, "warm"], cwd=work, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert "run" in seen["tools"] and seen["box"].startswith("warm-")  # a pool member
    assert seen["ran"] == {"exit_code": 4, "signal": None, "stdout": "ts\n", "stderr": ""}
    assert seen["read"] == "from ts\n"
    assert seen["denied"]["isError"] and "no such box" in seen["denied"]["text"]
