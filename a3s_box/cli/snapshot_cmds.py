"""`box snapshot`: the templates boxes start from and the disk layers forks share
(ls, rm, prune). Which boxes use one is read from their disks' backing chains."""
from __future__ import annotations

import time
from typing import Any

import click

from a3s_box.cli.context import CliContext, pass_cli
from a3s_box.cli.output import emit, output_option


def _store_and_users(c: CliContext) -> tuple[Any, dict[str, list[str]]]:
    """The snapshot store, and folder name -> boxes whose disks sit on it."""
    from a3s_box.drivers.qemu.snapshot import TemplateStore
    from a3s_box.orchestrator.state import StateStore

    c.home.ensure()
    store = TemplateStore(c.home.cache)
    state = StateStore(c.home.state_db)
    try:
        disks = {r.name: c.home.box_dir(r.id) / "disk.qcow2" for r in state.boxes()}
    finally:
        state.close()
    return store, store.users(disks)


def register(cli: click.Group) -> None:
    @cli.group("snapshot")
    def snapshot() -> None:
        """Snapshot templates (boxes start as clones of them) and fork layers."""

    @snapshot.command("ls")
    @output_option
    @pass_cli
    def ls(c: CliContext, output: str | None) -> None:
        """Templates and fork layers, their size on the host and the boxes on them."""
        store, users = _store_and_users(c)
        rows = []
        for t in store.entries():
            rows.append({"key": t["key"], "kind": t["kind"],
                         "image": str(t.get("image", ""))[:19], "source": t.get("source", ""),
                         "vcpus": t.get("vcpus"), "memory_mib": t.get("memory_mib"),
                         "accel": t.get("accel"), "bytes": t["disk_and_memory_bytes"],
                         "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t.get("created", 0))),
                         "boxes": ", ".join(sorted(users.get(t["key"], [])))})
        emit(rows, (("key", "KEY"), ("kind", "KIND"), ("image", "IMAGE"), ("vcpus", "VCPUS"),
                    ("memory_mib", "MEMORY MiB"), ("bytes", "BYTES"), ("boxes", "BOXES")),
             output or c.output)

    @snapshot.command("rm")
    @click.argument("keys", nargs=-1, required=True)
    @pass_cli
    def rm(c: CliContext, keys: tuple[str, ...]) -> None:
        """Remove templates or fork layers (by key or a unique prefix) no box sits on."""
        from a3s_box.errors import BoxError

        store, users = _store_and_users(c)
        known = [t["key"] for t in store.entries()]
        for k in keys:
            match = [x for x in known if x.startswith(k)]
            if len(match) != 1:
                raise BoxError(f"snapshot {k}: {'no such snapshot' if not match else 'ambiguous prefix'} "
                               "(see `box snapshot ls`)")
            boxes = users.get(match[0], [])
            if boxes:
                raise BoxError(f"snapshot {match[0][:12]}: the disks of boxes {', '.join(sorted(boxes))} "
                               "sit on it; delete them first")
            store.remove(match[0])
            click.echo(f"{match[0][:12]}: removed")

    @snapshot.command("prune")
    @pass_cli
    def prune(c: CliContext) -> None:
        """Remove every template and fork layer no box's disk sits on."""
        store, users = _store_and_users(c)
        for key in store.unused(users):
            store.remove(key)
            click.echo(f"{key[:12]}: removed")
