"""The remote client for asyncio: the same calls as sync.py (wire.py makes them), awaited."""
from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, TypeVar

import httpx
from websockets.asyncio.client import ClientConnection, connect, unix_connect

from a3s_box.api import models as m
from a3s_box.client import wire
from a3s_box.client.sync import ProcessExit
from a3s_box.client.wire import ApiError

T = TypeVar("T")


class AsyncClient:
    """`async with AsyncClient("http://host:8100", token) as client: ...`"""

    def __init__(self, url: str | None = None, token: str | None = None, *, socket: str | None = None,
                 timeout: float = 300.0) -> None:
        if (url is None) == (socket is None):
            raise ValueError("give the server's url, or its unix socket")
        self.url, self.socket, self.token = url, socket, token
        headers = {"authorization": f"Bearer {token}"} if token else {}
        transport = httpx.AsyncHTTPTransport(uds=socket) if socket else None
        self._http = httpx.AsyncClient(base_url=url or "http://box", headers=headers, timeout=timeout,
                                       transport=transport)

    async def do(self, call: wire.Call[T]) -> T:
        return call.read(await self._http.request(call.method, call.path, **call.request()))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def validate(self, boxfile: str, path: str | None = None) -> m.ValidateResult:
        return await self.do(wire.validate(boxfile, path))

    async def plan(self, boxfile: str, path: str | None = None, project: str | None = None) -> m.PlanResult:
        return await self.do(wire.plan(boxfile, path, project))

    async def apply(self, boxfile: str, path: str | None = None, project: str | None = None) -> m.ApplyResult:
        return await self.do(wire.apply(boxfile, path, project))

    async def boxes(self, project: str | None = None) -> list[m.Box]:
        return await self.do(wire.boxes(project))

    async def box(self, name: str) -> "AsyncRemoteBox":
        return AsyncRemoteBox(self, await self.do(wire.box(name)))

    async def pools(self, project: str | None = None) -> list[m.Pool]:
        return await self.do(wire.pools(project))

    async def acquire(self, pool: str, name: str | None = None, project: str | None = None,
                      timeout: float = 0.0) -> "AsyncLeasedBox":
        """A ready box from POOL (`async with await client.acquire("warm") as box:` releases it)."""
        return AsyncLeasedBox(self, await self.do(wire.acquire(pool, name, project, timeout)))

    async def images(self) -> list[m.Image]:
        return await self.do(wire.images())

    async def events(self, follow: bool = True, since: int = -1) -> AsyncIterator[dict[str, Any]]:
        async with self._http.stream("GET", "/v1/events", timeout=None, **wire.events_request(since, follow)) as r:
            wire.check(r)
            block = ""
            async for line in r.aiter_lines():
                if line:
                    block += line + "\n"
                    continue
                if (event := wire.event_of(block)) is not None:
                    yield event
                block = ""

    async def create_token(self, templates: list[str], name: str = "") -> m.TokenCreated:
        return await self.do(wire.create_token(templates, name))

    async def tokens(self) -> list[m.Token]:
        return await self.do(wire.tokens())

    async def revoke_token(self, token_id: str) -> None:
        await self.do(wire.revoke_token(token_id))

    async def websocket(self, path: str) -> ClientConnection:
        headers = {"authorization": f"Bearer {self.token}"} if self.token else None
        if self.socket:
            return await unix_connect(self.socket, f"ws://box{path}", additional_headers=headers)
        assert self.url is not None
        return await connect(self.url.replace("http", "ws", 1) + path, additional_headers=headers)


class AsyncRemoteFiles:
    def __init__(self, client: AsyncClient, box: str) -> None:
        self._client, self._box = client, box

    async def read(self, path: str) -> bytes:
        return await self._client.do(wire.read_file(self._box, path))

    async def write(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        await self._client.do(wire.write_file(self._box, path, data.encode() if isinstance(data, str) else data,
                                              mode))

    async def list(self, path: str) -> list[m.FileEntry]:
        return await self._client.do(wire.list_files(self._box, path))

    async def remove(self, path: str) -> None:
        await self._client.do(wire.remove_file(self._box, path))

    async def download_tar(self, path: str) -> bytes:
        return await self._client.do(wire.download_tar(self._box, path))

    async def upload_tar(self, folder: str, tar: bytes) -> None:
        await self._client.do(wire.upload_tar(self._box, folder, tar))


class AsyncRemoteBox:
    def __init__(self, client: AsyncClient, info: m.Box) -> None:
        self.client, self.info = client, info
        self.files = AsyncRemoteFiles(client, info.id)

    @property
    def name(self) -> str:
        return self.info.name

    async def run(self, argv: list[str], stdin: str | None = None, env: dict[str, str] | None = None,
                  workdir: str | None = None, namespace: str | None = None,
                  timeout: float | None = None) -> m.ExecResult:
        return await self.client.do(wire.run(self.info.id, argv, stdin, env, workdir, namespace, timeout))

    async def spawn(self, argv: list[str], tty: bool = False, env: dict[str, str] | None = None,
                    workdir: str | None = None, rows: int = 24, cols: int = 80) -> "AsyncProcess":
        ws = await self.client.websocket(wire.box_path(self.info.id, "/exec/ws"))
        await ws.send(json.dumps(wire.ws_first(argv, tty, env, workdir, rows, cols)))
        return AsyncProcess(ws)

    async def refresh(self) -> m.Box:
        self.info = await self.client.do(wire.box(self.info.id))
        return self.info

    async def stop(self) -> None:
        self.info = await self.client.do(wire.stop(self.info.id))

    async def start(self) -> None:
        self.info = await self.client.do(wire.start(self.info.id))

    async def delete(self) -> None:
        await self.client.do(wire.delete(self.info.id))


class AsyncLeasedBox(AsyncRemoteBox):
    async def release(self, keep: bool = False) -> None:
        await self.client.do(wire.release(self.info.id, keep))

    async def __aenter__(self) -> "AsyncLeasedBox":
        return self

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.release()


class AsyncProcess:
    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.exit: ProcessExit | None = None

    async def write(self, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        await self._ws.send(json.dumps({"stdin": base64.b64encode(raw).decode()}))

    async def end(self) -> None:
        await self._ws.send(json.dumps({"eof": True}))

    async def resize(self, rows: int, cols: int) -> None:
        await self._ws.send(json.dumps({"resize": [rows, cols]}))

    async def kill(self, signal: int = 15) -> None:
        await self._ws.send(json.dumps({"signal": signal}))

    async def output(self) -> AsyncIterator[tuple[str, bytes]]:
        """("stdout"|"stderr", bytes) as they come, until it ends."""
        from websockets.exceptions import ConnectionClosed

        while self.exit is None:
            try:
                msg = json.loads(await self._ws.recv())
            except ConnectionClosed as e:
                raise ApiError(m.Problem(title="connection closed", status=502,
                                         detail="the server closed the exec before it ended")) from e
            if "error" in msg:
                raise ApiError(m.Problem.model_validate(msg["error"]))
            if "exit" in msg:
                ex = msg["exit"]
                self.exit = ProcessExit(ex["kind"], ex["value"] if ex["kind"] == "exited" else None,
                                        ex["value"] if ex["kind"] == "signaled" else None)
                await self._ws.close()
                return
            for stream in ("stdout", "stderr"):
                if stream in msg:
                    yield stream, base64.b64decode(msg[stream])

    async def wait(self) -> tuple[ProcessExit, bytes, bytes]:
        out = {"stdout": b"", "stderr": b""}
        async for stream, chunk in self.output():
            out[stream] += chunk
        assert self.exit is not None
        return self.exit, out["stdout"], out["stderr"]
