"""/v1/events: the audit log's lines (box, pool and image changes) as server-sent events."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from a3s_box import audit
from a3s_box.api.deps import ApiDep

router = APIRouter()


@router.get("/v1/events", responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}})
async def events(api: ApiDep, follow: bool = True, since: int = Query(-1, description=(
        "Byte offset in the audit log to start from; -1: its end (only what happens next)"))) -> StreamingResponse:
    """Box, pool and image changes as server-sent events (the audit log's lines)."""
    home = api.home

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
