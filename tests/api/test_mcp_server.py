"""The MCP server without VMs, with the official Python client: over stdio (`box mcp`)
and over HTTP at /mcp on a real `box serve` (401 without a token; a failure reaches the
model as a tool error with the CLI's message; a sandbox token's calls stay in its scope)."""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import TextContent

from tests.api.test_api import api  # noqa: F401 - the fixture: a real server on TCP

TOOLS = ["acquire", "delete_box", "list_boxes", "list_files", "list_pools", "read_file", "run", "stop_box",
         "write_file"]


def _error_text(result: object) -> str:
    assert getattr(result, "is_error", False), result
    first = result.content[0]  # type: ignore[attr-defined]
    assert isinstance(first, TextContent)
    return first.text


def test_box_mcp_speaks_mcp_on_stdio(tmp_path: Path) -> None:
    async def session() -> None:
        params = StdioServerParameters(command=sys.executable, args=["-m", "a3s_box.cli", "mcp"],
                                       env={**os.environ, "A3S_BOX_HOME": str(tmp_path)})
        async with Client(params) as c:
            assert sorted(t.name for t in (await c.list_tools()).tools) == TOOLS
            assert (await c.call_tool("list_boxes", {})).structured_content == {"result": []}
            missing = await c.call_tool("run", {"box": "nobox", "command": ["true"]})
            assert _error_text(missing).endswith("box nobox: no such box (see `box ps`)")
    asyncio.run(session())


def test_mcp_over_http_needs_a_token_and_keeps_a_sandbox_tokens_scope(
        api: tuple[httpx.Client, str, Path]) -> None:  # noqa: F811
    http, admin, _ = api
    url = str(http.base_url).rstrip("/") + "/mcp"
    assert http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).status_code == 401
    sandbox = http.post("/v1/tokens", json={"templates": ["warm"]}, headers={"authorization": f"Bearer {admin}"})
    token = sandbox.json()["token"]

    async def session() -> None:
        async with httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}) as hc, \
                Client(streamable_http_client(url, http_client=hc)) as c:
            assert sorted(t.name for t in (await c.list_tools()).tools) == TOOLS
            assert (await c.call_tool("list_pools", {})).structured_content == {"result": []}
            assert "may not acquire from pool other" in _error_text(await c.call_tool("acquire", {"pool": "other"}))
    if sys.platform != "linux":
        pytest.skip("box serve runs on Linux")
    asyncio.run(session())
