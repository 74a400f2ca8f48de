"""The remote Python client against a real `box serve` on TCP, without VMs: Boxfiles
validated and planned, problems as ApiError with the CLI's message, tokens, the audit
log's events; the async client the same. (tests/e2e/test_remote_client.py: with VMs.)"""
from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from a3s_box import AsyncClient, Client
from a3s_box.client import ApiError
from tests.api.test_api import api  # noqa: F401 - the fixture: a real server on TCP

Api = tuple[httpx.Client, str, Path]
GOOD = "apiVersion: box.a3s.dev/v1\nimages:\n  hello: {ref: 'busybox:1'}\nboxes:\n  b: {image: hello}\n"
BAD = "apiVersion: box.a3s.dev/v1\nboxes:\n  b: {image: nowhere, memory: lots}\n"


def test_the_sync_client(api: Api) -> None:  # noqa: F811
    http, token, home = api
    with Client(str(http.base_url), token) as c:
        v = c.validate(GOOD)
        assert (v.ok, v.boxes, v.images) == (True, 1, 1)
        with pytest.raises(ApiError) as bad:
            c.validate(BAD, path="Boxfile.yaml")
        assert bad.value.status == 422 and any(p.startswith("Boxfile.yaml:3:") for p in bad.value.problem.problems)
        with pytest.raises(ApiError) as missing:
            c.box("nobody")
        assert (missing.value.status, str(missing.value)) == (404, "box nobody: no such box (see `box ps`)")
        assert c.boxes() == [] and c.pools() == []
        made = c.create_token(["warm"], "t")
        assert made.token.startswith("a3s_sb_") and [t.id for t in c.tokens()] == [made.id]
        with Client(str(http.base_url), made.token) as sandbox:
            with pytest.raises(ApiError) as refused:
                sandbox.apply(GOOD)
            assert refused.value.status == 403
        c.revoke_token(made.id)
        assert c.tokens() == []
        events = list(c.events(follow=False, since=0))
        assert [e["what"] for e in events] == ["token create", "token revoke"]
    with Client(str(http.base_url), "wrong") as stranger, pytest.raises(ApiError) as nobody:
        stranger.boxes()
    assert nobody.value.status == 401


def test_the_async_client(api: Api) -> None:  # noqa: F811
    http, token, _ = api

    async def go() -> None:
        async with AsyncClient(str(http.base_url), token) as c:
            assert (await c.validate(GOOD)).ok
            with pytest.raises(ApiError) as missing:
                await c.box("nobody")
            assert missing.value.status == 404
            made = await c.create_token(["warm"])
            assert [t.id for t in await c.tokens()] == [made.id]
            await c.revoke_token(made.id)
            seen = [e async for e in c.events(follow=False, since=0)]
            assert [e["what"] for e in seen] == ["token create", "token revoke"]
    asyncio.run(go())
