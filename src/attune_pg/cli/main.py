"""The `attune-pg` command group and `attune-worker`."""

from __future__ import annotations

import getpass
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click

from attune_pg import db, embedded, packs
from attune_pg.cli.common import (
    connection,
    dsn_option,
    errors_to_exit,
    fail,
    table,
    to_json,
)
from attune_pg.cli.follow import follow
from attune_pg.errors import ParameterError
from attune_pg.spec.loader import load_workflow_file
from attune_pg.spec.recursion import unbounded_self_calls
from attune_pg.store import migrate, read


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="attune-pg")
def cli() -> None:
    """attune_pg: durable workflows on nothing but PostgreSQL."""


# ----------------------------------------------------------------- database


@cli.command()
@dsn_option
@errors_to_exit
def init(dsn: str | None) -> None:
    """Apply the schema migrations (idempotent, safe with workers running)."""
    with connection(dsn, init=False) as conn:
        applied = migrate.migrate(conn)
        version = migrate.current_version(conn)
    if applied:
        click.echo(f"applied {', '.join(f'{m.version:04d}_{m.name}' for m in applied)}")
    click.echo(f"schema at version {version}")


@cli.group(name="db")
def db_group() -> None:
    """Manage the embedded PostgreSQL (used when ATTUNE_DSN is not set)."""


@db_group.command("start")
@errors_to_exit
def db_start() -> None:
    """Start the embedded server (or find it running) and print its DSN."""
    click.echo(embedded.start())


@db_group.command("url")
@errors_to_exit
def db_url() -> None:
    """Print the DSN in use: $ATTUNE_DSN, else the embedded server (started if needed)."""
    click.echo(db.resolve_dsn(None))


@db_group.command("status")
@errors_to_exit
def db_status() -> None:
    """Say whether the embedded server is running, and where its data lives."""
    dsn = embedded.url()
    if dsn is None:
        click.echo(f"embedded PostgreSQL: stopped (data: {embedded.data_dir()})")
        sys.exit(3)
    click.echo(f"embedded PostgreSQL: running (data: {embedded.data_dir()})\n{dsn}")


@db_group.command("stop")
@errors_to_exit
def db_stop() -> None:
    """Stop the embedded server."""
    click.echo("stopped" if embedded.stop() else "not running")


# ----------------------------------------------------------------- packs and workflows


@cli.group(name="packs")
def packs_group() -> None:
    """Register packs of workflows and actions."""


@packs_group.command("register")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@dsn_option
@errors_to_exit
def packs_register(path: Path, dsn: str | None) -> None:
    """Validate and register the pack at PATH (or every pack under PATH): all or nothing."""
    with connection(dsn) as conn:
        registered = packs.register(conn, path)
    for pack in registered:
        click.echo(
            f"registered pack {pack.ref} {pack.version}: {len(pack.actions)} actions,"
            f" {len(pack.workflows)} workflows"
        )
    for warning in unbounded_self_calls(registered):
        click.echo(f"warning: {warning}", err=True)


@cli.group(name="workflows")
def workflows_group() -> None:
    """List, show and validate workflow definitions."""


@workflows_group.command("list")
@dsn_option
@errors_to_exit
def workflows_list(dsn: str | None) -> None:
    with connection(dsn) as conn:
        table(read.workflows(conn), ["ref", "version", "enabled", "label"])


@workflows_group.command("show")
@click.argument("ref")
@dsn_option
@errors_to_exit
def workflows_show(ref: str, dsn: str | None) -> None:
    """Print a registered workflow's source."""
    with connection(dsn) as conn:
        row = read.workflow(conn, ref)
    click.echo(f"# {row['ref']} {row['version']} ({row['source_file']})")
    click.echo(row["source"].rstrip())


