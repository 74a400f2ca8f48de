"""Stage 1: bytes to YAML data, refusing what is not a sane Boxfile before parsing it.

Two parsers: PyYAML's libyaml-backed loader for the common, valid case (fast), and
ruamel.yaml's round-trip loader, which keeps line/column of every key and value, run
only when a problem needs placing. Both refuse duplicate keys.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]  # types-PyYAML is optional

from a3s_box.errors import Problem

MAX_BYTES = 1 << 20  # 1 MiB: a Boxfile of thousands of boxes is ~300 KiB
MAX_NODES = 200_000  # after alias expansion; a billion-laughs bomb blows far past this
MAX_DEPTH = 64
_LEADING_TAB = re.compile(r"^( *)\t", re.MULTILINE)


class SourceProblem(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(str(problem))


@dataclass(frozen=True)
class Source:
    path: Path
    text: str


def read(path: Path, given: bytes | None = None) -> Source:
    """PATH's text as a Source; GIVEN: its bytes, already in hand (an API request's body)."""
    name = str(path)
    try:
        if given is not None:
            raw = given[:MAX_BYTES + 1]
        else:
            with open(path, "rb") as f:
                raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise SourceProblem(Problem(name, 0, 0, "", "no such file")) from None
    except IsADirectoryError:
        raise SourceProblem(Problem(name, 0, 0, "", "is a folder, not a Boxfile")) from None
    except OSError as e:
        raise SourceProblem(Problem(name, 0, 0, "", f"cannot read: {e.strerror}")) from None
    if len(raw) > MAX_BYTES:
        raise SourceProblem(Problem(name, 0, 0, "", f"is larger than {MAX_BYTES >> 20} MiB; "
                                    "a Boxfile that big is surely not one (split it with several -f)"))
    if b"\0" in raw:
        raise SourceProblem(Problem(name, 0, 0, "", "is a binary file, not a YAML Boxfile"))
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SourceProblem(Problem(name, line, 1, "", "is not UTF-8 text")) from None
    m = _LEADING_TAB.search(text)
    if m:
        line = text.count("\n", 0, m.start()) + 1
        raise SourceProblem(Problem(name, line, len(m.group(1)) + 1, "",
                                    "tab character in indentation: YAML indents with spaces"))
    return Source(path, text)


class _FastLoader(yaml.CSafeLoader):  # type: ignore[misc,unused-ignore]
    """libyaml parsing with YAML 1.2 core-schema scalars (as editors and ruamel.yaml read
    them: `yes`, `on`, `1:30` and dates stay strings) and duplicate keys refused (PyYAML
    silently keeps the last)."""


# YAML 1.2 core schema, replacing PyYAML's YAML 1.1 resolvers.
_FastLoader.yaml_implicit_resolvers = {}
for _tag, _regexp, _first in [
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    ("float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
              r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789."),
    ("merge", r"^(?:<<)$", "<"),
]:
    _FastLoader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_regexp), list(_first))


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(node.value)
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text)  # leading zeros are decimal in YAML 1.2


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    # Duplicates among the keys written here; keys brought in by a `<<` merge may be
    # overridden, that is what merge keys are for.
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark) from None
        seen.add(key)
    _flatten_merges(node)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


def _flatten_merges(node: yaml.MappingNode) -> None:
    """Resolve `<<` merge keys in place, as the YAML merge-key spec says: keys written in
    the mapping win, then the merged mappings in the order listed (the first wins).
    Done here rather than with PyYAML's flatten_mapping, whose precedence changed
    between releases. The merged pairs go first, so later assignments override them."""
    own: list[tuple[yaml.Node, yaml.Node]] = []
    merged: list[tuple[yaml.Node, yaml.Node]] = []
    for key_node, value_node in node.value:
        if key_node.tag != "tag:yaml.org,2002:merge":
            own.append((key_node, value_node))
            continue
        sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for sub in reversed(sources):
            if not isinstance(sub, yaml.MappingNode):
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"a merge key (<<) takes a mapping or a list of mappings, not {sub.id}",
                    sub.start_mark)
            _flatten_merges(sub)
            merged.extend(sub.value)
    node.value = merged + own


_FastLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_FastLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

_OPEN = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_CLOSE = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


def _check_shape(src: Source, loader: type[Any] = _FastLoader) -> None:
    """Refuse deep nesting and alias bombs from the event stream, before anything is
    built: libyaml's parser keeps its own stack, but the composer after it recurses on
    the C stack (and would crash). Each anchor's expanded size and height is recorded
    when its node ends, so an alias costs O(1) to measure and the problem is placed at
    the alias that crosses the limit."""
    anchored: dict[str, tuple[int, int]] = {}  # anchor -> (values, height) once expanded
    stack: list[list[Any]] = []  # open collections: [values, height of tallest child, anchor]
    total = 0

    def refuse(event: Any, message: str) -> SourceProblem:
        mark = event.start_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        return SourceProblem(Problem(str(src.path), line, col, "", message))

    for event in yaml.parse(src.text, Loader=loader):
        if isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent)):
            values, height = (1, 0) if isinstance(event, yaml.ScalarEvent) \
                else anchored.get(event.anchor or "", (1, 0))
            if isinstance(event, yaml.ScalarEvent) and event.anchor:
                anchored[event.anchor] = (1, 0)
            if len(stack) + height > MAX_DEPTH:
                raise refuse(event, f"nested more than {MAX_DEPTH} levels deep through aliases; refused")
        elif isinstance(event, _OPEN):
            stack.append([1, 0, event.anchor])
            if len(stack) > MAX_DEPTH:
                raise refuse(event, f"nested more than {MAX_DEPTH} levels deep; refused")
            values = 1
            total += 1
            continue
        elif isinstance(event, _CLOSE):
            values, child_height, anchor = stack.pop()
            height = child_height + 1
            if anchor:
                anchored[anchor] = (values, height)
            if stack:
                stack[-1][0] += values
                stack[-1][1] = max(stack[-1][1], height)
            continue
        else:
            continue
        total += values
        if stack:
            stack[-1][0] += values
            stack[-1][1] = max(stack[-1][1], height)
        if total > MAX_NODES:
            raise refuse(event, f"expands to more than {MAX_NODES} values through aliases "
                                "(a YAML bomb?); refused")


def parse_fast(src: Source) -> Any:
    """Plain data, or SourceProblem for syntax errors and duplicate keys (already placed)."""
    try:
        try:
            _check_shape(src)
        except yaml.MarkedYAMLError as e:
            # Newer libyaml refuses deep flow nesting itself, while scanning ahead of the
            # events we count; the pure-Python parser does not, so it places the problem
            # where our own limit is crossed.
            if "nesting depth" not in str(e.problem):
                raise
            _check_shape(src, yaml.SafeLoader)
            raise
        data = yaml.load(src.text, Loader=_FastLoader)  # noqa: S506 - a safe loader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        message = e.problem or str(e)
        if e.context and "while" not in e.context:
            message = f"{e.context} {message}"
        raise SourceProblem(Problem(str(src.path), line, col, "", f"YAML: {message}")) from e
    except yaml.YAMLError as e:
        raise SourceProblem(Problem(str(src.path), 0, 0, "", f"YAML: {e}")) from e
    return data


def parse_positions(src: Source) -> Any:
    """The same document with positions (ruamel.yaml round-trip nodes)."""
    from ruamel.yaml import YAML

    y = YAML(typ="rt", pure=True)
    y.allow_duplicate_keys = True  # already refused by parse_fast
    return y.load(src.text)
