"""E2B's REST control API (the SDK's `api_url`): create, list, get, kill, timeout,
refresh, pause, resume, connect, fork and logs of sandboxes, as E2B's OpenAPI document
has them. The API key (`X-API-Key`) is a token of `box serve`: the admin token, or a
sandbox token limited to its templates and its own sandboxes (access.py). Errors are
E2B's shape, {"code", "message"}, with the status E2B gives."""
from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from a3s_box import audit
from a3s_box.api.access import Caller, TokenBook
from a3s_box.api.deps import capped_body, who
from a3s_box.api.e2b import keys
from a3s_box.api.e2b import models as m
from a3s_box.api.e2b.sandboxes import Sandboxes, SandboxNotFound, rfc3339
from a3s_box.api.limits import MAX_JSON
from a3s_box.api.problems import Forbidden, RequestTooLarge, Unauthorized, status_of
from a3s_box.errors import BoxError
from a3s_box.orchestrator.host import Host

T = TypeVar("T")


def domain_for(request: Request, configured: str | None) -> str:
    """The domain port URLs go under ({port}-{id}.DOMAIN): the configured one, else the
    host the SDK called, with a loopback address as `localhost` (curl and browsers send
    *.localhost to the loopback by themselves)."""
    if configured:
        return configured
    host = request.headers.get("host", "localhost")
    name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    if name in ("127.0.0.1", "[::1]", "localhost"):
        name = "localhost"
    return f"{name}:{port}" if port else name


