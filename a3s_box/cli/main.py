"""The `box` command: its global options, the *_cmds modules whose commands it has,
and the one way out of every command (main)."""
from __future__ import annotations

import os
import stat
import sys
import traceback
from pathlib import Path
from typing import Protocol

import click

from a3s_box.cli import (box_cmds, boxfile_cmds, build_cmds, files_cmds, host_cmds, image_cmds,
                         serve_cmds, snapshot_cmds)
from a3s_box.cli.context import CliContext
from a3s_box.disks.space import disk_full, free_bytes, is_full
from a3s_box.errors import BoxError
from a3s_box.home import Home
from a3s_box.version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", envvar="A3S_BOX_HOME", type=click.Path(file_okay=False),
              help="State and cache folder [env A3S_BOX_HOME; default ~/.local/share/a3s-box].")
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table",
              help="Format of listings.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.version_option(__version__, prog_name="box")
@click.pass_context
def cli(ctx: click.Context, home: str | None, output: str, quiet: bool) -> None:
    """a3s-box: AI agents in hardware-isolated microVMs, declared in a Boxfile."""
    ctx.obj = CliContext(home=Home.resolve(home), output=output, quiet=quiet)


class CommandModule(Protocol):
    """A *_cmds module: it owns its commands (click objects at its top level) and lists
    them in COMMANDS."""

    COMMANDS: tuple[click.Command, ...]


# Every command module, named once. Imported, not looked up by name: a missing module is an
# import error and one without COMMANDS a mypy error, never a command quietly gone.
COMMAND_MODULES: tuple[CommandModule, ...] = (
    boxfile_cmds, image_cmds, box_cmds, host_cmds, files_cmds, snapshot_cmds, serve_cmds, build_cmds)

for _module in COMMAND_MODULES:
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """The console script. Every way out is a message and an exit code, never a
    traceback: a3s-box's own errors as they are, the OS's with the path they name, and
    anything else as an internal error (A3S_BOX_DEBUG=1 shows its traceback)."""
    try:
        code = cli.main(args=argv, prog_name="box", standalone_mode=False)
        if isinstance(code, int) and code:  # click hands back ctx.exit(N) in this mode
            sys.exit(code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except BoxError as e:
        click.echo(f"error: {e}" if e.exit_code != 2 else str(e), err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as e:
        _debug()
        full = _full_disk(e)
        if full:
            click.echo(f"error: {full}", err=True)
            sys.exit(1)
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"error: {where}{e.strerror or e}", err=True)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - the last resort: a bug, said as one
        _debug()
        click.echo(f"error: internal error ({type(e).__name__}: {e}); this is a bug in a3s-box, "
                   "please report it with the output of A3S_BOX_DEBUG=1 box ...", err=True)
        sys.exit(70)  # EX_SOFTWARE


def _full_disk(e: OSError) -> str:
    """An ENOSPC no edge translated, said as every full disk is (the folder and what is
    free) when it is known where it happened: the file it names, or standard output
    redirected to a file on a disk that is full now (`box logs x > f`). "" otherwise."""
    if not is_full(e):
        return ""
    if e.filename:
        path = Path(os.fsdecode(e.filename))
        return str(disk_full(str(path), path.parent))
    try:
        if stat.S_ISREG(os.fstat(1).st_mode):
            out = Path(os.readlink("/proc/self/fd/1"))
            free = free_bytes(out.parent)
            if free is not None and free < 1 << 20:  # full: it is the one that failed
                return str(disk_full(f"standard output ({out})", out.parent, free=free))
    except OSError:
        pass
    return ""


def _debug() -> None:
    if os.environ.get("A3S_BOX_DEBUG"):
        traceback.print_exc()
