"""Listings as a table for people, or JSON / YAML for machines."""
from __future__ import annotations

import io
import json
import sys
from collections.abc import Sequence
from typing import Any

import click


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], fmt: str) -> None:
    """columns: (key, HEADER) pairs for the table form; JSON/YAML carry every key."""
    if fmt == "json":
        click.echo(json.dumps(list(rows), indent=2, sort_keys=True))
    elif fmt == "yaml":
        emit_yaml(list(rows))
    else:
        table(rows, columns)


def emit_yaml(data: Any) -> None:
    from ruamel.yaml import YAML

    y = YAML(typ="safe", pure=True)
    y.default_flow_style = False
    buf = io.StringIO()
    y.dump(data, buf)
    sys.stdout.write(buf.getvalue())


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    cells = [[h for _, h in columns]] + [
        ["" if r.get(k) is None else str(r.get(k)) for k, _ in columns] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def output_option(f: Any) -> Any:
    """A per-command -o that overrides the global one (`box ps -o json` reads naturally)."""
    return click.option("-o", "--output", "output", type=click.Choice(["table", "json", "yaml"]),
                        default=None, help="Output format (overrides the global -o).")(f)
