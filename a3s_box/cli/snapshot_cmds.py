"""`box snapshot`: the templates boxes start from and the disk layers forks share
(ls, rm, prune). Which boxes use one is read from their disks' backing chains."""
from __future__ import annotations

import time

import click

from a3s_box.cli.context import CliContext, pass_cli
from a3s_box.cli.output import emit, output_option


@click.group("snapshot")
def snapshot_group() -> None:
    """Snapshot templates (boxes start as clones of them) and fork layers."""


@snapshot_group.command("ls")
@output_option
@pass_cli
def snapshot_ls(c: CliContext, output: str | None) -> None:
    """Templates and fork layers, their size on the host and the boxes on them."""
    with c.host() as host:
        snapshots = host.snapshots.list()
    rows = [{"key": s.key, "kind": s.kind, "image": s.image[:19], "source": s.source,
             "vcpus": s.vcpus, "memory_mib": s.memory_mib, "accel": s.accel, "bytes": s.bytes,
             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.created)),
             "boxes": ", ".join(s.boxes)} for s in snapshots]
    emit(rows, (("key", "KEY"), ("kind", "KIND"), ("image", "IMAGE"), ("vcpus", "VCPUS"),
                ("memory_mib", "MEMORY MiB"), ("bytes", "BYTES"), ("boxes", "BOXES")),
         output or c.output)


@snapshot_group.command("rm")
@click.argument("keys", nargs=-1, required=True)
@pass_cli
def snapshot_rm(c: CliContext, keys: tuple[str, ...]) -> None:
    """Remove templates or fork layers (by key or a unique prefix) no box sits on."""
    with c.host() as host:
        host.snapshots.remove(keys, on_removed=lambda key: click.echo(f"{key[:12]}: removed"))


@snapshot_group.command("prune")
@pass_cli
def snapshot_prune(c: CliContext) -> None:
    """Remove every template and fork layer no box's disk sits on."""
    with c.host() as host:
        host.snapshots.prune(on_removed=lambda key: click.echo(f"{key[:12]}: removed"))


COMMANDS: tuple[click.Command, ...] = (snapshot_group,)
