"""The API's calls as data (sans-IO): what to send for each, and how to read the answer
into the server's own models (a3s_box.api.models, which the OpenAPI document is made
from). sync.py and aio.py only carry them, so the two clients cannot drift apart."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from a3s_box.api import models as m
from a3s_box.errors import BoxError

T = TypeVar("T")


class ApiError(BoxError):
    """The server refused or failed a call: its problem details (`detail` is the message
    the CLI would print; `problems` a Boxfile's FILE:LINE:COL lines)."""

    def __init__(self, problem: m.Problem) -> None:
        self.problem = problem
        self.status = problem.status
        super().__init__(problem.detail or problem.title)


def check(r: httpx.Response) -> httpx.Response:
    if r.status_code < 400:
        return r
    try:
        problem = m.Problem.model_validate(r.json())
    except ValueError:
        problem = m.Problem(title=r.reason_phrase, status=r.status_code, detail=r.text[:500] or r.reason_phrase)
    raise ApiError(problem)


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def request(self) -> dict[str, Any]:
        """httpx's request() arguments."""
        params = {k: v for k, v in self.params.items() if v is not None}
        out: dict[str, Any] = {"params": params, "headers": self.headers}
        if self.json is not None:
            out["json"] = self.json
        if self.content is not None:
            out["content"] = self.content
        return out


def _model(model: type[T]) -> Callable[[httpx.Response], T]:
    return lambda r: model.model_validate(check(r).json())  # type: ignore[attr-defined]


def _models(model: type[T]) -> Callable[[httpx.Response], list[T]]:
    return lambda r: [model.model_validate(x) for x in check(r).json()]  # type: ignore[attr-defined]


def _none(r: httpx.Response) -> None:
    check(r)


def _bytes(r: httpx.Response) -> bytes:
    return check(r).content


def box_path(name: str, tail: str = "") -> str:
    return f"/v1/boxes/{quote(name, safe='')}{tail}"


_YAML = {"content-type": "application/yaml"}


def validate(boxfile: str, path: str | None) -> Call[m.ValidateResult]:
    return Call("POST", "/v1/boxfile/validate", _model(m.ValidateResult), {"path": path},
                content=boxfile.encode(), headers=_YAML)


def plan(boxfile: str, path: str | None, project: str | None) -> Call[m.PlanResult]:
    return Call("POST", "/v1/boxfile/plan", _model(m.PlanResult), {"path": path, "project": project},
                content=boxfile.encode(), headers=_YAML)


def apply(boxfile: str, path: str | None, project: str | None) -> Call[m.ApplyResult]:
    return Call("POST", "/v1/boxfile/apply", _model(m.ApplyResult), {"path": path, "project": project},
                content=boxfile.encode(), headers=_YAML)


def boxes(project: str | None) -> Call[list[m.Box]]:
    return Call("GET", "/v1/boxes", _models(m.Box), {"project": project})


def box(name: str) -> Call[m.Box]:
    return Call("GET", box_path(name), _model(m.Box))


def stop(name: str) -> Call[m.Box]:
    return Call("POST", box_path(name, "/stop"), _model(m.Box))


def start(name: str) -> Call[m.Box]:
    return Call("POST", box_path(name, "/start"), _model(m.Box))


def delete(name: str) -> Call[None]:
    return Call("DELETE", box_path(name), _none)


def run(name: str, argv: list[str], stdin: str | None, env: dict[str, str] | None, workdir: str | None,
        namespace: str | None, timeout: float | None) -> Call[m.ExecResult]:
    body = m.ExecRequest.model_validate({k: v for k, v in {
        "argv": argv, "stdin": stdin, "env": env or {}, "workdir": workdir, "namespace": namespace,
        "timeout": timeout}.items() if v is not None})
    return Call("POST", box_path(name, "/exec"), _model(m.ExecResult), json=body.model_dump(exclude_none=True))


def read_file(name: str, path: str) -> Call[bytes]:
    return Call("GET", box_path(name, "/files"), _bytes, {"path": path})


def write_file(name: str, path: str, data: bytes, mode: int) -> Call[None]:
    return Call("PUT", box_path(name, "/files"), _none, {"path": path, "mode": f"{mode:o}"}, content=data,
                headers={"content-type": "application/octet-stream"})


def list_files(name: str, path: str) -> Call[list[m.FileEntry]]:
    return Call("GET", box_path(name, "/files/list"), _models(m.FileEntry), {"path": path})


def remove_file(name: str, path: str) -> Call[None]:
    return Call("DELETE", box_path(name, "/files"), _none, {"path": path})


def download_tar(name: str, path: str) -> Call[bytes]:
    return Call("GET", box_path(name, "/files/tar"), _bytes, {"path": path})


def upload_tar(name: str, folder: str, tar: bytes) -> Call[None]:
    return Call("PUT", box_path(name, "/files/tar"), _none, {"path": folder}, content=tar,
                headers={"content-type": "application/x-tar"})


def pools(project: str | None) -> Call[list[m.Pool]]:
    return Call("GET", "/v1/pools", _models(m.Pool), {"project": project})


def acquire(pool: str, name: str | None, project: str | None, timeout: float) -> Call[m.Box]:
    body = m.AcquireRequest(name=name, project=project, timeout=timeout)
    return Call("POST", f"/v1/pools/{quote(pool, safe='')}/acquire", _model(m.Box), json=body.model_dump())


def release(name: str, keep: bool) -> Call[None]:
    return Call("POST", box_path(name, "/release"), _none, json=m.ReleaseRequest(keep=keep).model_dump())


def images() -> Call[list[m.Image]]:
    return Call("GET", "/v1/images", _models(m.Image))


def create_token(templates: list[str], name: str) -> Call[m.TokenCreated]:
    return Call("POST", "/v1/tokens", _model(m.TokenCreated),
                json=m.TokenRequest(templates=templates, name=name).model_dump())


def tokens() -> Call[list[m.Token]]:
    return Call("GET", "/v1/tokens", _models(m.Token))


def revoke_token(token_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/tokens/{quote(token_id, safe='')}", _none)


def events_request(since: int, follow: bool) -> dict[str, Any]:
    return {"params": {"since": since, "follow": str(follow).lower()}}


def event_of(block: str) -> dict[str, Any] | None:
    """One server-sent event's data (a JSON line of the audit log), or None (a comment)."""
    import json

    data = "".join(line[6:] for line in block.splitlines() if line.startswith("data: "))
    return json.loads(data) if data else None


def ws_first(argv: list[str], tty: bool, env: dict[str, str] | None, workdir: str | None,
             rows: int, cols: int) -> dict[str, Any]:
    """The interactive exec's first message (docs/api.md)."""
    return {"argv": argv, "tty": tty, "env": env or {}, "workdir": workdir, "rows": rows, "cols": cols}
