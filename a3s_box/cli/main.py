"""The `box` command: global options, and the subcommand groups each module registers."""
from __future__ import annotations

import sys

import click

from a3s_box import __version__
from a3s_box.cli.context import CliContext
from a3s_box.errors import BoxError
from a3s_box.home import Home


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


def _register() -> None:
    # Each module owns its commands; import here so `box --help` lists them all.
    import importlib

    for mod in ("a3s_box.cli.boxfile_cmds", "a3s_box.cli.image_cmds", "a3s_box.cli.box_cmds",
                "a3s_box.cli.host_cmds", "a3s_box.cli.files_cmds", "a3s_box.cli.snapshot_cmds",
                "a3s_box.cli.serve_cmds", "a3s_box.cli.build_cmds"):
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue  # not written yet
            raise
        m.register(cli)


_register()


def main() -> None:
    try:
        cli.main(standalone_mode=False)
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