def build(home: Path, tokens: TokenBook, key: keys.ServerKey, domain: str | None) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    def caller_of(request: Request) -> Caller:
        given = request.headers.get("x-api-key")
        caller = tokens.caller(f"Bearer {given}" if given else request.headers.get("authorization"))
        if caller is None:
            raise Unauthorized("an API key is required: a token of box serve (X-API-Key)")
        return caller

    @contextmanager
    def service(request: Request) -> Iterator[Sandboxes]:
        caller = caller_of(request)
        with audit.acting_as(who(caller)), Host(home) as h:
            yield Sandboxes(h, caller, key.value, domain_for(request, domain))

    async def call(request: Request, fn: Callable[[Sandboxes], T]) -> T:
        def work() -> T:
            with service(request) as s:
                return fn(s)
        return await run_in_threadpool(work)

    @app.middleware("http")
    async def admit(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """The key before anything is read, and the body cap before it is read."""
        try:
            caller_of(request)
        except Unauthorized as e:
            return JSONResponse({"code": 401, "message": str(e)}, status_code=401)
        if int(request.headers.get("content-length") or 0) > MAX_JSON:
            return JSONResponse({"code": 413, "message": f"the body may be at most {MAX_JSON >> 20} MiB"},
                                status_code=413)
        return await call_next(request)

    async def read_body(request: Request) -> bytes:
        return await capped_body(request, MAX_JSON, "the request body")

    @app.exception_handler(BoxError)
    async def error(_request: Request, e: BoxError) -> JSONResponse:
        status = (404 if isinstance(e, SandboxNotFound) else 403 if isinstance(e, Forbidden)
                  else 413 if isinstance(e, RequestTooLarge) else status_of(e))
        return JSONResponse({"code": status, "message": str(e)}, status_code=status)

    @app.exception_handler(ValueError)
    async def invalid(_request: Request, e: ValueError) -> JSONResponse:
        return JSONResponse({"code": 400, "message": str(e)}, status_code=400)

    async def create(request: Request) -> JSONResponse:
        req = m.NewSandbox.model_validate_json(await read_body(request))
        made = await call(request, lambda s: s.create(req))
        return JSONResponse(made.model_dump(by_alias=True, exclude_none=True), status_code=201)

    async def listing(request: Request) -> JSONResponse:
        meta = dict(urllib.parse.parse_qsl(request.query_params.get("metadata", "")))
        states = frozenset(s for s in request.query_params.get("state", "").split(",") if s) or None
        found = await call(request, lambda s: s.listing(meta, states))
        return JSONResponse([x.model_dump(by_alias=True, exclude_none=True) for x in found])

    async def get(request: Request, sandbox_id: str) -> JSONResponse:
        def work(s: Sandboxes) -> m.ListedSandbox:
            rec, row = s.record(sandbox_id)
            return s.listed(rec, row, detail=True)
        got = await call(request, work)
        return JSONResponse(got.model_dump(by_alias=True, exclude_none=True))

    async def kill(request: Request, sandbox_id: str) -> Response:
        await call(request, lambda s: s.kill(sandbox_id))
        return Response(status_code=204)

    async def timeout(request: Request, sandbox_id: str) -> Response:
        req = m.TimeoutRequest.model_validate_json(await read_body(request))
        await call(request, lambda s: s.set_timeout(sandbox_id, req.timeout))
        return Response(status_code=204)

    async def refresh(request: Request, sandbox_id: str) -> Response:
        body = await read_body(request)
        req = m.RefreshRequest.model_validate_json(body) if body.strip() else m.RefreshRequest()
        await call(request, lambda s: s.refresh(sandbox_id, req.duration))
        return Response(status_code=204)

    async def pause(request: Request, sandbox_id: str) -> Response:
        await call(request, lambda s: s.pause(sandbox_id))
        return Response(status_code=204)

    async def connect(request: Request, sandbox_id: str) -> JSONResponse:
        body = await read_body(request)
        req = m.ConnectRequest.model_validate_json(body) if body.strip() else m.ConnectRequest()
        seconds = m.DEFAULT_TIMEOUT if req.timeout is None else req.timeout
        made, resumed = await call(request, lambda s: s.connect(sandbox_id, seconds))
        return JSONResponse(made.model_dump(by_alias=True, exclude_none=True), status_code=201 if resumed else 200)

    async def resume(request: Request, sandbox_id: str) -> JSONResponse:
        body = await read_body(request)
        req = m.ResumeRequest.model_validate_json(body) if body.strip() else m.ResumeRequest()

        def work(s: Sandboxes) -> m.Sandbox:
            _rec, row = s.record(sandbox_id)
            if row.status != "paused":
                raise BoxError(f"sandbox {sandbox_id}: already exists and is running, not paused")
            return s.connect(sandbox_id, req.timeout, req.auto_pause)[0]
        made = await call(request, work)
        return JSONResponse(made.model_dump(by_alias=True, exclude_none=True), status_code=201)

    async def fork(request: Request, sandbox_id: str) -> JSONResponse:
        body = await read_body(request)
        req = m.ForkRequest.model_validate_json(body) if body.strip() else m.ForkRequest()
        made = await call(request, lambda s: s.fork(sandbox_id, req.count, req.timeout))
        return JSONResponse([{"sandbox": x.model_dump(by_alias=True, exclude_none=True)} if isinstance(x, m.Sandbox)
                             else {"error": {"code": status_of(x), "message": str(x)}} for x in made],
                            status_code=201)

    async def logs(request: Request, sandbox_id: str) -> JSONResponse:
        lines = await call(request, lambda s: s.logs(sandbox_id))
        return JSONResponse({"logs": [{"timestamp": rfc3339(t), "line": text} for t, text in lines],
                             "logEntries": [_entry(t, text) for t, text in lines]})

    async def logs_v2(request: Request, sandbox_id: str) -> JSONResponse:
        lines = await call(request, lambda s: s.logs(sandbox_id))
        return JSONResponse({"logs": [_entry(t, text) for t, text in lines]})

    async def metrics(request: Request, sandbox_id: str) -> JSONResponse:
        await call(request, lambda s: s.record(sandbox_id))  # 404 for what it may not see
        return JSONResponse([])  # no per-box samples kept yet (docs/e2b.md)

    for path, fn, methods in (
            ("/sandboxes", create, ["POST"]), ("/v2/sandboxes", create, ["POST"]),
            ("/sandboxes", listing, ["GET"]), ("/v2/sandboxes", listing, ["GET"]),
            ("/sandboxes/{sandbox_id}", get, ["GET"]), ("/sandboxes/{sandbox_id}", kill, ["DELETE"]),
            ("/sandboxes/{sandbox_id}/timeout", timeout, ["POST"]),
            ("/sandboxes/{sandbox_id}/refreshes", refresh, ["POST"]),
            ("/sandboxes/{sandbox_id}/pause", pause, ["POST"]), ("/sandboxes/{sandbox_id}/resume", resume, ["POST"]),
            ("/sandboxes/{sandbox_id}/connect", connect, ["POST"]),
            ("/v2/sandboxes/{sandbox_id}/connect", connect, ["POST"]),
            ("/sandboxes/{sandbox_id}/fork", fork, ["POST"]),
            ("/sandboxes/{sandbox_id}/logs", logs, ["GET"]), ("/v2/sandboxes/{sandbox_id}/logs", logs_v2, ["GET"]),
            ("/sandboxes/{sandbox_id}/metrics", metrics, ["GET"])):
        app.add_api_route(path, fn, methods=methods)
    return app


def _entry(t: float, text: str) -> dict[str, object]:
    return {"timestamp": rfc3339(t), "level": "info", "message": text, "fields": {}}
