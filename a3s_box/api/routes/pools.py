"""/v1/pools: pools, a box leased from one, and a leased box given back."""
from __future__ import annotations

from fastapi import APIRouter, Body
from fastapi.responses import Response

from a3s_box.api import models as m
from a3s_box.api.deps import CallerDep, HostDep
from a3s_box.api.problems import Forbidden

router = APIRouter()


@router.get("/v1/pools", response_model=list[m.Pool])
def pools(h: HostDep, caller: CallerDep, project: str | None = None) -> list[m.Pool]:
    """Every pool (a sandbox token: the pools it may acquire from)."""
    return [m.Pool(**p) for p in h.pools(project) if caller.may_use_pool(str(p["project"]), str(p["name"]))]


@router.post("/v1/pools/{pool}/acquire", response_model=m.Box,
             responses={403: {"model": m.Problem}, 409: {"model": m.Problem}})
def acquire(pool: str, h: HostDep, caller: CallerDep,
            req: m.AcquireRequest = Body(default_factory=lambda: m.AcquireRequest.model_validate({}))) -> m.Box:
    """A ready box leased from the pool (to a sandbox token: for it alone)."""
    project = req.project or h.project_of_pool(pool)
    if not caller.may_use_pool(project, pool):
        raise Forbidden(f"this token may not acquire from pool {project}.{pool} "
                        f"(it may from: {', '.join(sorted(caller.templates))})")
    row = h.acquire(pool, project, req.name, timeout=req.timeout, owner=None if caller.admin else caller.id)
    return m.Box(**h.info(h.find(row.id)).to_json())


@router.post("/v1/boxes/{name}/release", status_code=204)
def release(name: str, h: HostDep,
            req: m.ReleaseRequest = Body(default_factory=lambda: m.ReleaseRequest.model_validate({}))) -> Response:
    h.release(name, keep=req.keep)
    return Response(status_code=204)
