"""/v1/boxes: list, inspect, stop, start and delete boxes."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from a3s_box.api import models as m
from a3s_box.api.deps import CallerDep, HostDep
from a3s_box.orchestrator.host import Host

router = APIRouter()


def box_out(h: Host, name: str) -> m.Box:
    return m.Box(**h.info(h.find(name)).to_json())


@router.get("/v1/boxes", response_model=list[m.Box])
def boxes(h: HostDep, caller: CallerDep, project: str | None = None) -> list[m.Box]:
    """Every box (a sandbox token: the boxes leased for it)."""
    return [m.Box(**h.info(row).to_json()) for row in h.store.boxes(project) if caller.may_use_box(row)]


@router.get("/v1/boxes/{name}", response_model=m.Box, responses={404: {"model": m.Problem}})
def box(name: str, h: HostDep) -> m.Box:
    return box_out(h, name)


@router.post("/v1/boxes/{name}/stop", response_model=m.Box, responses={404: {"model": m.Problem}})
def stop(name: str, h: HostDep) -> m.Box:
    with h.locked():
        h.stop(name)
        return box_out(h, name)


@router.post("/v1/boxes/{name}/start", response_model=m.Box, responses={404: {"model": m.Problem}})
def start(name: str, h: HostDep) -> m.Box:
    with h.locked():
        h.start(name)
        return box_out(h, name)


@router.delete("/v1/boxes/{name}", status_code=204, responses={404: {"model": m.Problem}})
def delete(name: str, h: HostDep) -> Response:
    with h.locked():
        h.delete(name)
    return Response(status_code=204)
