"""create_app in one process (httpx over ASGI, no server): two apps keep their own home,
token, metrics and audit identity; a Boxfile past its cap and a WebSocket without the
token are refused before a Host opens (the home gets no state database)."""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from a3s_box import audit
from a3s_box.api.app import create_app
from a3s_box.api.auth import token_id


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a3s")


async def boxes_listed(c: httpx.AsyncClient, headers: dict[str, str]) -> float:
    text = (await c.get("/metrics", headers=headers)).text
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == "a3s_box_api_requests"
               for s in f.samples if s.name.endswith("_total") and s.labels["route"] == "/v1/boxes")


def test_two_apps_in_one_process_keep_their_own_state(tmp_path: Path) -> None:
    a, b = create_app(tmp_path / "a", "secret"), create_app(tmp_path / "b")
    auth = {"authorization": "Bearer secret"}

    async def go() -> tuple[float, float]:
        async with client(a) as ca, client(b) as cb:
            assert (await ca.get("/v1/boxes")).status_code == 401
            assert (await cb.get("/v1/boxes")).json() == []
            for _ in range(3):
                assert (await ca.get("/v1/boxes", headers=auth)).json() == []
            assert (await ca.delete("/v1/boxes/ghost", headers=auth)).status_code == 404
            assert (await cb.delete("/v1/boxes/ghost")).status_code == 404
            return await boxes_listed(ca, auth), await boxes_listed(cb, {})
    assert asyncio.run(go()) == (3, 1)
    [in_a], _ = audit.read(tmp_path / "a")
    [in_b], _ = audit.read(tmp_path / "b")
    assert in_a["who"] == f"token:{token_id('secret')}" and in_b["who"] == f"uid:{os.getuid()}"


def test_a_boxfile_past_its_cap_is_refused_before_a_host_opens(tmp_path: Path) -> None:
    app = create_app(tmp_path)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the guard cannot tell
        for _ in range(3):
            yield b"x" * (1 << 19)

    async def go() -> httpx.Response:
        async with client(app) as c:
            return await c.post("/v1/boxfile/validate", content=chunks(), headers={"content-type": "application/yaml"})
    r = asyncio.run(go())
    assert r.status_code == 413 and r.json()["detail"] == "the Boxfile may be at most 1 MiB"
    assert not (tmp_path / "state.db").exists()


def handshake(app: FastAPI, headers: list[tuple[bytes, bytes]]) -> list[MutableMapping[str, Any]]:
    """What APP sends to a WebSocket client that connects with HEADERS and asks to run `id`."""
    incoming = [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": '{"argv": ["id"]}'}]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
    scope = {"type": "websocket", "asgi": {"version": "3.0"}, "scheme": "ws", "path": "/v1/boxes/b/exec/ws",
             "raw_path": b"/v1/boxes/b/exec/ws", "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2), "subprotocols": []}
    asyncio.run(app(scope, receive, send))
    return sent


def test_a_websocket_without_the_token_is_closed_before_a_host_opens(tmp_path: Path) -> None:
    app = create_app(tmp_path, "secret")
    for headers in ([], [(b"authorization", b"Bearer nope")]):
        assert handshake(app, headers) == [{"type": "websocket.close", "code": 4401, "reason":
                                            "a bearer token is required (box serve --print-token)"}]
    assert not (tmp_path / "state.db").exists()
