"""`box cp` (files in and out of a running box, like `docker cp`) and `box volume`."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from a3s_box.cli.context import CliContext, pass_cli
from a3s_box.cli.output import emit, emit_yaml, output_option
from a3s_box.units import format_mi, format_size

if TYPE_CHECKING:
    from a3s_box.orchestrator.volumes import Volumes
    from a3s_box.volumes import VolumeInfo


def _box_path(spec: str) -> tuple[str, str] | None:
    """BOX:/path -> (box, path); a host path (./x, /x, C:) -> None."""
    if spec.startswith((".", "/")) or ":" not in spec:
        return None
    box, path = spec.split(":", 1)
    return (box, path) if box else None


@click.command("cp")
@click.argument("src")
@click.argument("dst")
@pass_cli
def cp_cmd(c: CliContext, src: str, dst: str) -> None:
    """Copy files or trees between the host and a running box.

    \b
      box cp ./dir coder:/workspace      into /workspace when it is a folder, else as it
      box cp coder:/var/log/app.log .    out of the box
      box cp - coder:/in                 a tar stream on stdin, extracted into /in
      box cp coder:/out -                /out as a tar stream on stdout

    Modes, symlinks (never followed), empty folders and mtimes are kept; files are
    streamed, whatever their size; nothing partial is left at the destination.
    """
    from a3s_box.errors import BoxError
    from a3s_box.files import BoxFiles

    s, d = _box_path(src), _box_path(dst)
    if (s is None) == (d is None):
        raise click.UsageError("one of SRC and DST must be BOX:PATH, the other a host path or -")
    box = (s or d)[0]  # type: ignore[index]
    with c.host() as host:
        row = host.find(box)
        with host.client(row) as client:
            files = BoxFiles(client, row.name)
            if d is not None:
                if src == "-":
                    files.upload_tar(sys.stdin.buffer, d[1])
                else:
                    where = files.upload(Path(src), d[1])
                    if not c.quiet:
                        click.echo(f"{src} -> {row.name}:{where}", err=True)
            else:
                assert s is not None
                if dst == "-":
                    files.download_tar(s[1], sys.stdout.buffer)
                    sys.stdout.buffer.flush()
                else:
                    if not Path(dst).parent.exists() and not Path(dst).exists():
                        raise BoxError(f"{dst}: no such folder on the host")
                    out = files.download(s[1], Path(dst))
                    if not c.quiet:
                        click.echo(f"{row.name}:{s[1]} -> {out}", err=True)


@click.group("volume")
def volume_group() -> None:
    """Named volumes: disks kept across recreate and delete."""


@volume_group.command("ls")
@click.option("-p", "--project", default=None, help="Only this project's volumes.")
@output_option
@pass_cli
def volume_ls(c: CliContext, project: str | None, output: str | None) -> None:
    """List named volumes with their size and what their disk holds."""
    with c.host() as host:
        volumes = host.volumes
        rows = [_volume_row(volumes, v) for v in volumes.list(project)]
    emit(rows, (("project", "PROJECT"), ("name", "NAME"), ("size", "SIZE"), ("used", "USED"),
                ("in_use_by", "IN USE BY")), output or c.output)


@volume_group.command("inspect")
@click.argument("name")
@click.option("-p", "--project", default=None)
@output_option
@pass_cli
def volume_inspect(c: CliContext, name: str, project: str | None, output: str | None) -> None:
    """One volume: its disk, size, use and the boxes mounting it."""
    with c.host() as host:
        row = _volume_row(host.volumes, host.volumes.find(name, project), raw=True)
    if (output or c.output) == "json":
        click.echo(json.dumps(row, indent=2, sort_keys=True))
    else:
        emit_yaml(row)


@volume_group.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.option("-p", "--project", default=None)
@pass_cli
def volume_rm(c: CliContext, names: tuple[str, ...], project: str | None) -> None:
    """Remove named volumes and their data (refused while a box uses one)."""
    with c.host() as host:
        for n in names:
            v = host.volumes.remove(n, project)
            click.echo(f"{v.name}: removed")



def _volume_row(volumes: "Volumes", v: "VolumeInfo", raw: bool = False) -> dict[str, Any]:
    row: dict[str, Any] = dict(v.to_json())
    row["in_use_by"] = ", ".join(volumes.users(v))
    if not raw:
        row["size"], row["used"] = format_size(v.size), format_mi(v.used)
    return row


COMMANDS: tuple[click.Command, ...] = (cp_cmd, volume_group)