@workflows_group.command("validate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@errors_to_exit
def workflows_validate(file: Path) -> None:
    """Check a workflow file offline (no database): syntax, schema and semantics."""
    resolved = file.resolve()
    pack = resolved.parent.parent.name if resolved.parent.name == "workflows" else None
    spec = load_workflow_file(file, pack=pack)
    click.echo(f"{file}: ok ({spec.ref}, {len(spec.all_tasks())} tasks)")


# ----------------------------------------------------------------- running


def _parse_params(pairs: tuple[str, ...], params_json: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if params_json:
        try:
            loaded = json.loads(params_json)
        except json.JSONDecodeError as exc:
            raise ParameterError(f"--params is not valid JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ParameterError("--params must be a JSON object")
        params.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ParameterError(f"-p {pair!r}: expected key=value")
        try:
            params[key] = json.loads(value)  # numbers, booleans, lists, objects
        except json.JSONDecodeError:
            params[key] = value  # anything else is a string
    return params


@cli.command()
@click.argument("ref")
@click.option(
    "-p", "--param", "pairs", multiple=True, help="key=value (value parsed as JSON if it can be)."
)
@click.option("--params", "params_json", help="All parameters as one JSON object.")
@click.option("--wait", is_flag=True, help="Follow the execution; exit 0 only if it succeeds.")
@click.option("--json", "as_json", is_flag=True, help="Print the execution as JSON.")
@click.option("--priority", type=int, default=0, help="Lower runs first (default 0).")
@click.option(
    "--idempotency-key", default=None, help="A second run with the same key returns the first."
)
@dsn_option
@errors_to_exit
def run(
    ref: str,
    pairs: tuple[str, ...],
    params_json: str | None,
    wait: bool,
    as_json: bool,
    priority: int,
    idempotency_key: str | None,
    dsn: str | None,
) -> None:
    """Start workflow REF (or plain action REF, as a one-task execution)."""
    params = _parse_params(pairs, params_json)
    with connection(dsn) as conn:
        execution_id = read.start_execution(
            conn,
            ref,
            params,
            requested_by=getpass.getuser(),
            priority=priority,
            idempotency_key=idempotency_key,
        )
        if not as_json:
            click.echo(f"execution {execution_id} requested ({ref})")
        if not wait:
            if as_json:
                click.echo(to_json(read.execution(conn, execution_id)))
            return
        status = follow(conn, execution_id, quiet=as_json)
        row = read.execution(conn, execution_id)
    if as_json:
        click.echo(to_json(row))
    else:
        _print_result(row)
    sys.exit(0 if status == "succeeded" else 1)


def _print_result(row: dict[str, Any]) -> None:
    click.echo(f"execution {row['id']} {row['status']}")
    if row["output"] is not None:
        click.echo("output: " + json.dumps(row["output"], indent=2))
    if row["error"]:
        click.echo(f"error: {row['error'].get('message', row['error'])}")


@cli.group(name="executions")
def executions_group() -> None:
    """Inspect workflow executions."""


@executions_group.command("list")
@click.option("--status", default=None)
@click.option("--limit", default=20, show_default=True)
@dsn_option
@errors_to_exit
def executions_list(status: str | None, limit: int, dsn: str | None) -> None:
    with connection(dsn) as conn:
        rows = read.executions(conn, status=status, limit=limit)
    table(rows, ["id", "workflow_ref", "status", "created_at", "tasks_total", "error_message"])


@executions_group.command("show")
@click.argument("execution_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@dsn_option
@errors_to_exit
def executions_show(execution_id: int, as_json: bool, dsn: str | None) -> None:
    with connection(dsn) as conn:
        row = read.execution(conn, execution_id)
    if as_json:
        click.echo(to_json(row))
        return
    for key in (
        "id",
        "workflow_ref",
        "status",
        "requested_by",
        "created_at",
        "started_at",
        "finished_at",
    ):
        click.echo(f"{key:>13}: {row[key]}")
    click.echo(f"{'parameters':>13}: {json.dumps(row['parameters'])}")
    if row["output"] is not None:
        click.echo(f"{'output':>13}: {json.dumps(row['output'])}")
    if row["error"]:
        click.echo(f"{'error':>13}: {row['error'].get('message')}")


@executions_group.command("tasks")
@click.argument("execution_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@dsn_option
@errors_to_exit
def executions_tasks(execution_id: int, as_json: bool, dsn: str | None) -> None:
    with connection(dsn) as conn:
        read.execution(conn, execution_id)
        rows = read.tasks(conn, execution_id)
    if as_json:
        click.echo(to_json(rows))
        return
    table(
        rows,
        [
            "id",
            "task_name",
            "item_index",
            "attempt",
            "status",
            "started_at",
            "finished_at",
            "result",
        ],
    )


# ----------------------------------------------------------------- worker


def _worker_options(func: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--concurrency", "-c", default=10, show_default=True, help="Actions run at once."
            ),
            click.option(
                "--lease-seconds",
                default=30.0,
                show_default=True,
                help="A task whose worker stops heartbeating is retried after this.",
            ),
            click.option(
                "--poll-seconds",
                default=5.0,
                show_default=True,
                help="Fallback poll interval (NOTIFY wakes the worker at once).",
            ),
            click.option(
                "--grace-seconds",
                default=30.0,
                show_default=True,
                help="On SIGTERM, how long running actions may finish.",
            ),
            click.option(
                "--log-level",
                default="info",
                show_default=True,
                type=click.Choice(["debug", "info", "warning", "error"]),
            ),
            dsn_option,
        ]
    ):
        func = option(func)
    return func


def _run_worker(
    concurrency: int,
    lease_seconds: float,
    poll_seconds: float,
    grace_seconds: float,
    log_level: str,
    dsn: str | None,
) -> None:
    from attune_pg.worker.loop import Worker, WorkerConfig

    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    resolved = db.resolve_dsn(dsn)
    worker = Worker(resolved, WorkerConfig(concurrency, lease_seconds, poll_seconds, grace_seconds))
    signal.signal(signal.SIGTERM, lambda *_: worker.request_stop())
    signal.signal(signal.SIGINT, lambda *_: worker.request_stop())
    if worker.wait_for_database(migrate.migrate):
        worker.run()


@cli.command("worker")
@_worker_options
@errors_to_exit
def worker_cmd(**options: Any) -> None:
    """Run a worker in the foreground (same as `attune-worker`)."""
    _run_worker(**options)


@click.command("attune-worker")
@_worker_options
@errors_to_exit
def worker_command(**options: Any) -> None:
    """Claim and run tasks until SIGTERM."""
    _run_worker(**options)


def _register_extra() -> None:
    from attune_pg.cli import automation, control, graph, kv, tools, ui

    automation.register(cli)
    tools.register(cli)
    control.register(cli)
    graph.register(cli)
    kv.register(cli)
    ui.register(cli)


_register_extra()


def main() -> None:
    cli(prog_name="attune-pg")


def worker_main() -> None:
    worker_command(prog_name="attune-worker")


__all__ = ["cli", "fail", "main", "worker_main"]
