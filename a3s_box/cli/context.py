"""What every `box` subcommand gets: the home folder and the global output options."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import click

from a3s_box.home import Home

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class CliContext:
    home: Home
    output: str  # "table" (default for people), "json" or "yaml"
    quiet: bool


def pass_cli(f: F) -> F:
    """Decorator: call the command with the CliContext as first argument."""
    return click.make_pass_decorator(CliContext)(f)  # type: ignore[return-value]
