"""`box plan | apply | ps | exec | logs | stop | start | delete`."""
from __future__ import annotations

import json
import os
from dataclasses import replace
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
import click

from a3s_box.cli.context import CliContext, pass_cli
from a3s_box.drivers.registry import AUTO, NAMES as DRIVER_NAMES
from a3s_box.cli.output import emit, output_option
from a3s_box.errors import BoxError, BoxfileError

if TYPE_CHECKING:
    from a3s_box.orchestrator.executor import Outcome


_files = click.option("-f", "--file", "files", multiple=True, type=click.Path(dir_okay=False),
                      help="Boxfile (repeat to merge several, later ones win). Default: Boxfile.yaml")
_project = click.option("-p", "--project", default=None,
                        help="Project name (default: `project:` or the Boxfile's folder name).")


def _fmt(ctx: CliContext, local: str | None) -> str:
    return local or ctx.output


def _files_or_default(files: tuple[str, ...]) -> list[str]:
    return list(files) or ["Boxfile.yaml"]


def _say(ctx: CliContext, msg: str) -> None:
    if not ctx.quiet:
        click.echo(msg, err=True)


def _report(ctx: CliContext, machine: bool, o: "Outcome") -> None:
    """Progress lines on stderr; with -q only what went wrong."""
    if machine:
        return
    if not ctx.quiet or o.status in ("failed", "skipped"):
        click.echo(_outcome_line(o), err=True)


# Every outcome the executor can report has a line: a test walks Op x STATUSES.
_MARK = {"ok": "✓", "unchanged": "·", "failed": "✗", "skipped": "-"}
_PAST = {"pull": "pulled", "import": "imported", "build": "built", "create": "created",
         "recreate": "recreated", "start": "started", "update": "updated", "delete": "deleted",
         "noop": "unchanged"}


def _outcome_line(o: "Outcome") -> str:
    a = o.action
    mark = _MARK[o.status]
    if o.status == "failed":
        return f"{mark} {a.kind} {a.name}: {a.op.value} failed: {o.detail}"
    if o.status == "skipped":
        return f"{mark} {a.kind} {a.name}: skipped ({o.detail})"
    took = f" in {o.seconds:.1f}s" if o.seconds >= 0.05 else ""
    extra = f" {o.detail[:19]}" if a.kind == "image" and o.detail and o.build is None else ""
    steps = f" ({o.build.cached} of {o.build.total} steps cached)" if o.build is not None else ""
    return f"{mark} {a.kind} {a.name}: {_PAST[a.op.value]}{extra}{took}{steps}"


@click.command("plan")
@_files
@_project
@click.option("--prune", is_flag=True, help="Also plan deleting boxes and pools not in the Boxfile.")
@click.option("--detailed-exitcode", is_flag=True,
              help="Exit 0 when there are no changes, 2 when there are, 1 on error.")
@output_option
@pass_cli
def plan_cmd(ctx: CliContext, files: tuple[str, ...], project: str | None, prune: bool,
             detailed_exitcode: bool, output: str | None) -> None:
    """Show what `box apply` would change, like `terraform plan`."""
    try:
        with ctx.host() as host:
            plan = host.plan(host.load(_files_or_default(files)), project, prune)
    except BoxError as e:
        if detailed_exitcode:  # 2 means "changes" here, so every error is 1, as terraform does
            click.echo(str(e) if isinstance(e, BoxfileError) else f"error: {e}", err=True)
            sys.exit(1)
        raise
    fmt = _fmt(ctx, output)
    if fmt == "json":
        click.echo(json.dumps(plan.to_json(), indent=2, sort_keys=True))
    elif fmt == "yaml":
        from a3s_box.cli.output import emit_yaml

        emit_yaml(plan.to_json())
    else:
        click.echo(plan.text(), nl=False)
    if detailed_exitcode:
        sys.exit(2 if plan.has_changes else 0)


@click.command("apply")
@_files
@_project
@click.option("--prune", is_flag=True, help="Delete boxes and pools of this project that the Boxfile no longer has.")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option("--no-wait", is_flag=True, help="Fail at once if another box command holds the lock.")
@click.option("--parallel", type=click.IntRange(min=1), default=None,
              help="Boxes booted at once (default: the host's cores).")
