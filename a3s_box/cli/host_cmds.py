"""`box setup` (provision the guest kernel + init, probe KVM) and `box doctor`."""
from __future__ import annotations

import json
import sys

import click

from a3s_box.cli.context import CliContext, pass_cli
from a3s_box.cli.output import emit_yaml, output_option
from a3s_box.drivers.doctor import Check, host_checks


def _show(checks: list[Check], fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps([c.to_json() for c in checks], indent=2, sort_keys=True))
    elif fmt == "yaml":
        emit_yaml([c.to_json() for c in checks])
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            click.echo(f"{'✓' if c.ok else '✗'} {c.name.ljust(width)}  {c.detail}")


def _exit_for(checks: list[Check]) -> None:
    if any(c.essential and not c.ok for c in checks):
        sys.exit(1)


@click.command("setup")
@output_option
@pass_cli
def setup_cmd(c: CliContext, output: str | None) -> None:
    """Provision the guest kernel and guest init into the cache, then probe KVM.

    Idempotent: a second run only re-checks. Set A3S_BOX_KERNEL (and
    A3S_BOX_KERNEL_MODULES) to boot your own kernel instead of Debian's.
    """
    from a3s_box.drivers.common.artifacts import ensure_guest_artifacts

    ensure_guest_artifacts(c.home, progress=not c.quiet, complete=True)
    _show(host_checks(c.home), output or c.output)


@click.command("doctor")
@click.option("--refresh", is_flag=True, help="Probe KVM again instead of the cached verdict.")
@output_option
@pass_cli
def doctor_cmd(c: CliContext, refresh: bool, output: str | None) -> None:
    """What works on this host: QEMU, KVM (really usable?), kernel, guest init, libkrun.

    Exits 1 when no box could run here; `box setup` fixes most of it.
    """
    checks = host_checks(c.home, refresh=refresh)
    _show(checks, output or c.output)
    _exit_for(checks)


COMMANDS: tuple[click.Command, ...] = (setup_cmd, doctor_cmd)
