"""envd's HTTP routes: GET /files (download), POST /files (upload: multipart, or
octet-stream, maybe gzip), GET /health. Same gate as the Connect services; a body is
capped at MAX_FILE as the API's own file route is, a gzip body after decompression too."""
from __future__ import annotations

import asyncio
import posixpath
import zlib
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from a3s_box.api.e2b.gate import Opener, Target, http_status
from a3s_box.api.e2b.filesystem import files_of
from a3s_box.api.limits import MAX_FILE
from a3s_box.errors import BoxError
from a3s_box.files.box_files import BoxFiles


class TooLarge(BoxError):
    pass


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status)


async def _read_capped(request: Request) -> bytes:
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_FILE:
            raise TooLarge(f"the upload may be at most {MAX_FILE >> 20} MiB")
    if request.headers.get("content-encoding", "").lower() == "gzip":
        d = zlib.decompressobj(wbits=31)
        out = d.decompress(bytes(data), MAX_FILE + 1)
        if len(out) > MAX_FILE or d.unconsumed_tail:
            raise TooLarge(f"the upload may be at most {MAX_FILE >> 20} MiB uncompressed")
        return out
    return bytes(data)


def routes(open_: Opener) -> list[Route]:
    async def work(request: Request, fn: Callable[[BoxFiles, Target], object]) -> object:
        headers = {k.lower(): v for k, v in request.headers.items()}

        def run() -> object:
            target = open_(headers)
            return fn(files_of(target), target)
        return await asyncio.to_thread(run)

    async def download(request: Request) -> Response:
        path = request.query_params.get("path", "")
        if not path.startswith("/"):
            return _error(400, f"{path!r}: a path in the sandbox must be absolute")
        try:
            data = await work(request, lambda f, _t: f.read(path))
        except BoxError as e:
            return _error(http_status(e), str(e))
        return Response(data, media_type="application/octet-stream")

    async def upload(request: Request) -> Response:
        given = request.query_params.get("path")
        try:
            items: list[tuple[str, bytes]] = []
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                async with request.form(max_files=1000, max_part_size=MAX_FILE) as form:
                    for _key, part in form.multi_items():
                        if isinstance(part, str):
                            continue
                        dest = given or part.filename or ""
                        data = await part.read(MAX_FILE + 1)
                        if len(data) > MAX_FILE:
                            raise TooLarge(f"a file may be at most {MAX_FILE >> 20} MiB")
                        items.append((dest, data))
            else:
                items.append((given or "", await _read_capped(request)))
            for dest, _ in items:
                if not dest.startswith("/"):
                    return _error(400, f"{dest!r}: a path in the sandbox must be absolute")

            def write(f: BoxFiles, _t: Target) -> None:
                for dest, data in items:
                    parent = posixpath.dirname(posixpath.normpath(dest))
                    if parent != "/":
                        f.make_dir(parent)
                    f.write(dest, data)
            await work(request, write)
        except TooLarge as e:
            return _error(413, str(e))
        except BoxError as e:
            return _error(http_status(e), str(e))
        return JSONResponse([{"name": posixpath.basename(d), "type": "file", "path": posixpath.normpath(d)}
                             for d, _ in items])

    async def health(request: Request) -> Response:
        try:
            await work(request, lambda _f, _t: None)
        except BoxError as e:
            return _error(http_status(e), str(e))
        return Response(status_code=204)

    return [Route("/files", download, methods=["GET"]), Route("/files", upload, methods=["POST"]),
            Route("/health", health, methods=["GET"])]
