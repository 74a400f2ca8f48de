"""`box image`: pull, import, ls, inspect, export, rm, prune."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from a3s_box.cli.context import CliContext, pass_cli
from a3s_box.cli.output import emit, output_option
from a3s_box.units import format_bytes, parse_size_arg

if TYPE_CHECKING:
    from a3s_box.image import ImageRecord


def _row(r: "ImageRecord") -> dict[str, Any]:
    return {"name": r.name, "digest": r.digest, "size": r.size,
            "last_used": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.last_used))}


@click.group("image")
def image_group() -> None:
    """Pull, import and manage OCI images."""


@image_group.command("pull")
@click.argument("ref")
@pass_cli
def image_pull(c: CliContext, ref: str) -> None:
    """Pull REF (host[:port]/repo:tag, repo@sha256:..., or a Docker Hub name)."""
    with c.host() as host:
        r = host.image_catalog.pull(ref, progress=not c.quiet)
    click.echo(f"{r.name} {r.digest}")


@image_group.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--tag", "-t", default=None, help="Name to give the image in the store.")
@pass_cli
def image_import(c: CliContext, path: Path, tag: str | None) -> None:
    """Import an OCI image layout folder or a `docker save` tarball."""
    with c.host() as host:
        r = host.image_catalog.import_path(path, tag=tag)
    click.echo(f"{r.name} {r.digest}")


@image_group.command("ls")
@output_option
@pass_cli
def image_ls(c: CliContext, output: str | None) -> None:
    """List images: name, digest, size, last used."""
    with c.host() as host:
        rows = [_row(r) for r in host.image_catalog.list()]
    fmt = output or c.output
    if fmt == "table":
        rows = [{**r, "digest": r["digest"][7:19], "size": format_bytes(r["size"])} for r in rows]
    emit(rows, [("name", "NAME"), ("digest", "DIGEST"), ("size", "SIZE"),
                ("last_used", "LAST USED")], fmt)


@image_group.command("inspect")
@click.argument("name")
@pass_cli
def image_inspect(c: CliContext, name: str) -> None:
    """An image's record, its OCI config (labels included) and the box defaults its
    dev.a3s.box.* labels give (JSON)."""
    import json

    with c.host() as host:
        r = host.image_catalog.get(name)
        if r is None:
            raise click.ClickException(f"image {name}: no such image in the store (see `box image ls`)")
        doc = {**_row(r), **host.image_catalog.inspect(r)}
    click.echo(json.dumps(doc, indent=2, sort_keys=True))


@image_group.command("export")
@click.argument("name")
@click.argument("dest", type=click.Path(path_type=Path))
@pass_cli
def image_export(c: CliContext, name: str, dest: Path) -> None:
    """Write image NAME as an OCI image layout folder DEST (skopeo, umoci and others read it)."""
    with c.host() as host:
        r = host.image_catalog.get(name)
        if r is None:
            raise click.ClickException(f"image {name}: no such image in the store (see `box image ls`)")
        host.image_catalog.export(r, dest)
    click.echo(f"exported {r.name} to {dest}")


@image_group.command("rm")
@click.argument("names", nargs=-1, required=True)
@pass_cli
def image_rm(c: CliContext, names: tuple[str, ...]) -> None:
    """Remove images by name or digest."""
    with c.host() as host:
        for n in names:
            for r in host.image_catalog.remove(n):
                click.echo(f"removed {r.name}")


@image_group.command("prune")
@click.option("--max-size", default=None, metavar="SIZE",
              help="Instead of removing every unused image, evict least recently used "
                   "ones until the store fits in SIZE (e.g. 10Gi, 500M).")
@pass_cli
def image_prune(c: CliContext, max_size: str | None) -> None:
    """Remove images no box uses, and every blob no image needs."""
    with c.host() as host:
        gone = host.image_catalog.prune(None if max_size is None else _max_size(max_size))
    for r in gone:
        click.echo(f"removed {r.name}")



def _max_size(text: str) -> int:
    """--max-size in bytes; a click.BadParameter naming the text otherwise."""
    try:
        return parse_size_arg(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--max-size") from None


COMMANDS: tuple[click.Command, ...] = (image_group,)
