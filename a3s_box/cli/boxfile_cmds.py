"""`box validate` and `box schema`."""
from __future__ import annotations

import sys

import click

from a3s_box.cli.context import CliContext, pass_cli


@click.command("validate")
@click.option("-f", "--file", "files", multiple=True, type=click.Path(dir_okay=False),
              help="Boxfile (repeat to merge several, later ones win). Default: Boxfile.yaml")
@pass_cli
def validate_cmd(ctx: CliContext, files: tuple[str, ...]) -> None:
    """Check Boxfile(s): every problem as FILE:LINE:COL: path: message, exit 2."""
    from a3s_box.boxfile import load

    bf = load(list(files) or ["Boxfile.yaml"])
    names = ", ".join(files or ("Boxfile.yaml",))
    click.echo(f"{names}: ok ({len(bf.images)} images, {len(bf.boxes)} boxes, {len(bf.pools)} pools)")


@click.command("schema")
def schema_cmd() -> None:
    """Print the Boxfile JSON Schema (for editors and CI validators)."""
    from a3s_box.schema import schema_text

    sys.stdout.write(schema_text())


COMMANDS: tuple[click.Command, ...] = (validate_cmd, schema_cmd)
