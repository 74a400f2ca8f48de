"""`box snapshot`: the templates boxes start from (ls, rm, prune)."""
from __future__ import annotations

import time
from typing import Any

import click

from a3s_box.cli.context import CliContext, pass_cli
from a3s_box.cli.output import emit, output_option


def _users(c: CliContext) -> dict[str, list[str]]:
    """Template key prefix -> boxes started from it (their disks sit on its disk)."""
    from a3s_box.orchestrator.state import StateStore

    store = StateStore(c.home.state_db)
    try:
        out: dict[str, list[str]] = {}
        for r in store.boxes():
            boot = str((r.handle or {}).get("extra", {}).get("boot", "")) if r.handle else ""
            if boot.startswith("snapshot "):
                out.setdefault(boot.split()[1], []).append(r.name)
        return out
    finally:
        store.close()


def _templates(c: CliContext) -> Any:
    from a3s_box.drivers.qemu.snapshot import TemplateStore

    c.home.ensure()
    return TemplateStore(c.home.cache)


def register(cli: click.Group) -> None:
    @cli.group("snapshot")
    def snapshot() -> None:
        """Snapshot templates: boxes start as clones of them."""

    @snapshot.command("ls")
    @output_option
    @pass_cli
    def ls(c: CliContext, output: str | None) -> None:
        """Templates, their size on the host and the boxes started from them."""
        users = _users(c)
        rows = []
        for t in _templates(c).list():
            rows.append({"key": t["key"], "image": str(t.get("image", ""))[:19], "vcpus": t.get("vcpus"),
                         "memory_mib": t.get("memory_mib"), "accel": t.get("accel"),
                         "bytes": t["disk_and_memory_bytes"],
                         "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t.get("created", 0))),
                         "boxes": ", ".join(sorted(users.get(t["key"][:12], [])))})
        emit(rows, (("key", "KEY"), ("image", "IMAGE"), ("vcpus", "VCPUS"), ("memory_mib", "MEMORY MiB"),
                    ("bytes", "BYTES"), ("boxes", "BOXES")), output or c.output)

    @snapshot.command("rm")
    @click.argument("keys", nargs=-1, required=True)
    @click.option("--force", is_flag=True, help="Even if boxes were started from it (they cannot be "
                  "restarted then: their disks sit on the template's).")
    @pass_cli
    def rm(c: CliContext, keys: tuple[str, ...], force: bool) -> None:
        """Remove templates (by key or a unique prefix)."""
        from a3s_box.errors import BoxError

        store, users = _templates(c), _users(c)
        known = [t["key"] for t in store.list()]
        for k in keys:
            match = [x for x in known if x.startswith(k)]
            if len(match) != 1:
                raise BoxError(f"snapshot {k}: {'no such template' if not match else 'ambiguous prefix'} "
                               "(see `box snapshot ls`)")
            boxes = users.get(match[0][:12], [])
            if boxes and not force:
                raise BoxError(f"snapshot {match[0][:12]}: boxes {', '.join(sorted(boxes))} were started "
                               "from it; delete them first (or --force)")
            store.remove(match[0])
            click.echo(f"{match[0][:12]}: removed")

    @snapshot.command("prune")
    @pass_cli
    def prune(c: CliContext) -> None:
        """Remove every template no box was started from."""
        store, users = _templates(c), _users(c)
        for t in store.list():
            if t["key"][:12] not in users:
                store.remove(t["key"])
                click.echo(f"{t['key'][:12]}: removed")
