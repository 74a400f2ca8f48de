"""Stage 2: `${VAR}` interpolation from the environment, in string values only.

    ${VAR}            the variable; unset is an error (safer than an empty string)
    ${VAR:-default}   default when unset or empty      ${VAR-default}  when unset
    ${VAR:?message}   error with message when unset or empty
    $$                a literal $
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

PathItem = str | int
_TOKEN = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*)|(:?\?)([^}]*))?\}|(\{[^}]*\}?))")


class InterpolationError(Exception):
    def __init__(self, path: tuple[PathItem, ...], message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(message)


def interpolate(data: Any, env: Mapping[str, str]) -> tuple[Any, list[InterpolationError]]:
    """A copy of data with variables substituted, and every problem found."""
    errors: list[InterpolationError] = []

    def sub(text: str, path: tuple[PathItem, ...]) -> str:
        if "$" not in text:
            return text

        def one(m: re.Match[str]) -> str:
            escaped, name, dflt_op, dflt, err_op, err_msg, bad = m.groups()
            if escaped:
                return "$"
            if bad is not None:
                errors.append(InterpolationError(path, f"invalid interpolation ${bad}: use ${{NAME}}, "
                                                       "${NAME:-default} or $$ for a literal $"))
                return m.group(0)
            value = env.get(name)
            if dflt_op is not None:
                unset = value is None or (dflt_op == ":-" and value == "")
                return dflt if unset else str(value)
            if err_op is not None:
                if value is None or (err_op == ":?" and value == ""):
                    errors.append(InterpolationError(path, f"${{{name}}}: {err_msg or 'is not set'}"))
                    return ""
                return value
            if value is None:
                errors.append(InterpolationError(path, f"${{{name}}} is not set in the environment "
                                                       f"(give a default: ${{{name}:-value}})"))
                return ""
            return value

        return _TOKEN.sub(one, text)

    memo: dict[int, Any] = {}

    def walk(node: Any, path: tuple[PathItem, ...]) -> Any:
        if isinstance(node, str):
            return sub(node, path)
        if isinstance(node, (dict, list)):
            if id(node) in memo:  # an alias: substitute once, share the result
                return memo[id(node)]
            if isinstance(node, dict):
                out: Any = {k: walk(v, path + (k,)) for k, v in node.items()}
            else:
                out = [walk(v, path + (i,)) for i, v in enumerate(node)]
            memo[id(node)] = out
            return out
        return node

    return walk(data, ()), errors
