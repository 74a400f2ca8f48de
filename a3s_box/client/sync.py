"""The remote client, blocking (httpx; websockets' sync client for interactive exec)."""
from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect, unix_connect

from a3s_box.api import models as m
from a3s_box.client import wire
from a3s_box.client.wire import ApiError

T = TypeVar("T")


@dataclass(frozen=True)
class ProcessExit:
    kind: str  # exited | signaled | not_started (it could not be started)
    code: int | None  # the exit status when it exited
    signal: int | None  # the signal that ended it


class Client:
    """`box serve` from anywhere: `Client("http://host:8100", token)`, or
    `Client(socket="/path/api.sock")` on the same machine."""

    def __init__(self, url: str | None = None, token: str | None = None, *, socket: str | None = None,
                 timeout: float = 300.0) -> None:
        if (url is None) == (socket is None):
            raise ValueError("give the server's url, or its unix socket")
        self.url, self.socket, self.token = url, socket, token
        headers = {"authorization": f"Bearer {token}"} if token else {}
        transport = httpx.HTTPTransport(uds=socket) if socket else None
        self._http = httpx.Client(base_url=url or "http://box", headers=headers, timeout=timeout,
                                  transport=transport)

    def do(self, call: wire.Call[T]) -> T:
        return call.read(self._http.request(call.method, call.path, **call.request()))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- Boxfiles ---------------------------------------------------------------------
    def validate(self, boxfile: str, path: str | None = None) -> m.ValidateResult:
        return self.do(wire.validate(boxfile, path))

    def plan(self, boxfile: str, path: str | None = None, project: str | None = None) -> m.PlanResult:
        return self.do(wire.plan(boxfile, path, project))

    def apply(self, boxfile: str, path: str | None = None, project: str | None = None) -> m.ApplyResult:
        return self.do(wire.apply(boxfile, path, project))

    # --- boxes, pools, images, tokens -------------------------------------------------
    def boxes(self, project: str | None = None) -> list[m.Box]:
        return self.do(wire.boxes(project))

    def box(self, name: str) -> "RemoteBox":
        return RemoteBox(self, self.do(wire.box(name)))

    def pools(self, project: str | None = None) -> list[m.Pool]:
        return self.do(wire.pools(project))

    def acquire(self, pool: str, name: str | None = None, project: str | None = None,
                timeout: float = 0.0) -> "LeasedBox":
        """A ready box from POOL (`with client.acquire("warm") as box:` releases it after)."""
        return LeasedBox(self, self.do(wire.acquire(pool, name, project, timeout)))

    def images(self) -> list[m.Image]:
        return self.do(wire.images())

    def pull(self, ref: str) -> dict[str, Any]:
        """Pull an image; what the server said when done ({ref, name, digest, size})."""
        r = self._http.post("/v1/images/pull", json={"ref": ref})
        wire.check(r)
        last: dict[str, Any] = {}
        for block in r.text.split("\n\n"):
            event = next((ln[7:] for ln in block.splitlines() if ln.startswith("event: ")), "")
            data = wire.event_of(block)
            if event == "error" and data is not None:
                raise ApiError(m.Problem.model_validate(data))
            if event == "done" and data is not None:
                last = data
        return last

    def events(self, follow: bool = True, since: int = -1) -> Iterator[dict[str, Any]]:
        """The audit log's lines as they are written (since=0: from its start)."""
        with self._http.stream("GET", "/v1/events", timeout=None, **wire.events_request(since, follow)) as r:
            wire.check(r)
            block = ""
            for line in r.iter_lines():
                if line:
                    block += line + "\n"
                    continue
                if (event := wire.event_of(block)) is not None:
                    yield event
                block = ""

    def create_token(self, templates: list[str], name: str = "") -> m.TokenCreated:
        return self.do(wire.create_token(templates, name))

    def tokens(self) -> list[m.Token]:
        return self.do(wire.tokens())

    def revoke_token(self, token_id: str) -> None:
        self.do(wire.revoke_token(token_id))

    def websocket(self, path: str) -> ClientConnection:
        headers = {"authorization": f"Bearer {self.token}"} if self.token else None
        if self.socket:
            ws = unix_connect(self.socket, f"ws://box{path}", additional_headers=headers)
        else:
            assert self.url is not None
            ws = connect(self.url.replace("http", "ws", 1) + path, additional_headers=headers)
        # entered as a context manager would (websockets 17 warns otherwise); Process closes it
        return ws.__enter__()


