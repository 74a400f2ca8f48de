"""/v1/boxes/{name}/files: a box's files, read, written, listed and removed, and trees as tar streams."""
from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from a3s_box.api import models as m
from a3s_box.api.deps import ApiDep, CallerDep, HostDep, capped_body
from a3s_box.api.limits import MAX_FILE

BYTES = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}

router = APIRouter()


async def file_body(request: Request, name: str) -> bytes:
    return await capped_body(request, MAX_FILE, f"box {name}: a file sent at once")


# read on the event loop, so write_file can be sync; declared before HostDep: a body past
# the cap fails before a Host opens
FileBody = Annotated[bytes, Depends(file_body)]


@router.get("/v1/boxes/{name}/files", response_class=Response, responses={200: {"content": BYTES}})
def read_file(name: str, path: str, h: HostDep) -> Response:
    return Response(h.box(name).files.read(path), media_type="application/octet-stream")


@router.put("/v1/boxes/{name}/files", status_code=204, openapi_extra={"requestBody": {"content": BYTES}})
def write_file(name: str, path: str, data: FileBody, h: HostDep, mode: str = "644") -> Response:
    h.box(name).files.write(path, data, int(mode, 8))
    return Response(status_code=204)


@router.delete("/v1/boxes/{name}/files", status_code=204)
def remove_file(name: str, path: str, h: HostDep) -> Response:
    h.box(name).files.remove(path)
    return Response(status_code=204)


@router.get("/v1/boxes/{name}/files/list", response_model=list[m.FileEntry])
def list_files(name: str, path: str, h: HostDep) -> list[m.FileEntry]:
    return [m.FileEntry(**e.to_json()) for e in h.box(name).files.list(path)]


@router.get("/v1/boxes/{name}/files/tar", response_class=StreamingResponse,
            responses={200: {"content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}})
async def download_tar(name: str, path: str, h: HostDep, api: ApiDep, caller: CallerDep) -> StreamingResponse:
    """A file or tree of the box as a tar stream, as it is read (any size)."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=16)

    class Sink:
        def write(self, b: bytes) -> int:  # in the worker thread: waits while the client is slow
            asyncio.run_coroutine_threadsafe(q.put(bytes(b)), loop).result()
            return len(b)

    def work() -> None:
        try:
            with api.host(caller) as h2:  # its own: the stream outlives this endpoint and its HostDep
                h2.box(name).files.download_tar(path, Sink())
        finally:
            asyncio.run_coroutine_threadsafe(q.put(None), loop).result()
    h.box(name).files.list(path)  # a missing box or path fails before the stream begins
    task = asyncio.ensure_future(asyncio.to_thread(work))

    async def stream() -> AsyncIterator[bytes]:
        while (chunk := await q.get()) is not None:
            yield chunk
        await task
    return StreamingResponse(stream(), media_type="application/x-tar")


@router.put("/v1/boxes/{name}/files/tar", status_code=204, openapi_extra={"requestBody": {
    "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload_tar(request: Request, name: str, path: str, api: ApiDep, caller: CallerDep) -> Response:
    """A tar stream extracted into folder PATH of the box as it arrives (any size)."""
    from a3s_box.files.tarstream import QueueReader

    reader = QueueReader()

    def work() -> None:
        with api.host(caller) as h:  # its own: a client that goes mid-stream ends this endpoint, not the task
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
