"""`attune-pg ui`: serve the web console."""

from __future__ import annotations

import ipaddress

import click

from attune_pg import db
from attune_pg.cli.common import connection, dsn_option, errors_to_exit, fail
from attune_pg.store import migrate

CONSOLE_MIGRATION = 13  # schema/0012_console.sql, 0013: the views the console reads


@click.command("ui")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind. The console has no login of its own: whoever reaches it acts as"
    " its database role.",
)
@click.option(
    "--allow-control",
    is_flag=True,
    help="Show pause/resume/cancel/retry and inquiry answers (needs a role that may call"
    " the control functions, e.g. attune_submitter).",
)
@dsn_option
@errors_to_exit
def ui(port: int, host: str, allow_control: bool, dsn: str | None) -> None:
    """Serve the web console: executions, graphs, timelines, workflows, workers."""
    try:
        from attune_pg.ui.app import Console
        from attune_pg.ui.server import ConsoleServer
    except ImportError as exc:  # the [ui] extra is not installed
        fail(f"the console needs the [ui] extra: pip install 'attune-pg[ui]' ({exc.name})", 2)
    resolved = db.resolve_dsn(dsn)
    with connection(resolved, init=False) as conn:
        version = migrate.current_version(conn)
    if version < CONSOLE_MIGRATION:
        fail(f"schema is at version {version}: run `attune-pg init` first", 2)
    if not _is_loopback(host):
        click.echo(
            f"warning: binding {host}: anyone who can reach it acts as this console's"
            " database role",
            err=True,
        )
    mode = "control allowed" if allow_control else "read-only"
    click.echo(f"attune console on http://{host}:{port}/ ({mode}); Ctrl-C stops it", err=True)
    ConsoleServer(Console(resolved, allow_control=allow_control), host, port).run()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(cli: click.Group) -> None:
    cli.add_command(ui)
