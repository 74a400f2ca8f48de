"""/v1/boxfile: validate, plan and apply a Boxfile sent as the request's body."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Query, Request

from a3s_box.api import models as m
from a3s_box.api.deps import ApiDep, HostDep, capped_body
from a3s_box.api.limits import MAX_BOXFILE
from a3s_box.orchestrator.host import Host

if TYPE_CHECKING:
    from a3s_box.boxfile.model import Boxfile

YAML = {"application/yaml": {"schema": {"type": "string"}}}

router = APIRouter()


async def boxfile_body(request: Request) -> bytes:
    return await capped_body(request, MAX_BOXFILE, "the Boxfile")


# read on the event loop, so the endpoints can be sync (their work in a worker thread);
# declared before HostDep: a Boxfile past the cap fails before a Host opens
BoxfileBody = Annotated[bytes, Depends(boxfile_body)]


def load(h: Host, body: bytes, path: str, for_apply: bool) -> Boxfile:
    return h.load([path], for_apply=for_apply, contents={path: body})


@router.post("/v1/boxfile/validate", response_model=m.ValidateResult, openapi_extra={"requestBody": {
    "content": YAML, "required": True}}, responses={422: {"model": m.Problem}})
def validate(body: BoxfileBody, h: HostDep, path: str = Query("Boxfile.yaml", description=(
        "The name problems are located by; relative paths in it resolve from its folder"))) -> m.ValidateResult:
    bf = load(h, body, path, for_apply=False)
    return m.ValidateResult(ok=True, images=len(bf.images), boxes=len(bf.boxes), pools=len(bf.pools))


@router.post("/v1/boxfile/plan", response_model=m.PlanResult, openapi_extra={"requestBody": {
    "content": YAML, "required": True}}, responses={422: {"model": m.Problem}})
def plan(body: BoxfileBody, h: HostDep, path: str = Query("Boxfile.yaml"), project: str | None = None) -> m.PlanResult:
    p = h.plan(load(h, body, path, for_apply=True), project)
    return m.PlanResult(text=p.text(), changes=len(p.changes))


@router.post("/v1/boxfile/apply", response_model=m.ApplyResult, openapi_extra={"requestBody": {
    "content": YAML, "required": True}}, responses={422: {"model": m.Problem}})
def apply(body: BoxfileBody, h: HostDep, api: ApiDep, path: str = Query("Boxfile.yaml"),
          project: str | None = None) -> m.ApplyResult:
    t0 = time.monotonic()
    with h.locked():
        r = h.apply(load(h, body, path, for_apply=True), project)
        for o in r.outcomes:
            if o.action.kind == "box" and o.status == "ok" and o.action.op.value in ("create", "recreate"):
                row = h.store.box(f"{r.plan.project}.{o.action.name}")
                boot = str(((row.handle or {}).get("extra") or {}).get("boot", "cold")) if row else "cold"
                api.metrics.box_start_seconds.labels(boot.split()[0]).observe(o.seconds)
    api.metrics.apply_seconds.labels("ok" if r.ok else "failed").observe(time.monotonic() - t0)
    return m.ApplyResult(ok=r.ok, plan=r.plan.text(), outcomes=[m.Change(
        kind=o.action.kind, node=o.action.name, op=o.action.op.value, reason=o.action.reason,
        status=o.status, detail=o.detail, seconds=round(o.seconds, 3),
        build=m.BuildSteps(cached=o.build.cached, total=o.build.total) if o.build else None)
        for o in r.outcomes])
