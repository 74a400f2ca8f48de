"""The HTTP API's bodies. The OpenAPI document (schema/openapi.json) is generated from
these, and the TypeScript SDK's types from it: one source for all three."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_ACQUIRE_WAIT = 600.0  # seconds: a waiting acquire holds one of the server's worker threads


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(BaseModel):
    """RFC 9457 problem details, with the CLI's message in `detail`."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    problems: list[str] = Field(default_factory=list, description="FILE:LINE:COL: path: message, each")


class Box(BaseModel):
    id: str
    project: str
    name: str
    status: str
    driver: str
    accel: str
    image: str
    pid: int | None
    detail: str
    network: str
    boot: str
    security: str


class BuildSteps(BaseModel):
    cached: int = Field(description="Steps the build cache gave")
    total: int


class Change(BaseModel):
    kind: str
    node: str
    op: str
    reason: str
    status: str
    detail: str
    seconds: float = 0.0
    build: BuildSteps | None = Field(default=None, description="An image this apply built: its steps")


class ApplyResult(BaseModel):
    ok: bool
    plan: str = Field(description="The plan's text, as `box plan` prints it")
    outcomes: list[Change]


class PlanResult(BaseModel):
    text: str
    changes: int


class ValidateResult(BaseModel):
    ok: bool
    images: int
    boxes: int
    pools: int


class ExecRequest(_Body):
    argv: list[str] = Field(min_length=1)
    stdin: str | None = Field(None, description="Text fed to the command's standard input")
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str = ""
    namespace: Literal["agent", "business"] = "agent"
    timeout: float | None = Field(60.0, gt=0, le=86400)


class ExecResult(BaseModel):
    exit_code: int | None
    signal: int | None
    stdout: str
    stderr: str


class FileEntry(BaseModel):
    name: str
    kind: str
    size: int
    mode: int
    mtime: int


class Pool(BaseModel):
    project: str
    name: str
    box: str | None
    ready: int
    leased: int
    total: int
    min_ready: int | None
    max: int | None


class AcquireRequest(_Body):
    name: str | None = Field(None, description="The leased box's name (default: the member's)")
    project: str | None = None
    timeout: float = Field(0.0, ge=0, le=MAX_ACQUIRE_WAIT, description=(
        "Seconds to wait when no box is ready: one is booted while the pool is below max, "
        "or the request waits for one (acquirers served in order); 409 once it runs out"))


class ReleaseRequest(_Body):
    keep: bool = Field(False, description="Return it to the pool idle instead of destroying it")


class Image(BaseModel):
    name: str
    digest: str
    size: int
    last_used: float


class PullRequest(_Body):
    ref: str = Field(min_length=1, description="An image reference (Docker Hub short names too)")


class Event(BaseModel):
    time: str
    who: str
    what: str
    target: str
    result: str
    extra: dict[str, Any] = Field(default_factory=dict)


class Health(BaseModel):
    ok: bool
    version: str


class TokenRequest(_Body):
    templates: list[str] = Field(..., min_length=1, description=(
        "Pools the token may acquire from (a pool's name, or project.pool)"))
    name: str = Field("", max_length=200, description="A label for `box token ls`")


class Token(BaseModel):
    id: str = Field(description="What the audit log names; revoke by it")
    scope: str = Field(description="sandbox (the admin token is the server's own)")
    templates: list[str]
    name: str = ""
    created_at: float


class TokenCreated(Token):
    token: str = Field(description="The bearer token: shown once, never stored (only its digest is)")