@click.option("--watch", is_flag=True, help="Re-converge on every save of the Boxfile; keep pools filled.")
@click.option("-q", "--quiet", "quiet", is_flag=True, help="Only the summary (and errors).")
@click.option("--driver", type=click.Choice([AUTO, *DRIVER_NAMES]), default=None,
              envvar="A3S_BOX_DRIVER", help="VMM for boxes whose Boxfile says `driver: auto` "
              "[env A3S_BOX_DRIVER].")
@output_option
@pass_cli
def apply_cmd(ctx: CliContext, files: tuple[str, ...], project: str | None, prune: bool,
              dry_run: bool, no_wait: bool, parallel: int | None, watch: bool, quiet: bool,
              driver: str | None, output: str | None) -> None:
    """Converge this host to the Boxfile: pull images, create/recreate/start boxes, fill pools."""
    if quiet:
        ctx = replace(ctx, quiet=True)
    fmt = _fmt(ctx, output)
    machine = fmt != "table"
    if watch:
        if dry_run or machine:
            raise click.UsageError("--watch cannot be combined with --dry-run or -o json|yaml")
        _apply_watch(ctx, _files_or_default(files), project, prune, parallel, driver)
        return
    with ctx.host() as host:
        bf = host.load(_files_or_default(files))
        if dry_run:
            plan = host.plan(bf, project, prune)
            if machine:
                click.echo(json.dumps(plan.to_json(), indent=2, sort_keys=True))
            else:
                click.echo(plan.text(), nl=False)
            return
        with host.locked(wait=not no_wait,
                         on_wait=lambda: _say(ctx, "waiting for another box command to finish...")):
            progress = not ctx.quiet and not machine and sys.stderr.isatty()
            from a3s_box.cli.build_cmds import StepPrinter

            steps = StepPrinter(ctx.quiet or machine)
            result = host.apply(
                bf, project, prune,
                report=lambda o: _report(ctx, machine, o),
                progress=progress,
                before_boxes=lambda p: None if (ctx.quiet or machine or not p.has_changes)
                else _say(ctx, p.text().rstrip("\n")),
                parallel=parallel, driver=driver, build_events=steps.event, build_output=steps.output,
            )
    if machine:
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        failed = [o for o in result.outcomes if o.status in ("failed", "skipped")]
        changed = [o for o in result.outcomes if o.status == "ok"]
        if not failed and not changed:
            click.echo(f'Project "{result.plan.project}": no changes, the host matches the Boxfile.')
        elif not failed:
            click.echo(f'Project "{result.plan.project}": converged ({len(changed)} changed).')
        else:
            click.echo(f'Project "{result.plan.project}": {len(failed)} of '
                       f"{len(failed) + len(changed)} changes did not converge.", err=True)
    if not result.ok:
        sys.exit(1)


def _apply_watch(ctx: CliContext, files: list[str], project: str | None, prune: bool,
                 parallel: int | None, driver: str | None) -> None:
    from a3s_box.orchestrator.watch import file_changes, watch_loop

    with ctx.host() as host:
        state: dict[str, Any] = {}

        def converge() -> None:
            bf = host.load(files)
            with host.locked(on_wait=lambda: _say(ctx, "waiting for another box command...")):
                result = host.apply(bf, project, prune, report=lambda o: _say(ctx, _outcome_line(o)),
                                    parallel=parallel, driver=driver)
            state["bf"] = bf
            state["project"] = result.plan.project
            changed = sum(1 for o in result.outcomes if o.status == "ok")
            bad = sum(1 for o in result.outcomes if o.status in ("failed", "skipped"))
            _say(ctx, f'Project "{result.plan.project}": ' + (
                f"{bad} did not converge" if bad else f"converged ({changed} changed)"))

        def upkeep() -> None:
            if "project" in state:
                with host.locked():
                    host.keep_pools(state["project"])

        try:
            watch_loop(file_changes([Path(f) for f in files]), converge, upkeep,
                       lambda m: _say(ctx, m))
        except KeyboardInterrupt:
            pass
        _say(ctx, "stopped watching; the boxes keep running (`box delete -f` removes them)")


_PS_COLUMNS = (("name", "NAME"), ("project", "PROJECT"), ("status", "STATUS"),
               ("driver", "DRIVER"), ("accel", "ACCEL"), ("pid", "PID"), ("image", "IMAGE"),
               ("boot", "BOOT"), ("security", "SECURITY"), ("network", "NETWORK"), ("detail", "DETAIL"))


