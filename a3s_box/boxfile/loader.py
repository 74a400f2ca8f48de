"""The staged Boxfile loader.

    read (size, binary, tabs) -> parse (libyaml, duplicate keys, bombs) -> merge files
    -> drop x- keys -> interpolate ${VAR} -> pydantic model -> cross references

The fast path never builds position-aware trees: only when a problem is found is each
file re-parsed with ruamel.yaml's round-trip loader to place it as FILE:LINE:COL. All
problems are collected and raised together as one BoxfileError.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from a3s_box.boxfile.interpolate import interpolate
from a3s_box.boxfile.messages import Issue, issue_from
from a3s_box.boxfile.model import Boxfile, ImageDef
from a3s_box.boxfile.positions import locate
from a3s_box.boxfile.references import check_builds, check_references, check_secrets, check_volumes
from a3s_box.boxfile.source import Source, SourceProblem, parse_fast, parse_positions, read
from a3s_box.errors import BoxfileError, Problem

# Mappings whose keys are user data, not fields: x- keys there are kept.
_DATA_MAPS = {"env"}


def load(files: Sequence[str | Path], environ: Mapping[str, str] | None = None,
         for_apply: bool = False, contents: Mapping[str, bytes] | None = None) -> Boxfile:
    """FOR_APPLY: also check what must hold when boxes are created (secret variables set).
    CONTENTS: a file's bytes by its name in FILES, when they come from elsewhere than the
    disk (the HTTP API's request body); relative paths in it resolve from where it is named."""
    paths = [Path(f) for f in files] or [Path("Boxfile.yaml")]
    env = os.environ if environ is None else environ
    sources: list[Source] = []
    docs: list[Any] = []
    problems: list[Problem] = []
    bases: dict[str, Path] = {}  # image name -> folder of the file that last set its path
    volume_bases: dict[str, Path] = {}  # box name -> folder of the file that last set its volumes
    for path in paths:
        try:
            src = read(path, (contents or {}).get(str(path)))
            data = parse_fast(src)
        except SourceProblem as e:
            problems.append(e.problem)
            continue
        if data is None:
            problems.append(Problem(str(path), 0, 0, "", "is empty: a Boxfile needs at least "
                                    "`apiVersion: box.a3s.dev/v1`"))
            continue
        if not isinstance(data, dict):
            problems.append(Problem(str(path), 1, 1, "", "must be a mapping of apiVersion, images, "
                                    f"boxes and pools, not {_kind(data)}"))
            continue
        sources.append(src)
        docs.append(_strip_extensions(data))
        bases.update(_image_path_bases(data, path.parent))
        volume_bases.update(_volume_bases(data, path.parent))
    if problems:
        raise BoxfileError(problems)

    merged: dict[str, Any] = {}
    for d in docs:
        merged = _merge(merged, d)
    data, interp_errors = interpolate(merged, env)
    _resolve_paths(data, bases)
    _resolve_bind_sources(data, volume_bases)
    issues = [Issue(e.path, e.message) for e in interp_errors]
    model: Boxfile | None = None
    try:
        model = Boxfile.model_validate({**data, "files": tuple(p.absolute() for p in paths)})
    except ValidationError as e:
        issues += [_place_model_error(issue_from(err, Boxfile)) for err in e.errors(include_url=False)]
    if isinstance(data, dict):
        issues += check_references(data)
    if model is not None:
        issues += check_secrets(model, env if for_apply else None)
        issues += check_volumes(model, for_apply)
        issues += check_builds(model)
    if issues:
        raise BoxfileError(_place(issues, sources))
    assert model is not None
    return model


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "a boolean"}.get(type(value), type(value).__name__)


def _place_model_error(issue: Issue) -> Issue:
    # A pool's min_ready > max is a model-level check: point at min_ready.
    if len(issue.path) == 2 and issue.path[0] == "pools" and issue.message.startswith("min_ready"):
        return Issue(issue.path + ("min_ready",), issue.message)
    return issue


def _place(issues: list[Issue], sources: list[Source]) -> list[Problem]:
    docs = [(s.path, parse_positions(s)) for s in sources]
    out: list[Problem] = []
    for issue in issues:
        where = locate(docs, issue.path, want_key=issue.at_key)
        path = ".".join(str(p) for p in issue.path)
        out.append(Problem(where.file, where.line, where.column, path, issue.message))
    return sorted(set(out))


def _strip_extensions(node: Any, parent_key: str = "", memo: dict[int, Any] | None = None) -> Any:
    """Drop `x-*` keys (the place for anchors and notes); aliases stay shared."""
    memo = {} if memo is None else memo
    if isinstance(node, dict):
        if id(node) in memo:
            return memo[id(node)]
        keep_all = parent_key in _DATA_MAPS
        out: Any = {k: _strip_extensions(v, str(k), memo) for k, v in node.items()
                    if keep_all or not (isinstance(k, str) and k.startswith("x-"))}
        memo[id(node)] = out
        return out
    if isinstance(node, list):
        return [_strip_extensions(v, parent_key, memo) for v in node]
    return node


def _image_path_bases(doc: dict[Any, Any], base: Path) -> dict[str, Path]:
    images = doc.get("images")
    if not isinstance(images, dict):
        return {}
    return {str(name): base for name, img in images.items()
            if isinstance(img, dict) and ("path" in img or "build" in img)}


def _volume_bases(doc: dict[Any, Any], base: Path) -> dict[str, Path]:
    boxes = doc.get("boxes")
    if not isinstance(boxes, dict):
        return {}
    return {str(name): base for name, box in boxes.items() if isinstance(box, dict) and "volumes" in box}


def _resolve_bind_sources(data: Any, bases: dict[str, Path]) -> None:
    """Bind sources (`./src`, `~/x`) are relative to the Boxfile that lists them."""
    boxes = data.get("boxes") if isinstance(data, dict) else None
    if not isinstance(boxes, dict):
        return
    for name, box in boxes.items():
        vols = box.get("volumes") if isinstance(box, dict) else None
        if not isinstance(vols, list) or str(name) not in bases:
            continue
        for i, v in enumerate(vols):
            parts = v.split(":") if isinstance(v, str) else []
            if parts and parts[0].startswith((".", "~")) and len(parts) in (2, 3) \
                    and (len(parts) == 2 or parts[2] in ("ro", "rw")):  # bad ones keep their text
                vols[i] = ":".join([_host_path(parts[0], bases[str(name)]), *parts[1:]])
            elif isinstance(v, dict) and v.get("type") == "bind" and isinstance(v.get("source"), str) \
                    and v["source"].startswith((".", "~")):
                v["source"] = _host_path(v["source"], bases[str(name)])


def _host_path(src: str, base: Path) -> str:
    return str(Path(src).expanduser() if src.startswith("~") else (base / src).absolute())


def _resolve_paths(data: Any, bases: dict[str, Path]) -> None:
    """Image paths and build contexts are relative to the Boxfile that names them
    (after interpolation, so `${IMAGES}/tools` works too)."""
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, dict):
        return
    for name, img in images.items():
        if isinstance(img, dict) and isinstance(img.get("path"), str) and img["path"] and str(name) in bases:
            img["path"] = str((bases[str(name)] / img["path"]).absolute())
        build = img.get("build") if isinstance(img, dict) else None
        if isinstance(build, dict) and isinstance(build.get("context"), str) and build["context"] \
                and str(name) in bases:
            build["context"] = _host_path(build["context"], bases[str(name)])


def _merge(base: Any, over: Any) -> Any:
    """Compose-style: mappings merge deeply, anything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    return over


