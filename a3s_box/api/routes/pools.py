"""/v1/pools: pools, a box leased from one, and a leased box given back."""
from __future__ import annotations

from fastapi import APIRouter, Body
from fastapi.responses import Response

from a3s_box.api import models as m
from a3s_box.api.deps import HostDep

router = APIRouter()


@router.get("/v1/pools", response_model=list[m.Pool])
def pools(h: HostDep, project: str | None = None) -> list[m.Pool]:
    return [m.Pool(**p) for p in h.pools(project)]


@router.post("/v1/pools/{pool}/acquire", response_model=m.Box, responses={409: {"model": m.Problem}})
def acquire(pool: str, h: HostDep,
            req: m.AcquireRequest = Body(default_factory=lambda: m.AcquireRequest.model_validate({}))) -> m.Box:
    row = h.acquire(pool, req.project, req.name, timeout=req.timeout)
    return m.Box(**h.info(h.find(row.id)).to_json())


@router.post("/v1/boxes/{name}/release", status_code=204)
def release(name: str, h: HostDep,
            req: m.ReleaseRequest = Body(default_factory=lambda: m.ReleaseRequest.model_validate({}))) -> Response:
    h.release(name, keep=req.keep)
    return Response(status_code=204)