class RemoteFiles:
    def __init__(self, client: Client, box: str) -> None:
        self._client, self._box = client, box

    def read(self, path: str) -> bytes:
        return self._client.do(wire.read_file(self._box, path))

    def write(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        self._client.do(wire.write_file(self._box, path, data.encode() if isinstance(data, str) else data, mode))

    def list(self, path: str) -> list[m.FileEntry]:
        return self._client.do(wire.list_files(self._box, path))

    def remove(self, path: str) -> None:
        self._client.do(wire.remove_file(self._box, path))

    def download_tar(self, path: str) -> bytes:
        return self._client.do(wire.download_tar(self._box, path))

    def upload_tar(self, folder: str, tar: bytes) -> None:
        self._client.do(wire.upload_tar(self._box, folder, tar))


class RemoteBox:
    def __init__(self, client: Client, info: m.Box) -> None:
        self.client, self.info = client, info
        self.files = RemoteFiles(client, info.id)

    @property
    def name(self) -> str:
        return self.info.name

    def run(self, argv: list[str], stdin: str | None = None, env: dict[str, str] | None = None,
            workdir: str | None = None, namespace: str | None = None, timeout: float | None = None) -> m.ExecResult:
        """Run to completion: exit code, signal, stdout and stderr."""
        return self.client.do(wire.run(self.info.id, argv, stdin, env, workdir, namespace, timeout))

    def spawn(self, argv: list[str], tty: bool = False, env: dict[str, str] | None = None,
              workdir: str | None = None, rows: int = 24, cols: int = 80) -> "Process":
        """Interactive, over the WebSocket: write to it, read its output as it comes."""
        ws = self.client.websocket(wire.box_path(self.info.id, "/exec/ws"))
        ws.send(json.dumps(wire.ws_first(argv, tty, env, workdir, rows, cols)))
        return Process(ws)

    def refresh(self) -> m.Box:
        self.info = self.client.do(wire.box(self.info.id))
        return self.info

    def stop(self) -> None:
        self.info = self.client.do(wire.stop(self.info.id))

    def start(self) -> None:
        self.info = self.client.do(wire.start(self.info.id))

    def delete(self) -> None:
        self.client.do(wire.delete(self.info.id))


class LeasedBox(RemoteBox):
    def release(self, keep: bool = False) -> None:
        self.client.do(wire.release(self.info.id, keep))

    def __enter__(self) -> "LeasedBox":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class Process:
    """A command started by RemoteBox.spawn. Iterate over it for ("stdout"|"stderr", bytes)
    as they come; wait() for its exit."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.exit: ProcessExit | None = None

    def write(self, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self._ws.send(json.dumps({"stdin": base64.b64encode(raw).decode()}))

    def end(self) -> None:
        """End of its standard input."""
        self._ws.send(json.dumps({"eof": True}))

    def resize(self, rows: int, cols: int) -> None:
        self._ws.send(json.dumps({"resize": [rows, cols]}))

    def kill(self, signal: int = 15) -> None:
        self._ws.send(json.dumps({"signal": signal}))

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        while self.exit is None:
            try:
                msg = json.loads(self._ws.recv())
            except ConnectionClosed as e:  # the server went away without an exit
                raise ApiError(m.Problem(title="connection closed", status=502,
                                         detail="the server closed the exec before it ended")) from e
            if "error" in msg:
                raise ApiError(m.Problem.model_validate(msg["error"]))
            if "exit" in msg:
                ex = msg["exit"]
                self.exit = ProcessExit(ex["kind"], ex["value"] if ex["kind"] == "exited" else None,
                                        ex["value"] if ex["kind"] == "signaled" else None)
                self._ws.close()
                return
            for stream in ("stdout", "stderr"):
                if stream in msg:
                    yield stream, base64.b64decode(msg[stream])

    def wait(self) -> tuple[ProcessExit, bytes, bytes]:
        """Reads to its end: (exit, all stdout, all stderr)."""
        out = {"stdout": b"", "stderr": b""}
        for stream, chunk in self:
            out[stream] += chunk
        assert self.exit is not None
        return self.exit, out["stdout"], out["stderr"]
