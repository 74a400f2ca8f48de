"""/v1/tokens: sandbox tokens issued, listed and revoked (an admin token's calls alone:
access.py keeps every route not in its SANDBOX_ROUTES from sandbox tokens)."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from a3s_box.api import models as m
from a3s_box.api.access import mint_sandbox_token
from a3s_box.api.deps import HostDep
from a3s_box.orchestrator.state import TokenRow

router = APIRouter()


def token_out(row: TokenRow) -> m.Token:
    return m.Token(id=row.id, scope=row.scope, templates=list(row.templates), name=row.name,
                   created_at=row.created_at)


@router.post("/v1/tokens", response_model=m.TokenCreated, status_code=201)
def create(req: m.TokenRequest, h: HostDep) -> m.TokenCreated:
    """A sandbox token for the pools named: it may acquire from them and use what it acquired."""
    token, row = mint_sandbox_token(req.templates, req.name)
    h.add_token(row)
    return m.TokenCreated(token=token, **token_out(row).model_dump())


@router.get("/v1/tokens", response_model=list[m.Token])
def tokens(h: HostDep) -> list[m.Token]:
    return [token_out(r) for r in h.tokens()]


@router.delete("/v1/tokens/{token_id}", status_code=204, responses={404: {"model": m.Problem}})
def revoke(token_id: str, h: HostDep) -> Response:
    """Revoked at once: the token's next request is refused (401)."""
    h.revoke_token(token_id)
    return Response(status_code=204)
