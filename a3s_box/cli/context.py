"""What every `box` subcommand gets: the home folder, the global output options, and
the one way to the home's state, `ctx.host()` (a typed `Host`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import click

from a3s_box.home import Home

if TYPE_CHECKING:
    from a3s_box.orchestrator.host import Host

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class CliContext:
    home: Home
    output: str  # "table" (default for people), "json" or "yaml"
    quiet: bool

    def host(self) -> "Host":
        """The Host over this home, to use in a `with` (it closes the state store).
        Imported on use: `box --help` and `box validate` should not pay for it."""
        from a3s_box.orchestrator.host import Host

        return Host(self.home)


def pass_cli(f: F) -> F:
    """Decorator: call the command with the CliContext as first argument."""
    return click.make_pass_decorator(CliContext)(f)  # type: ignore[return-value]