@click.command("ps")
@click.option("-p", "--project", default=None, help="Only this project's boxes.")
@output_option
@pass_cli
def ps_cmd(ctx: CliContext, project: str | None, output: str | None) -> None:
    """List boxes, with what their VMs and agents are doing."""
    with ctx.host() as host:
        rows = [b.to_json() for b in host.ps(project)]
    emit(rows, _PS_COLUMNS, _fmt(ctx, output))


@click.command("exec", context_settings={"ignore_unknown_options": True,
                                         "allow_interspersed_args": False})
@click.argument("name")
@click.option("--ns", type=click.Choice(["agent", "business", "root"]), default="agent",
              help="Namespace to run in (default: the agent's).")
@click.option("-i", "--interactive", is_flag=True, help="Forward standard input.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a terminal.")
@click.option("-e", "--env", multiple=True, help="KEY=VALUE added to the environment.")
@click.option("-w", "--workdir", default="", help="Working folder inside the box.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_cli
def exec_cmd(ctx: CliContext, name: str, ns: str, interactive: bool, tty: bool,
             env: tuple[str, ...], workdir: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside box NAME; exits with the command's exit code."""
    from a3s_box.guest.protocol import ExecRequest, ExitKind, Namespace
    from a3s_box.guest.terminal import attach

    argv = command[1:] if command and command[0] == "--" else command
    if not argv:
        raise click.UsageError("no command given: box exec NAME -- CMD...")
    for item in env:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="-e")
    use_tty = tty and sys.stdin.isatty()
    rows, cols = _terminal_size() if use_tty else (24, 80)
    with ctx.host() as host:
        row = host.find(name)
        with host.client(row) as client:
            session = client.start(ExecRequest(
                argv=tuple(argv), ns=Namespace[ns.upper()], env=tuple(env), workdir=workdir,
                tty=use_tty, stdin=interactive, rows=rows, cols=cols))
            code = attach(session, tty=use_tty)
            status = session.wait(0)
            if status.kind is ExitKind.NOT_STARTED:
                click.echo(f"box exec: {status.message or argv[0] + ': could not start'}", err=True)
    sys.exit(code)


def _terminal_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
        return size.lines, size.columns
    except OSError:
        return 24, 80


@click.command("logs")
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (through rotations).")
@click.option("-n", "--tail", type=int, default=None, help="Only the last N lines.")
@click.option("--since", default=None, metavar="WHEN",
              help="Only lines begun since WHEN: a duration ago (10m, 2h) or a UTC time "
                   "(2026-12-02T10:00:00).")
@click.option("-t", "--timestamps", is_flag=True, help="Show when each line began.")
@click.option("--network", "network", is_flag=True,
              help="The box's network log instead: one line per connection and DNS answer.")
@output_option
@pass_cli
def logs_cmd(ctx: CliContext, name: str, follow: bool, tail: int | None, since: str | None,
             timestamps: bool, network: bool, output: str | None) -> None:
    """Print a box's console log (kernel, guest init and agent output), or with
    --network every connection its egress proxy allowed or denied. Reads across the
    rotated files (`logging:` in the Boxfile), oldest first."""
    from a3s_box.logs.reader import follow as follow_log
    from a3s_box.logs.reader import log_files, read_lines, select

    since_t = _since(since) if since else None
    with ctx.host() as host:
        row = host.find(name)
        if network:
            from a3s_box.network.log import network_log_path

            path = network_log_path(host.home.box_dir(row.id))
            if not row.spec.get("network"):
                raise BoxError(f"box {row.name}: has no network (mode none), so no network log")
        else:
            path = host.console_log(row)
        if not log_files(path):
            what = "network" if network else "console"
            raise BoxError(f"box {row.name}: no {what} log yet ({path})")
        show = _network_line_printer(_fmt(ctx, output)) if network else None
        out = sys.stdout.buffer
        data = select(read_lines(path), tail=tail, since=since_t, timestamps=timestamps)
        out.write(show(data) if show else data)
        out.flush()
        if follow:
            for chunk in follow_log(path, lambda: host.running(row.id), timestamps=timestamps):
                out.write(show(chunk) if show else chunk)
                out.flush()


def _since(text: str) -> float:
    from datetime import datetime, timezone

    from a3s_box.units import parse_duration

    try:
        return time.time() - parse_duration(text)
    except Exception:  # noqa: BLE001 - not a duration: a time, or a usage error below
        pass
    try:
        t = datetime.fromisoformat(text.removesuffix("Z"))
    except ValueError:
        raise click.BadParameter(f"{text!r}: neither a duration (10m) nor a time (2026-12-02T10:00:00)",
                                 param_hint="--since") from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def _network_line_printer(fmt: str) -> Any:
    """JSON lines as they are for -o json; a readable line each otherwise."""
    import json

    def show(data: bytes) -> bytes:
        if fmt == "json":
            return data
        lines = []
        for raw in data.splitlines():
            try:
                r = json.loads(raw)
            except ValueError:
                continue
            sizes = f" sent={r['sent']} received={r['received']}" if "sent" in r else ""
            via = f" via {r['ip']}" if r.get("ip") else ""
            lines.append(f"{r.get('time', '')} {r.get('verdict', '?'):<5} {r.get('proto', ''):<4} "
                         f"{r.get('dst', '')}{via}: {r.get('reason', '')}{sizes}\n")
        return "".join(lines).encode()
    return show


@click.command("inspect")
@click.argument("name")
@output_option
@pass_cli
def inspect_cmd(ctx: CliContext, name: str, output: str | None) -> None:
    """Everything about one box: spec, VM, network policy, logs (secret values never)."""
    import json

    from a3s_box.cli.output import emit_yaml

    with ctx.host() as host:
        data = host.inspect(name)
    if _fmt(ctx, output) == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        emit_yaml(data)


@click.command("stop")
@click.argument("names", nargs=-1, required=True)
@pass_cli
def stop_cmd(ctx: CliContext, names: tuple[str, ...]) -> None:
    """Stop boxes (the VM shuts down; the disk is kept for `box start`)."""
    with ctx.host() as host, host.locked():
        for n in names:
            row = host.stop(n)
            click.echo(f"{row.name}: stopped")


@click.command("pause")
@click.argument("names", nargs=-1, required=True)
@pass_cli
def pause_cmd(ctx: CliContext, names: tuple[str, ...]) -> None:
    """Pause boxes: their VMs stop using CPU; processes, memory and open files are kept."""
    with ctx.host() as host, host.locked():
        for n in names:
            click.echo(f"{host.pause(n).name}: paused")


@click.command("resume")
@click.argument("names", nargs=-1, required=True)
@pass_cli
def resume_cmd(ctx: CliContext, names: tuple[str, ...]) -> None:
    """Resume paused boxes where they were."""
    with ctx.host() as host, host.locked():
        for n in names:
            click.echo(f"{host.resume(n).name}: running")


@click.command("fork")
@click.argument("name")
@click.option("--name", "new_name", required=True, help="The new box's name (same project).")
@click.option("--timeout", type=float, default=120.0, help="Seconds to wait for the new box.")
@pass_cli
def fork_cmd(ctx: CliContext, name: str, new_name: str, timeout: float) -> None:
    """A new box from a running box's memory and disk at this instant.

    NAME pauses for as long as its memory takes to copy, then runs on unchanged; both
    continue on new disk overlays over the frozen layer (`box snapshot ls`). The fork's
    processes are NAME's, mid-run. No Boxfile manages it: `box delete NEW` removes it."""
    with ctx.host() as host, host.locked():
        row = host.fork(name, new_name, timeout)
        click.echo(f"{row.name}: forked from {name}")


@click.command("start")
@click.argument("names", nargs=-1, required=True)
@click.option("--timeout", type=float, default=120.0, help="Seconds to wait for the guest.")
@pass_cli
def start_cmd(ctx: CliContext, names: tuple[str, ...], timeout: float) -> None:
    """Boot stopped boxes again from their own disks."""
    with ctx.host() as host, host.locked():
        for n in names:
            row = host.start(n, timeout)
            click.echo(f"{row.name}: {row.status}")


@click.command("delete")
@_files
@_project
@click.option("--volumes", "with_volumes", is_flag=True,
              help="With -f: also remove the project's named volumes and their data.")
@click.argument("names", nargs=-1)
@pass_cli
def delete_cmd(ctx: CliContext, files: tuple[str, ...], project: str | None, with_volumes: bool,
               names: tuple[str, ...]) -> None:
    """Delete boxes by NAME, or every box of a Boxfile's project with -f (named volumes
    are kept unless --volumes)."""
    if with_volumes and not files:
        raise click.UsageError("--volumes goes with -f FILE (the project's volumes)")
    if bool(files) == bool(names):
        raise click.UsageError("give either -f FILE or box NAMEs")
    with ctx.host() as host:
        with host.locked():
            if files:
                bf = host.load(list(files), for_apply=False)
                gone = host.delete_project(bf, project)
                if with_volumes:
                    host.volumes.remove_project(
                        bf, project, on_removed=lambda v: click.echo(f"volume {v.name}: removed"))
            else:
                gone = []
                for n in names:
                    host.delete(n)
                    gone.append(n)
    for n in gone:
        click.echo(f"{n}: deleted")
    if files and not gone:
        click.echo("nothing to delete")


@click.command("diff")
@_files
@_project
@output_option
@pass_cli
def diff_cmd(ctx: CliContext, files: tuple[str, ...], project: str | None, output: str | None) -> None:
    """Show drift: where the running host differs from what was applied (dead VMs,
    stopped boxes, boxes no longer in the Boxfile, pools below min_ready). Exit 2 on drift."""
    with ctx.host() as host:
        plan = host.plan(host.load(_files_or_default(files)), project, prune=False)
    drift = [a for a in plan.changes if a.op.value in ("recreate", "start", "update")
             and not a.changes and a.kind != "image"]
    fmt = _fmt(ctx, output)
    if fmt != "table":
        click.echo(json.dumps({"project": plan.project, "drift": [a.to_json() for a in drift],
                               "orphans": list(plan.orphans)}, indent=2, sort_keys=True))
    else:
        for a in drift:
            click.echo(a.line())
        for o in plan.orphans:
            click.echo(f"  ! box {o:<24} not in the Boxfile")
        if not drift and not plan.orphans:
            click.echo(f'Project "{plan.project}": no drift.')
    sys.exit(2 if drift or plan.orphans else 0)


@click.group("pool")
def pool_group() -> None:
    """Warm pools: hand out ready boxes in milliseconds."""


@pool_group.command("ls")
@click.option("-p", "--project", default=None)
@output_option
@pass_cli
def pool_ls(ctx: CliContext, project: str | None, output: str | None) -> None:
    """List pools with their ready, leased and total boxes."""
    with ctx.host() as host:
        rows = host.pools(project)
    emit(rows, (("name", "POOL"), ("project", "PROJECT"), ("box", "TEMPLATE"), ("ready", "READY"),
                ("leased", "LEASED"), ("total", "TOTAL"), ("min_ready", "MIN_READY"), ("max", "MAX")),
         _fmt(ctx, output))


@pool_group.command("acquire")
@click.argument("pool")
@click.option("-p", "--project", default=None)
@click.option("--name", default=None, help="Name the leased box (default: its pool member name).")
@click.option("--wait", "wait", type=click.FloatRange(min=0), default=0.0, metavar="SECONDS",
              help="When no box is ready: boot one while the pool is below max, or wait for one "
                   "this long (default: 0, refuse at once).")
@output_option
@pass_cli
def pool_acquire(ctx: CliContext, pool: str, project: str | None, name: str | None,
                 wait: float, output: str | None) -> None:
    """Lease a ready box from POOL at once; the pool boots a replacement behind."""
    with ctx.host() as host:
        row = host.acquire(pool, project, name, timeout=wait)
    if _fmt(ctx, output) == "json":
        click.echo(json.dumps({"id": row.id, "name": row.name, "project": row.project,
                               "pool": row.pool, "channel": (row.handle or {}).get("channel")},
                              sort_keys=True))
    else:
        click.echo(row.name)


@pool_group.command("release")
@click.argument("name")
@click.option("--keep", is_flag=True, help="Return it to the pool instead of destroying it.")
@pass_cli
def pool_release(ctx: CliContext, name: str, keep: bool) -> None:
    """Give a leased box back: destroyed (default), or kept for reuse with --keep."""
    with ctx.host() as host:
        host.release(name, keep)
    click.echo(f"{name}: {'returned to its pool' if keep else 'destroyed'}")


@pool_group.command("fill")
@click.option("-p", "--project", required=True)
@pass_cli
def pool_fill(ctx: CliContext, project: str) -> None:
    """One upkeep pass over a project's pools (what --watch does every few seconds)."""
    with ctx.host() as host, host.locked():
        if not host.pools(project):
            raise BoxError(f"project {project}: no pools (see `box pool ls`)")
        for line in host.keep_pools(project):
            click.echo(line)


COMMANDS: tuple[click.Command, ...] = (
    plan_cmd, apply_cmd, ps_cmd, exec_cmd, logs_cmd, inspect_cmd, stop_cmd, pause_cmd, resume_cmd,
    fork_cmd, start_cmd, delete_cmd, diff_cmd, pool_group)
