"""The routes of `box serve`. Each is a thin call into a3s_box.Host (a fresh Host per
request: the state store and the home lock serialise what must be), so the CLI, the
Python API and HTTP clients see the same behaviour and the same messages."""
from __future__ import annotations

import asyncio
import base64
import json
import queue
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi import Body, FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

import a3s_box
from a3s_box import audit
from a3s_box.api import models as m
from a3s_box.api.channels import Channels
from a3s_box.api.deps import ApiState, api_state
from a3s_box.api.limits import MAX_BOXFILE, MAX_FILE, body_limit
from a3s_box.api.metrics import Metrics
from a3s_box.api.problems import RequestTooLarge, as_response, problem
from a3s_box.errors import BoxError

YAML = {"application/yaml": {"schema": {"type": "string"}}}
BYTES = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def create_app(home: Path, token: str | None = None) -> FastAPI:
    """The API for HOME; TOKEN: required as a bearer token on every request (TCP)."""
    app = FastAPI(title="a3s-box", version=a3s_box.__version__,
                  description="AI agents in hardware-isolated microVMs: the `box` CLI over HTTP.",
                  responses={400: {"model": m.Problem}, 401: {"model": m.Problem}})
    api = ApiState(home=home, token=token, metrics=Metrics(home), channels=Channels())
    app.state.api = api
    app.router.on_shutdown.append(api.channels.close)
    app.middleware("http")(guard)
    app.exception_handler(BoxError)(box_error)
    metrics, channels, host = api.metrics, api.channels, api.host

    @app.get("/healthz", response_model=m.Health)
    def healthz() -> m.Health:
        return m.Health(ok=True, version=a3s_box.__version__)

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        from prometheus_client import generate_latest

        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4")

    # --- Boxfiles ----------------------------------------------------------------
    async def boxfile_body(request: Request) -> bytes:
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_BOXFILE:
                raise RequestTooLarge(f"the Boxfile may be at most {MAX_BOXFILE >> 20} MiB")
        return bytes(data)

    def load(h: Any, body: bytes, path: str, for_apply: bool) -> Any:
        return h.load([path], for_apply=for_apply, contents={path: body})

    @app.post("/v1/boxfile/validate", response_model=m.ValidateResult, openapi_extra={"requestBody": {
        "content": YAML, "required": True}}, responses={422: {"model": m.Problem}})
    async def validate(request: Request, path: str = Query("Boxfile.yaml", description=(
            "The name problems are located by; relative paths in it resolve from its folder"))) -> m.ValidateResult:
        body = await boxfile_body(request)

        def work() -> m.ValidateResult:
            with host() as h:
                bf = load(h, body, path, for_apply=False)
                return m.ValidateResult(ok=True, images=len(bf.images), boxes=len(bf.boxes), pools=len(bf.pools))
        return await asyncio.to_thread(work)

    @app.post("/v1/boxfile/plan", response_model=m.PlanResult, openapi_extra={"requestBody": {
        "content": YAML, "required": True}}, responses={422: {"model": m.Problem}})
    async def plan(request: Request, path: str = Query("Boxfile.yaml"), project: str | None = None) -> m.PlanResult:
        body = await boxfile_body(request)

        def work() -> m.PlanResult:
            with host() as h:
                p = h.plan(load(h, body, path, for_apply=True), project)
                return m.PlanResult(text=p.text(), changes=len(p.changes))
        return await asyncio.to_thread(work)

    @app.post("/v1/boxfile/apply", response_model=m.ApplyResult, openapi_extra={"requestBody": {
        "content": YAML, "required": True}}, responses={422: {"model": m.Problem}})
    async def apply(request: Request, path: str = Query("Boxfile.yaml"), project: str | None = None) -> m.ApplyResult:
        body = await boxfile_body(request)

        def work() -> m.ApplyResult:
            t0 = time.monotonic()
            with host() as h, h.locked():
                r = h.apply(load(h, body, path, for_apply=True), project)
                for o in r.outcomes:
                    if o.action.kind == "box" and o.status == "ok" and o.action.op.value in ("create", "recreate"):
                        row = h.store.box(f"{r.plan.project}.{o.action.name}")
                        boot = str(((row.handle or {}).get("extra") or {}).get("boot", "cold")) if row else "cold"
                        metrics.box_start_seconds.labels(boot.split()[0]).observe(o.seconds)
            metrics.apply_seconds.labels("ok" if r.ok else "failed").observe(time.monotonic() - t0)
            return m.ApplyResult(ok=r.ok, plan=r.plan.text(), outcomes=[m.Change(
                kind=o.action.kind, node=o.action.name, op=o.action.op.value, reason=o.action.reason,
                status=o.status, detail=o.detail, seconds=round(o.seconds, 3),
                build=m.BuildSteps(cached=o.build.cached, total=o.build.total) if o.build else None)
                for o in r.outcomes])
        return await asyncio.to_thread(work)

    # --- boxes -------------------------------------------------------------------
    def box_out(h: Any, name: str) -> m.Box:
        return m.Box(**h.info(h.find(name)).to_json())

    @app.get("/v1/boxes", response_model=list[m.Box])
    def boxes(project: str | None = None) -> list[m.Box]:
        with host() as h:
            return [m.Box(**b.to_json()) for b in h.ps(project)]

    @app.get("/v1/boxes/{name}", response_model=m.Box, responses={404: {"model": m.Problem}})
    def box(name: str) -> m.Box:
        with host() as h:
            return box_out(h, name)

    @app.post("/v1/boxes/{name}/stop", response_model=m.Box, responses={404: {"model": m.Problem}})
    def stop(name: str) -> m.Box:
        with host() as h, h.locked():
            h.stop(name)
            return box_out(h, name)

    @app.post("/v1/boxes/{name}/start", response_model=m.Box, responses={404: {"model": m.Problem}})
    def start(name: str) -> m.Box:
        with host() as h, h.locked():
            h.start(name)
            return box_out(h, name)

    @app.delete("/v1/boxes/{name}", status_code=204, responses={404: {"model": m.Problem}})
    def delete(name: str) -> Response:
        with host() as h, h.locked():
            h.delete(name)
        return Response(status_code=204)

    @app.post("/v1/boxes/{name}/exec", response_model=m.ExecResult, responses={404: {"model": m.Problem}})
    def exec_(name: str, req: m.ExecRequest) -> m.ExecResult:
        from a3s_box.guest.protocol import ExitKind, Namespace

        t0 = time.monotonic()
        with host() as h:
            c = channels.client(h, h.find(name))
            r = c.run(req.argv, ns=Namespace[req.namespace.upper()], env=req.env, workdir=req.workdir,
                      stdin=req.stdin.encode() if req.stdin is not None else None, timeout=req.timeout)
        metrics.execs.inc()
        metrics.exec_seconds.observe(time.monotonic() - t0)
        signaled = r.exit.kind is ExitKind.SIGNALED
        return m.ExecResult(exit_code=None if signaled else r.exit.code, signal=r.exit.value if signaled else None,
                            stdout=r.stdout.decode(errors="replace"), stderr=r.stderr.decode(errors="replace"))

    @app.websocket("/v1/boxes/{name}/exec/ws")
    async def exec_ws(ws: WebSocket, name: str) -> None:
        """Interactive: the first message {"argv", "tty", "env", "workdir", "rows", "cols"};
        then {"stdin": base64}, {"eof": true}, {"resize": [rows, cols]}, {"signal": N}.
        The server sends {"stdout"|"stderr": base64} and finally {"exit": {...}}. A
        client that goes away kills what it started."""
        if not api.admits(ws.headers.get("authorization")):
            await ws.close(code=4401)
            return
        await ws.accept()
        await _interactive(ws, name, host, metrics)

    # --- files -------------------------------------------------------------------
    @app.get("/v1/boxes/{name}/files", response_class=Response, responses={200: {"content": BYTES}})
    def read_file(name: str, path: str) -> Response:
        with host() as h:
            return Response(h.box(name).files.read(path), media_type="application/octet-stream")

    @app.put("/v1/boxes/{name}/files", status_code=204, openapi_extra={"requestBody": {"content": BYTES}})
    async def write_file(request: Request, name: str, path: str, mode: str = "644") -> Response:
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_FILE:
                raise RequestTooLarge(f"box {name}: a file sent at once may be at most {MAX_FILE >> 20} MiB")

        def work() -> None:
            with host() as h:
                h.box(name).files.write(path, bytes(data), int(mode, 8))
        await asyncio.to_thread(work)
        return Response(status_code=204)

    @app.delete("/v1/boxes/{name}/files", status_code=204)
    def remove_file(name: str, path: str) -> Response:
        with host() as h:
            h.box(name).files.remove(path)
        return Response(status_code=204)

    @app.get("/v1/boxes/{name}/files/list", response_model=list[m.FileEntry])
    def list_files(name: str, path: str) -> list[m.FileEntry]:
        with host() as h:
            return [m.FileEntry(**e.to_json()) for e in h.box(name).files.list(path)]

    @app.get("/v1/boxes/{name}/files/tar", response_class=StreamingResponse,
             responses={200: {"content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}})
    async def download_tar(name: str, path: str) -> StreamingResponse:
        """A file or tree of the box as a tar stream, as it is read (any size)."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=16)

        class Sink:
            def write(self, b: bytes) -> int:  # in the worker thread: waits while the client is slow
                asyncio.run_coroutine_threadsafe(q.put(bytes(b)), loop).result()
                return len(b)

        def work() -> None:
            try:
                with host() as h:
                    h.box(name).files.download_tar(path, Sink())
            finally:
                asyncio.run_coroutine_threadsafe(q.put(None), loop).result()
        with host() as h:  # a missing box or path fails before the stream begins
            h.box(name).files.list(path)
        task = asyncio.ensure_future(asyncio.to_thread(work))

        async def stream() -> AsyncIterator[bytes]:
            while (chunk := await q.get()) is not None:
                yield chunk
            await task
        return StreamingResponse(stream(), media_type="application/x-tar")

    @app.put("/v1/boxes/{name}/files/tar", status_code=204, openapi_extra={"requestBody": {
        "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}})
    async def upload_tar(request: Request, name: str, path: str) -> Response:
        """A tar stream extracted into folder PATH of the box as it arrives (any size)."""
        from a3s_box.files.tarstream import QueueReader

        reader = QueueReader()

        def work() -> None:
            with host() as h:
                h.box(name).files.upload_tar(reader, path)
        task = asyncio.ensure_future(asyncio.to_thread(work))

        async def put(item: bytes | None) -> bool:
            """Hand the extractor ITEM, waiting while it is behind; False once it is gone."""
            while True:
                try:
                    reader.q.put_nowait(item)
                    return True
                except queue.Full:
                    if task.done():
                        return False
                    await asyncio.sleep(0.005)
        async for chunk in request.stream():
            if not await put(chunk):
                break
        await put(None)
        await task
        return Response(status_code=204)

    # --- pools and images --------------------------------------------------------
    @app.get("/v1/pools", response_model=list[m.Pool])
    def pools(project: str | None = None) -> list[m.Pool]:
        with host() as h:
            return [m.Pool(**p) for p in h.pools(project)]

    @app.post("/v1/pools/{pool}/acquire", response_model=m.Box, responses={409: {"model": m.Problem}})
    def acquire(pool: str, req: m.AcquireRequest = Body(default_factory=lambda: m.AcquireRequest.model_validate({}))) -> m.Box:
        with host() as h:
            row = h.acquire(pool, req.project, req.name)
            return box_out(h, row.id)

    @app.post("/v1/boxes/{name}/release", status_code=204)
    def release(name: str, req: m.ReleaseRequest = Body(default_factory=lambda: m.ReleaseRequest.model_validate({}))) -> Response:
        with host() as h:
            h.release(name, keep=req.keep)
        return Response(status_code=204)

    @app.get("/v1/images", response_model=list[m.Image])
    def images() -> list[m.Image]:
        with host() as h:
            return [m.Image(name=r.name, digest=r.digest, size=r.size, last_used=r.last_used)
                    for r in h.images.list()]

    @app.post("/v1/images/pull", responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}})
    async def pull(req: m.PullRequest) -> StreamingResponse:
        """Pull an image; server-sent events: `pulling`, then `done` (with the digest) or
        `error` (a problem)."""
        async def stream() -> AsyncIterator[bytes]:
            yield f"event: pulling\ndata: {json.dumps({'ref': req.ref})}\n\n".encode()

            def work() -> Any:
                with host() as h:
                    return h._audited("pull", req.ref, lambda: h.images.pull(req.ref))
            try:
                record = await asyncio.to_thread(work)
            except BoxError as e:
                yield f"event: error\ndata: {problem(e).model_dump_json()}\n\n".encode()
                return
            done = {"ref": req.ref, "name": record.name, "digest": record.digest, "size": record.size}
            yield f"event: done\ndata: {json.dumps(done)}\n\n".encode()
        return StreamingResponse(stream(), media_type="text/event-stream")

    # --- events ------------------------------------------------------------------
    @app.get("/v1/events", responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}})
    async def events(follow: bool = True, since: int = Query(-1, description=(
            "Byte offset in the audit log to start from; -1: its end (only what happens next)"))) -> StreamingResponse:
        """Box, pool and image changes as server-sent events (the audit log's lines)."""
        async def stream() -> AsyncIterator[bytes]:
            offset = since
            if offset < 0:
                offset = (home / audit.AUDIT_LOG).stat().st_size if (home / audit.AUDIT_LOG).exists() else 0
            yield b": a3s-box events\n\n"
            while True:
                entries, offset = audit.read(home, offset)
                for e in entries:
                    yield f"id: {offset}\ndata: {json.dumps(e, sort_keys=True)}\n\n".encode()
                if not follow:
                    return
                await asyncio.sleep(0.25)
        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


async def guard(request: Request, call_next: Callable[[Request], Any]) -> Response:
    """The bearer token (TCP) and the body limits, before any route runs; counts requests."""
    api = api_state(request)
    if not api.admits(request.headers.get("authorization")):
        return as_response(m.Problem(title="unauthorized", status=401,
                                     detail="a bearer token is required (box serve --print-token)"))
    length = int(request.headers.get("content-length") or 0)
    limit = body_limit(request.url.path)
    if length > limit:
        return as_response(m.Problem(title="request too large", status=413,
                                     detail=f"the body may be at most {limit >> 20} MiB"))
    response: Response = await call_next(request)
    route = request.scope.get("route")
    api.metrics.requests.labels(getattr(route, "path", "other"), str(response.status_code)).inc()
    return response


async def box_error(_request: Request, e: BoxError) -> JSONResponse:
    return as_response(problem(e))


async def _interactive(ws: WebSocket, name: str, host: Any, metrics: Metrics) -> None:
    from a3s_box.guest.protocol import ExecRequest, Namespace

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=256)

    def push(kind: str) -> Callable[[bytes], None]:
        def out(data: bytes) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, {kind: base64.b64encode(data).decode()})
        return out
    try:
        first = json.loads(await ws.receive_text())
        argv = [str(a) for a in first["argv"]]
    except (ValueError, KeyError, TypeError, WebSocketDisconnect):
        await ws.close(code=4400)
        return
    with host() as h:
        try:
            client_cm = h.client(h.find(name))
            client = client_cm.__enter__()
        except BoxError as e:
            await ws.send_text(json.dumps({"error": problem(e).model_dump()}))
            await ws.close()
            return
        try:
            req = ExecRequest(argv=tuple(argv), ns=Namespace[str(first.get("namespace", "agent")).upper()],
                              env=tuple(f"{k}={v}" for k, v in (first.get("env") or {}).items()),
                              workdir=str(first.get("workdir") or ""), tty=bool(first.get("tty")), stdin=True,
                              rows=int(first.get("rows") or 24), cols=int(first.get("cols") or 80))
            session = client.start(req, push("stdout"), push("stderr"))
            metrics.execs.inc()
            waiter = asyncio.ensure_future(asyncio.to_thread(session.wait, None))

            async def pump_in() -> None:
                """Until the client goes away or sends what is not the protocol."""
                try:
                    while True:
                        msg = json.loads(await ws.receive_text())
                        if "stdin" in msg:
                            session.write(base64.b64decode(msg["stdin"]))
                        if msg.get("eof"):
                            session.close_stdin()
                        if "resize" in msg:
                            session.resize(int(msg["resize"][0]), int(msg["resize"][1]))
                        if "signal" in msg:
                            session.signal(int(msg["signal"]))
                except (WebSocketDisconnect, RuntimeError, ValueError, KeyError, TypeError, IndexError,
                        BoxError):
                    return
            reader = asyncio.ensure_future(pump_in())
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    await ws.send_text(json.dumps(getter.result()))
                    continue
                getter.cancel()
                if reader in done:  # the client went away (or sent garbage): end what it started
                    session.signal(9)
                    waiter.cancel()
                    return
                while not queue.empty():
                    await ws.send_text(json.dumps(queue.get_nowait()))
                st = waiter.result()
                await ws.send_text(json.dumps({"exit": {"code": st.code, "kind": st.kind.name.lower(),
                                                        "value": st.value}}))
                reader.cancel()
                await ws.close()
                return
        except (WebSocketDisconnect, RuntimeError):
            return
        except BoxError as e:
            try:
                await ws.send_text(json.dumps({"error": problem(e).model_dump()}))
                await ws.close()
            except (WebSocketDisconnect, RuntimeError):
                pass
        finally:
            client_cm.__exit__(None, None, None)
