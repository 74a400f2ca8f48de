"""`box build`: the Boxfile's `build:` images, each RUN in a microVM, through the cache."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from a3s_box.cli.context import CliContext, pass_cli

if TYPE_CHECKING:
    from a3s_box.imagebuild.builder import StepEvent


def step_line(e: "StepEvent") -> str:
    """`[agent 3/9] RUN make` (CACHED when the build cache had it); FROM lines unnumbered."""
    where = f"[{e.stage}]" if not e.number else f"[{e.stage} {e.number}/{e.total}]"
    return f"{where} {e.text}" + ("  CACHED" if e.cached else "")


class StepPrinter:
    """Steps and the RUN output between them, on stderr (a line at a time, indented)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._partial = b""

    def event(self, e: "StepEvent") -> None:
        if not self.quiet:
            self._flush()
            click.echo(step_line(e), err=True)

    def output(self, data: bytes) -> None:
        if self.quiet:
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            sys.stderr.write("  | " + line.decode(errors="replace") + "\n")
        sys.stderr.flush()

    def _flush(self) -> None:
        if self._partial:
            sys.stderr.write("  | " + self._partial.decode(errors="replace") + "\n")
            self._partial = b""


@click.command("build")
@click.option("-f", "--file", "files", multiple=True, type=click.Path(dir_okay=False),
              help="Boxfile(s), merged in order [default: Boxfile.yaml].")
@click.option("-p", "--project", default=None, help="Project name (default: the Boxfile's).")
@click.option("--no-cache", is_flag=True, help="Run every step again, whatever the cache has.")
@click.argument("images", nargs=-1)
@pass_cli
def build_cmd(c: CliContext, files: tuple[str, ...], project: str | None, no_cache: bool,
              images: tuple[str, ...]) -> None:
    """Build the Boxfile's `build:` images (IMAGES: only these): each RUN in a microVM
    with the build's network policy, unchanged steps from the cache."""
    printer = StepPrinter(c.quiet)
    with c.host() as host:
        bf = host.load(list(files) or ["Boxfile.yaml"])
        with host.locked(on_wait=lambda: click.echo("waiting for another box command...", err=True)):
            results = host.build(bf, project, images, no_cache, printer.event, printer.output)
    printer._flush()
    if not results:
        click.echo("no build images in this Boxfile (images: NAME: {build: {context: ...}})", err=True)
        return
    for name, r in results:
        assert r.record is not None
        click.echo(f"built {name}: {r.record.name} {r.record.digest} ({r.cached} of {r.total} steps cached)")


COMMANDS: tuple[click.Command, ...] = (build_cmd,)
