"""Every failure as RFC 9457 problem details, with the message the CLI prints."""
from __future__ import annotations

from fastapi.responses import JSONResponse

from a3s_box.api.models import Problem
from a3s_box.errors import BoxError, BoxfileError, DiskFullError, GuestError, HostUnsupported, StateError


class RequestTooLarge(BoxError):
    """A request body past its limit (413)."""


class Unauthorized(BoxError):
    """No token, or one this server does not know (401)."""


class Forbidden(BoxError):
    """The caller's token does not allow this (403); access.py says which scope would."""


def status_of(e: BoxError) -> int:
    msg = str(e)
    if isinstance(e, RequestTooLarge):
        return 413
    if isinstance(e, BoxfileError):
        return 422
    if isinstance(e, Unauthorized):
        return 401
    if isinstance(e, Forbidden):
        return 403
    if "no such box" in msg or "no such pool" in msg or "no such template" in msg or "no such token" in msg:
        return 404
    if "already exists" in msg or "is paused" in msg or "is parked" in msg or "no ready box" in msg:
        return 409
    if isinstance(e, HostUnsupported):
        return 501
    if isinstance(e, DiskFullError):
        return 507
    if isinstance(e, StateError) or "locked by" in msg:
        return 503
    if isinstance(e, GuestError):
        return 502
    return 400


def problem(e: BoxError) -> Problem:
    status = status_of(e)
    titles = {422: "invalid Boxfile", 404: "not found", 409: "conflict", 501: "not supported here",
              502: "the guest did not answer", 503: "busy", 400: "request failed", 413: "request too large",
              507: "no space left", 403: "forbidden", 401: "unauthorized"}
    problems = [str(p) for p in e.problems] if isinstance(e, BoxfileError) else []
    return Problem(type=f"https://a3s.dev/problems/{titles[status].replace(' ', '-')}", title=titles[status],
                   status=status, detail=str(e), problems=problems)


def as_response(p: Problem) -> JSONResponse:
    return JSONResponse(p.model_dump(), status_code=p.status, media_type="application/problem+json")
