"""/v1/boxes/{name}/exec: run a command in a box, at once (JSON) or interactively (WebSocket)."""
from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from a3s_box.api import models as m
from a3s_box.api.deps import ApiDep, CallerDep, HostDep
from a3s_box.api.metrics import Metrics
from a3s_box.api.problems import problem
from a3s_box.errors import BoxError
from a3s_box.orchestrator.host import Host

router = APIRouter()


@router.post("/v1/boxes/{name}/exec", response_model=m.ExecResult, responses={404: {"model": m.Problem}})
def exec_(name: str, req: m.ExecRequest, h: HostDep, api: ApiDep) -> m.ExecResult:
    from a3s_box.guest.protocol import ExitKind, Namespace

    t0 = time.monotonic()
    c = api.channels.client(h, h.find(name))
    r = c.run(req.argv, ns=Namespace[req.namespace.upper()], env=req.env, workdir=req.workdir,
              stdin=req.stdin.encode() if req.stdin is not None else None, timeout=req.timeout)
    api.metrics.execs.inc()
    api.metrics.exec_seconds.observe(time.monotonic() - t0)
    signaled = r.exit.kind is ExitKind.SIGNALED
    return m.ExecResult(exit_code=None if signaled else r.exit.code, signal=r.exit.value if signaled else None,
                        stdout=r.stdout.decode(errors="replace"), stderr=r.stderr.decode(errors="replace"))


@router.websocket("/v1/boxes/{name}/exec/ws")
async def exec_ws(ws: WebSocket, name: str, api: ApiDep, caller: CallerDep) -> None:
    """Interactive: the first message {"argv", "tty", "env", "workdir", "rows", "cols"};
    then {"stdin": base64}, {"eof": true}, {"resize": [rows, cols]}, {"signal": N}.
    The server sends {"stdout"|"stderr": base64} and finally {"exit": {...}}. A
    client that goes away kills what it started."""
    # the HTTP guard does not see WebSockets: `authorize` (CallerDep) closed the handshake
    # with 4401/4403/4404 before this runs, and no Host opens for a client it refused
    await ws.accept()
    await _interactive(ws, name, lambda: api.host(caller), api.metrics)


async def _interactive(ws: WebSocket, name: str, host: Callable[[], AbstractContextManager[Host]],
                       metrics: Metrics) -> None:
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
