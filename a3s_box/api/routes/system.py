"""/healthz and /metrics: whether the server answers, and its Prometheus figures."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

import a3s_box
from a3s_box.api import models as m
from a3s_box.api.deps import ApiDep

router = APIRouter()


@router.get("/healthz", response_model=m.Health)
def healthz() -> m.Health:
    return m.Health(ok=True, version=a3s_box.__version__)


@router.get("/metrics", response_class=PlainTextResponse)
def prometheus(api: ApiDep) -> PlainTextResponse:
    from prometheus_client import generate_latest

    return PlainTextResponse(generate_latest(api.metrics.registry).decode(), media_type="text/plain; version=0.0.4")
