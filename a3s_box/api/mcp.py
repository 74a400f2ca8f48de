"""a3s-box as an MCP server (the official `mcp` SDK's MCPServer): tools to list boxes,
acquire one from a pool, run commands, read, write and list files, stop and delete; each
box's console log as a resource (`box://{name}/logs`).

Two transports: streamable HTTP at /mcp on `box serve` (the bearer token as for every
route), and stdio (`box mcp`, for an MCP host that starts it as the user).

Threat: the model calling these tools acts on whatever its prompt says, and the prompt
may be hostile. Over HTTP the tools act with the token's scope exactly as the REST routes
do (access.py): a sandbox token's model can acquire from its pools and touch only the
boxes leased for it; it never applies a Boxfile (no tool does). Over stdio the server
runs as the user who started it, with that user's rights (as `box` itself). Outputs are
bounded like the API's (guest reads are capped by the guest client).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver.context import Context
from mcp.server.mcpserver.exceptions import ResourceError, ToolError

from a3s_box import audit
from a3s_box.api.access import Caller, check_route, owned_box, usable_pool
from a3s_box.api.deps import who
from a3s_box.api.problems import Forbidden
from a3s_box.errors import BoxError
from a3s_box.guest.protocol import ExitKind
from a3s_box.orchestrator.host import Host
from a3s_box.version import __version__

MAX_OUTPUT = 1 << 20  # bytes of a command's stdout or stderr, or a file, a tool hands the model

INSTRUCTIONS = """a3s-box runs code in hardware-isolated microVMs ("boxes"). Acquire a box
from a pool (list_pools shows which you may use), run commands in it, read and write its
files, and delete it when done. Boxes are disposable: nothing you do in one reaches the host."""


def build(home: Path, caller_of: Callable[[Context[Any]], Caller]) -> MCPServer:
    """The MCP server over HOME; CALLER_OF says who calls (from the HTTP request's token,
    or the local user over stdio)."""
    # WARNING: the SDK's INFO lines (sessions opened, a tool's expected failure) are noise
    # on box serve's stderr, and the model gets each failure's message anyway
    server: MCPServer = MCPServer("a3s-box", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")

    @contextmanager
    def acting(ctx: Context[Any], route: tuple[str, str], box: str | None = None) -> Iterator[Host]:
        caller = caller_of(ctx)
        check_route(caller, *route)  # the REST route this tool stands for: the same scope
        with audit.acting_as(who(caller)), Host(home) as h:
            if box is not None:
                owned_box(caller, h.store, box)
            yield h

    async def off_loop(fn: Callable[[], Any], resource: bool = False) -> Any:
        """FN on a worker thread (Host calls block); a BoxError is the model's to read
        (the message the CLI prints), anything else a crash the SDK logs."""
        try:
            return await anyio.to_thread.run_sync(fn)
        except BoxError as e:
            raise (ResourceError if resource else ToolError)(str(e)) from e

    @server.tool(description="The boxes you may use: name, status, pool, image.")
    async def list_boxes(ctx: Context[Any]) -> list[dict[str, Any]]:
        def work() -> list[dict[str, Any]]:
            caller = caller_of(ctx)
            with acting(ctx, ("GET", "/v1/boxes")) as h:
                return [_box(h.info(r).to_json()) for r in h.store.boxes() if caller.may_use_box(r)]
        return await off_loop(work)  # type: ignore[no-any-return]

    @server.tool(description="The warm pools you may acquire a box from, and how many are ready.")
    async def list_pools(ctx: Context[Any]) -> list[dict[str, Any]]:
        def work() -> list[dict[str, Any]]:
            caller = caller_of(ctx)
            with acting(ctx, ("GET", "/v1/pools")) as h:
                return [p for p in h.pools() if caller.may_use_pool(str(p["project"]), str(p["name"]))]
        return await off_loop(work)  # type: ignore[no-any-return]

    @server.tool(description="Acquire a ready box from POOL (waiting up to wait_seconds for one). "
                             "Returns the box; delete_box it when done.")
    async def acquire(pool: str, ctx: Context[Any], name: str | None = None,
                      wait_seconds: float = 60.0) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            caller = caller_of(ctx)
            with acting(ctx, ("POST", "/v1/pools/{pool}/acquire")) as h:
                usable_pool(caller, pool)  # before the pool is looked up: no telling which exist
                project = h.project_of_pool(pool)
                if not caller.may_use_pool(project, pool):
                    raise Forbidden(f"this token may not acquire from pool {pool}")
                row = h.acquire(pool, project, name, timeout=min(max(wait_seconds, 0.0), 600.0),
                                owner=None if caller.admin else caller.id)
                return _box(h.info(h.find(row.id)).to_json())
        return await off_loop(work)  # type: ignore[no-any-return]

    @server.tool(description="Run a command (argv list) in BOX to completion: exit_code, stdout, stderr.")
    async def run(box: str, command: list[str], ctx: Context[Any], stdin: str | None = None,
                  timeout_seconds: float = 60.0) -> dict[str, Any]:
        if not command:
            raise BoxError("command: give the program and its arguments, e.g. [\"ls\", \"-l\"]")

        def work() -> dict[str, Any]:
            with acting(ctx, ("POST", "/v1/boxes/{name}/exec"), box) as h:
                r = h.box(box).run(command, timeout=min(max(timeout_seconds, 0.1), 3600.0),
                                   stdin=stdin.encode() if stdin is not None else None)
                signaled = r.exit.kind is ExitKind.SIGNALED
                return {"exit_code": None if signaled else r.exit.code, "signal": r.exit.value if signaled else None,
                        "stdout": _text(r.stdout), "stderr": _text(r.stderr)}
        return await off_loop(work)  # type: ignore[no-any-return]

    @server.tool(description="Read a file of BOX (text; bytes that are not UTF-8 shown replaced).")
    async def read_file(box: str, path: str, ctx: Context[Any]) -> str:
        def work() -> str:
            with acting(ctx, ("GET", "/v1/boxes/{name}/files"), box) as h:
                return _text(h.box(box).files.read(path))
        return await off_loop(work)  # type: ignore[no-any-return]

    @server.tool(description="Write CONTENT (text) to a file of BOX, making its folders.")
    async def write_file(box: str, path: str, content: str, ctx: Context[Any]) -> str:
        def work() -> str:
            with acting(ctx, ("PUT", "/v1/boxes/{name}/files"), box) as h:
                h.box(box).files.write(path, content)
                return f"wrote {len(content.encode())} bytes to {path}"
        return await off_loop(work)  # type: ignore[no-any-return]

    @server.tool(description="List a folder of BOX: name, kind, size, mode.")
    async def list_files(box: str, path: str, ctx: Context[Any]) -> list[dict[str, Any]]:
        def work() -> list[dict[str, Any]]:
            with acting(ctx, ("GET", "/v1/boxes/{name}/files/list"), box) as h:
                return [e.to_json() for e in h.box(box).files.list(path)]
        return await off_loop(work)  # type: ignore[no-any-return]

    @server.tool(description="Stop BOX's VM (its disk is kept; start it again with the API or CLI).")
    async def stop_box(box: str, ctx: Context[Any]) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            with acting(ctx, ("POST", "/v1/boxes/{name}/stop"), box) as h, h.locked():
                h.stop(box)
                return _box(h.info(h.find(box)).to_json())
        return await off_loop(work)  # type: ignore[no-any-return]

    @server.tool(description="Delete BOX (a box acquired from a pool is given back and destroyed).")
    async def delete_box(box: str, ctx: Context[Any]) -> str:
        def work() -> str:
            with acting(ctx, ("DELETE", "/v1/boxes/{name}"), box) as h:
                row = h.find(box)
                if row.pool is not None and row.lease is not None:
                    h.release(row.id)
                else:
                    with h.locked():
                        h.delete(row.id)
                return f"deleted {row.name}"
        return await off_loop(work)  # type: ignore[no-any-return]

    @server.resource("box://{name}/logs", mime_type="text/plain",
                     description="A box's console log (kernel, guest init, its agent's output), the last MiB.")
    async def box_logs(name: str, ctx: Context[Any]) -> str:
        def work() -> str:
            from a3s_box.logs.reader import read_lines

            with acting(ctx, ("GET", "/v1/boxes/{name}"), name) as h:
                return _text(b"".join(read_lines(h.console_log(h.find(name))))[-MAX_OUTPUT:])
        return await off_loop(work, resource=True)  # type: ignore[no-any-return]

    return server


def _box(info: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "name", "project", "status", "pool", "image", "detail")
    return {k: info.get(k) for k in keys if info.get(k) not in (None, "")}


def _text(data: bytes) -> str:
    cut = len(data) > MAX_OUTPUT
    text = data[:MAX_OUTPUT].decode("utf-8", "replace")
    return text + (f"\n[a3s-box: cut at {MAX_OUTPUT} of {len(data)} bytes]" if cut else "")


def caller_over_http(tokens: Any) -> Callable[[Context[Any]], Caller]:
    """The caller of an MCP request that came over `box serve`'s HTTP (its token)."""
    def caller(ctx: Context[Any]) -> Caller:
        request = ctx.request_context.request
        found: Caller | None = None
        if request is not None:  # the guard resolved the token of this very request
            found = getattr(request.state, "caller", None) or tokens.caller(request.headers.get("authorization"))
        if found is None:  # the HTTP guard refused it already; never act for nobody
            raise Forbidden("a bearer token is required")
        return found
    return caller


def local_caller(_ctx: Context[Any]) -> Caller:
    """stdio: the user who started `box mcp`, with that user's rights (as `box`)."""
    return Caller("local", "admin")

