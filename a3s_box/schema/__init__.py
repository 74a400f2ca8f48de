"""The Boxfile JSON Schema, generated from the pydantic models.

`python -m a3s_box.schema > schema/boxfile.schema.json` regenerates the committed copy
(a test fails when it is stale). Editors (yaml-language-server) and other validators
(ajv) use it to flag what `box validate` would.
"""
from __future__ import annotations

import json
from typing import Any

SCHEMA_ID = "https://a3s.dev/schema/boxfile.schema.json"


def boxfile_schema() -> dict[str, Any]:
    from a3s_box.boxfile.model import Boxfile

    # draft-07 with `definitions`: what yaml-language-server and ajv's default class
    # both read without extra setup.
    schema = Boxfile.model_json_schema(by_alias=True, mode="validation",
                                       ref_template="#/definitions/{model}")
    schema["definitions"] = schema.pop("$defs")
    _factory_defaults(schema)
    _close_named_maps(schema)
    _allow_extensions(schema)
    props = schema["properties"]
    props["apiVersion"]["const"] = "box.a3s.dev/v1"
    for key in ("images", "boxes", "pools"):  # `boxes:` left empty is no boxes
        prop = props[key]
        shape = {k: prop.pop(k) for k in ("type", "patternProperties", "additionalProperties")}
        prop["anyOf"] = [shape, {"type": "null"}]
    _drop_formats(schema)
    depends_on = schema["definitions"]["BoxDef"]["properties"]["depends_on"]
    for branch in depends_on["anyOf"]:
        if branch.get("type") == "array":
            branch["uniqueItems"] = True
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": SCHEMA_ID,
        "title": "a3s-box Boxfile",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def _close_named_maps(node: Any) -> None:
    """Maps keyed by names (images, boxes, pools, depends_on): a key that breaks the
    name rule is an error in the schema too, not an unchecked extra property. Names
    never start with `x-`: those keys are extensions, ignored like everywhere else."""
    if isinstance(node, dict):
        pats = node.get("patternProperties")
        if isinstance(pats, dict) and len(pats) == 1 and "additionalProperties" not in node:
            ((pattern, value),) = pats.items()
            node["patternProperties"] = {"^(?!x-)" + pattern.lstrip("^"): value}
            node.pop("propertyNames", None)
            node["additionalProperties"] = False
        for v in node.values():
            _close_named_maps(v)
    elif isinstance(node, list):
        for v in node:
            _close_named_maps(v)


def _factory_defaults(schema: dict[str, Any]) -> None:
    """Fields whose default comes from a factory get that default written out, so
    editors show it."""
    from pydantic import BaseModel

    from a3s_box.boxfile import model as m

    classes = {c.__name__: c for c in vars(m).values()
               if isinstance(c, type) and issubclass(c, BaseModel) and c.__module__ == m.__name__}
    targets = [("Boxfile", schema)] + list(schema.get("definitions", {}).items())
    for name, node in targets:
        cls = classes.get(name)
        if cls is None:
            continue
        for field_name, field in cls.model_fields.items():
            prop = node.get("properties", {}).get(field.alias or field_name)
            if prop is None or "default" in prop or field.default_factory is None:
                continue
            value = field.default_factory()  # type: ignore[call-arg]
            prop["default"] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _drop_formats(node: Any) -> None:
    """pydantic marks paths `format: path`, which no validator knows (ajv refuses it)."""
    if isinstance(node, dict):
        if node.get("format") == "path":
            del node["format"]
        for v in node.values():
            _drop_formats(v)
    elif isinstance(node, list):
        for v in node:
            _drop_formats(v)


def _allow_extensions(node: Any) -> None:
    """Every closed object also accepts `x-*` keys (anchors and notes live there),
    as the loader ignores them."""
    if isinstance(node, dict):
        if node.get("additionalProperties") is False:
            node.setdefault("patternProperties", {})["^x-"] = {}
        for v in node.values():
            _allow_extensions(v)
    elif isinstance(node, list):
        for v in node:
            _allow_extensions(v)


def schema_text() -> str:
    return json.dumps(boxfile_schema(), indent=2, sort_keys=True) + "\n"
