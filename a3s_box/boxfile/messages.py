"""Pydantic's validation errors, worded for people and tied to a path in the file."""
from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails

PathItem = str | int

_TYPE_WORDS = {
    "dict_type": "must be a mapping (key: value)",
    "model_type": "must be a mapping (key: value)",
    "model_attributes_type": "must be a mapping (key: value)",
    "list_type": "must be a list",
    "string_type": "must be a string",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "path_type": "must be a path",
    "none_required": "must be empty",
}


@dataclass(frozen=True)
class Issue:
    path: tuple[PathItem, ...]
    message: str
    at_key: bool = False  # place the problem at the key, not its value


def _unwrap(tp: Any) -> Any:
    """The model, dict or list type behind Optional/Annotated wrappers."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
            if len(args) != 1:
                return tp
        else:
            return tp


def _keys_at(root: type[BaseModel], path: tuple[PathItem, ...]) -> list[str]:
    tp: Any = root
    items = list(path)
    while items:
        tp = _unwrap(tp)
        item = items.pop(0)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = next((f for n, f in tp.model_fields.items() if (f.alias or n) == item), None)
            if field is None:
                return []
            tp = field.annotation
        elif typing.get_origin(tp) in (dict, list):
            tp = typing.get_args(tp)[-1]
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or n for n, f in tp.model_fields.items() if not f.exclude]
    return []


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def issue_from(err: ErrorDetails, root: type[BaseModel]) -> Issue:
    loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
    # Drop pydantic's union/validator branch names (they are not in the file).
    path: list[PathItem] = []
    for x in loc:
        if isinstance(x, str) and (x.startswith(("list[", "dict[", "function-")) or x in ("str", "int")):
            continue
        path.append(x)
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if path and path[-1] == "[key]":
        path.pop()
        name = path[-1] if path else ""
        return Issue(tuple(path), _name_message(str(name), err), at_key=True)
    if kind == "extra_forbidden":
        key = str(path[-1])
        allowed = _keys_at(root, tuple(path[:-1]))
        hint = did_you_mean(key, allowed)
        if not hint and allowed:
            hint = f" (allowed: {', '.join(allowed)})"
        return Issue(tuple(path), f"unknown key '{key}'{hint}", at_key=True)
    if kind == "missing":  # placed at the key of the mapping that lacks it
        return Issue(tuple(path[:-1]), f"missing required key '{path[-1]}'", at_key=True)
    if kind in _TYPE_WORDS:
        return Issue(tuple(path), _TYPE_WORDS[kind] + _got(err))
    if kind in ("literal_error", "enum"):
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        if "," not in expected:
            return Issue(tuple(path), f"must be {expected}" + _got(err))
        return Issue(tuple(path), f"must be one of: {expected}" + _got(err))
    if kind == "string_pattern_mismatch":
        wording = _PATTERN_WORDS.get(str(ctx.get("pattern")))
        if wording:
            return Issue(tuple(path), wording + _got(err))
        return Issue(tuple(path), f"'{err['input']}' is not a valid name: lowercase letters, digits "
                                  "and '-', starting and ending with a letter or digit")
    if kind in ("greater_than_equal", "greater_than"):
        return Issue(tuple(path), f"must be at least {ctx.get('ge', ctx.get('gt'))}" + _got(err))
    if kind in ("less_than_equal", "less_than"):
        return Issue(tuple(path), f"must be at most {ctx.get('le', ctx.get('lt'))}" + _got(err))
    if kind in ("too_short",):
        return Issue(tuple(path), "must not be empty")
    if kind == "string_too_short":
        return Issue(tuple(path), "must not be empty")
    if kind == "string_too_long":
        return Issue(tuple(path), f"must be at most {ctx.get('max_length')} characters")
    if kind == "value_error":
        msg = str(ctx.get("error", err["msg"]))
        return Issue(tuple(path), msg)
    if kind == "literal_error":
        return Issue(tuple(path), err["msg"])
    return Issue(tuple(path), err["msg"][0].lower() + err["msg"][1:])


# Patterns that are not names (names keep the wording above), by the pattern itself
_PATTERN_WORDS = {
    r"^[0-9]{1,10}(:[0-9]{1,10})?$": "must be a numeric UID or UID:GID, e.g. 1000:1000",
    r"^/": "must be an absolute path",
}


def _name_message(name: str, err: ErrorDetails) -> str:
    if err["type"] == "string_pattern_mismatch" and "_" in str((err.get("ctx") or {}).get("pattern")):
        return (f"'{name}' is not a valid environment variable name: letters, digits and '_', "
                "not starting with a digit")
    if err["type"] == "string_pattern_mismatch":
        return (f"'{name}' is not a valid name: lowercase letters, digits and '-', "
                "starting and ending with a letter or digit")
    if err["type"] == "string_too_long":
        return f"'{name}' is too long: names have at most 63 characters"
    if err["type"] == "string_type":
        return f"the key {name} must be a name, not {'nothing' if name == 'None' else 'a number'}"
    return f"'{name}': {err['msg']}"


def _got(err: ErrorDetails) -> str:
    value = err.get("input")
    if isinstance(value, (dict, list)) or value is None:
        kind = "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list) else "nothing"
        return f", not {kind}"
    text = repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    return f", not {text}" if len(text) < 40 else ""
