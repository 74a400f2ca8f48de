"""`box serve` (the HTTP API), `box token` (its sandbox tokens), `box mcp` (MCP on stdio)
and `box events` (the audit log)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from a3s_box.cli.context import CliContext, pass_cli
from a3s_box.cli.output import emit, output_option


@click.command("serve")
@click.option("--listen", metavar="HOST:PORT", help="Serve on TCP (every request then needs the "
              "bearer token) instead of the home's unix socket.")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False),
              help="The unix socket to serve on (default HOME/api.sock, mode 0600).")
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="Where the TCP bearer token is kept (default HOME/api-token, made on first start).")
@click.option("--print-token", is_flag=True, help="Print the bearer token (making it if need be) and exit.")
@click.option("--reconcile-period", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              metavar="SECONDS", help="How often the host's reconcile loop passes (boxes restarted "
              "as their restart policy says, pools refilled, leases' lifetimes enforced).")
@click.option("--no-reconcile", is_flag=True, help="Serve the API only: no reconcile loop "
              "(pools are then refilled by filler processes, as without a server).")
@click.option("--e2b-domain", metavar="DOMAIN", help="The domain of E2B sandbox port URLs "
              "({port}-{sandbox}.DOMAIN, which must resolve to this server); default: the host the SDK "
              "called, a loopback address as localhost:PORT. See docs/e2b.md.")
@pass_cli
def serve_cmd(c: CliContext, listen: str | None, socket_path: str | None, token_file: str | None,
              print_token: bool, reconcile_period: float, no_reconcile: bool, e2b_domain: str | None) -> None:
    """Serve the HTTP API (OpenAPI at /openapi.json) for the TypeScript SDK and others, the
    E2B-compatible API under /e2b (docs/e2b.md) and MCP at /mcp (docs/mcp.md)."""
    from a3s_box.api.auth import ensure_token
    from a3s_box.api.auth import token_file as default_token_file
    from a3s_box.api.server import serve as run

    c.home.ensure()
    tok = Path(token_file) if token_file else default_token_file(c.home.root)
    if print_token:
        click.echo(ensure_token(tok))
        return
    if listen and ":" not in listen:
        raise click.BadParameter("give HOST:PORT, e.g. 127.0.0.1:8100", param_hint="--listen")
    run(c.home.root, listen, Path(socket_path) if socket_path else None, tok,
        reconcile=None if no_reconcile else reconcile_period, e2b_domain=e2b_domain)


@click.command("events")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events.")
@pass_cli
def events_cmd(c: CliContext, follow: bool) -> None:
    """The audit log: every state change, from the CLI or the API (time, who, what, result)."""
    from a3s_box import audit

    offset = 0
    while True:
        entries, offset = audit.read(c.home.root, offset)
        for e in entries:
            if c.output == "json":
                click.echo(json.dumps(e, sort_keys=True))
            else:
                click.echo(f"{e.get('time')}  {e.get('who'):<18} {e.get('what'):<8} {e.get('target')}: "
                           f"{e.get('result')}")
        if not follow:
            return
        time.sleep(0.5)


@click.group("token")
def token_group() -> None:
    """Sandbox tokens for `box serve`: they acquire from the pools they name and use only
    what they acquired (the server's own token, --print-token, may do everything)."""


@token_group.command("create")
@click.option("-t", "--template", "templates", multiple=True, required=True, metavar="POOL",
              help="A pool the token may acquire from (a name, or project.pool); repeat for more.")
@click.option("--name", default="", help="A label, shown by `box token ls`.")
@pass_cli
def token_create(c: CliContext, templates: tuple[str, ...], name: str) -> None:
    """Issue a sandbox token; it is printed once (only its digest is kept)."""
    from a3s_box.api.access import mint_sandbox_token

    token, row = mint_sandbox_token(list(templates), name)
    with c.host() as h:
        h.add_token(row)
    if c.output == "json":
        click.echo(json.dumps({"id": row.id, "token": token, "scope": row.scope,
                               "templates": list(row.templates), "name": row.name}, sort_keys=True))
    else:
        click.echo(token)


@token_group.command("ls")
@output_option
@pass_cli
def token_ls(c: CliContext, output: str | None) -> None:
    """The sandbox tokens: id (the audit log's name for it), pools, label."""
    with c.host() as h:
        rows = [{"id": r.id, "scope": r.scope, "templates": ",".join(r.templates), "name": r.name,
                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.created_at))} for r in h.tokens()]
    emit(rows, (("id", "ID"), ("scope", "SCOPE"), ("templates", "POOLS"), ("name", "NAME"), ("created", "CREATED")),
         output or c.output)


@token_group.command("revoke")
@click.argument("token_id", metavar="ID")
@pass_cli
def token_revoke(c: CliContext, token_id: str) -> None:
    """Revoke a sandbox token at once (its next request gets 401); its boxes stay."""
    with c.host() as h:
        h.revoke_token(token_id)


@click.command("mcp")
@pass_cli
def mcp_cmd(c: CliContext) -> None:
    """An MCP server on stdin/stdout, for an MCP host (an IDE, an agent) that starts it:
    tools to acquire boxes, run commands and move files, as this user. (`box serve` has
    the same tools over HTTP at /mcp, scoped by the caller's token.)"""
    from a3s_box.api import mcp

    c.home.ensure()
    mcp.build(c.home.root, mcp.local_caller).run("stdio")


COMMANDS: tuple[click.Command, ...] = (serve_cmd, token_group, mcp_cmd, events_cmd)
