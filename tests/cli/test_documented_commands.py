"""Every `box` command the README and docs/ print parses as printed: the command
exists and takes those options and arguments (a renamed flag or a removed command
fails here, at the doc's FILE:LINE). What the commands do is tested elsewhere: the
README's tour runs in tests/e2e/test_demo.py and scripts/demo.sh."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from a3s_box.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def documented() -> list[tuple[str, list[str]]]:
    """(FILE:LINE, argv) for each `box ...` in a fenced code block (chains split)."""
    found = []
    for doc in DOCS:
        fenced = False
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            if not fenced:
                continue
            text = re.sub(r"^\s*\$\s*", "", line)
            try:
                words = shlex.split(text, comments=True)
            except ValueError:
                continue
            cmd: list[str] = []
            for w in words + ["&&"]:
                if w in ("&&", "||", "|", ";", ">", ">>", "<", "2>"):  # a redirect ends it too
                    if cmd[:1] == ["box"] or cmd[:2] == ["sudo", "box"]:
                        found.append((f"{doc.relative_to(ROOT)}:{n}", cmd[cmd.index("box") + 1:]))
                    cmd = []
                elif w.endswith(";"):
                    cmd.append(w[:-1])
                else:
                    cmd.append(w)
    return found


def test_the_docs_show_commands() -> None:
    assert len(documented()) > 40  # the scan itself works


@pytest.mark.parametrize("where,argv", [pytest.param(w, a, id=w) for w, a in documented()])
def test_a_documented_command_parses(where: str, argv: list[str]) -> None:
    ctx = cli.make_context("box", list(argv), resilient_parsing=False)
    group: click.Command = cli
    args = _rest(ctx)
    while isinstance(group, click.Group) and args:
        sub = group.get_command(ctx, args[0])
        assert sub is not None, f"{where}: box {' '.join(argv)}: no command {args[0]!r}"
        try:
            ctx = sub.make_context(args[0], args[1:], parent=ctx)
        except click.UsageError as e:
            pytest.fail(f"{where}: box {' '.join(argv)}: {e.format_message()}")
        group = sub
        args = _rest(ctx) if isinstance(sub, click.Group) else []


def _rest(ctx: click.Context) -> list[str]:
    """A group's words after its own options: the subcommand and its arguments."""
    return [*ctx._protected_args, *ctx.args]  # click keeps them here until it invokes
