"""/v1/images: the image store's images, and pulling one."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from a3s_box.api import models as m
from a3s_box.api.deps import ApiDep, CallerDep, HostDep
from a3s_box.api.problems import problem
from a3s_box.errors import BoxError

if TYPE_CHECKING:
    from a3s_box.image.records import ImageRecord

router = APIRouter()


@router.get("/v1/images", response_model=list[m.Image])
def images(h: HostDep) -> list[m.Image]:
    return [m.Image(name=r.name, digest=r.digest, size=r.size, last_used=r.last_used) for r in h.images.list()]


@router.post("/v1/images/pull", responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}})
async def pull(req: m.PullRequest, api: ApiDep, caller: CallerDep) -> StreamingResponse:
    """Pull an image; server-sent events: `pulling`, then `done` (with the digest) or
    `error` (a problem)."""
    async def stream() -> AsyncIterator[bytes]:
        yield f"event: pulling\ndata: {json.dumps({'ref': req.ref})}\n\n".encode()

        def work() -> ImageRecord:
            with api.host(caller) as h:  # its own: the pull runs in the stream, after this endpoint returned
                record: ImageRecord = h._audited("pull", req.ref, lambda: h.images.pull(req.ref))
                return record
        try:
            record = await asyncio.to_thread(work)
        except BoxError as e:
            yield f"event: error\ndata: {problem(e).model_dump_json()}\n\n".encode()
            return
        done = {"ref": req.ref, "name": record.name, "digest": record.digest, "size": record.size}
        yield f"event: done\ndata: {json.dumps(done)}\n\n".encode()
    return StreamingResponse(stream(), media_type="text/event-stream")
