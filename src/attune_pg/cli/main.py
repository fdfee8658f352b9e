"""The `attune-pg` command group and `attune-worker`."""

from __future__ import annotations

import getpass
import json
import signal
import sys
from typing import Any

import click

from attune_pg import db, embedded, packs, shipped
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
    """Apply the schema migrations and register the shipped core pack (idempotent, safe
    with workers running)."""
    with connection(dsn, init=False) as conn:
        applied = migrate.migrate(conn)
        version = migrate.current_version(conn)
        # The core pack ships in the package: registered, or upgraded when it changed.
        core = packs.register(conn, shipped.pack_dir("core"))
    if applied:
        click.echo(f"applied {', '.join(f'{m.version:04d}_{m.name}' for m in applied)}")
    click.echo(f"schema at version {version}")
    for report in core.packs:
        click.echo(report.summary() if report.changed else f"pack {report.ref} up to date")


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
            click.option(
                "--log-format",
                default="text",
                show_default=True,
                type=click.Choice(["text", "json"]),
                help="json: one JSON object per line (state changes carry their fields).",
            ),
            click.option(
                "--metrics-port",
                type=click.IntRange(0, 65535),
                default=None,
                help="Serve Prometheus metrics on this port (0: any free port, logged).",
            ),
            click.option(
                "--metrics-host",
                default="0.0.0.0",
                show_default=True,
                help="Address the metrics endpoint listens on.",
            ),
            click.option(
                "--watch-packs",
                "watch_packs",
                multiple=True,
                type=click.Path(exists=True, file_okay=False),
                help="Hot reload: register the packs under DIR now and whenever their files"
                " change (repeatable; needs a role that may register packs).",
            ),
            click.option(
                "--watch-interval",
                default=0.5,
                show_default=True,
                help="How often --watch-packs looks for changes (seconds).",
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
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
    watch_packs: tuple[str, ...],
    watch_interval: float,
    dsn: str | None,
) -> None:
    import threading

    from attune_pg.logfmt import configure
    from attune_pg.worker.loop import Worker, WorkerConfig

    configure(log_level, log_format)
    resolved = db.resolve_dsn(dsn)
    config = WorkerConfig(
        concurrency,
        lease_seconds,
        poll_seconds,
        grace_seconds,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )
    worker = Worker(resolved, config)
    signal.signal(signal.SIGTERM, lambda *_: worker.request_stop())
    signal.signal(signal.SIGINT, lambda *_: worker.request_stop())
    if not worker.wait_for_database(migrate.migrate):
        return
    watching = threading.Event()
    watchers = []
    if watch_packs:
        from attune_pg.packwatch import watch_in_thread

        watchers = watch_in_thread(resolved, list(watch_packs), watching, watch_interval)
    try:
        worker.run()
    finally:
        watching.set()
        for thread in watchers:
            thread.join(timeout=10)


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
    from attune_pg.cli import (
        automation,
        catalog,
        doctor,
        executions,
        graph,
        kv,
        prune,
        tools,
        ui,
        watch,
    )

    catalog.register(cli)
    automation.register(cli)
    doctor.register(cli)
    prune.register(cli)
    watch.register(cli)
    tools.register(cli)
    executions.register(cli)
    graph.register(cli)
    kv.register(cli)
    ui.register(cli)


_register_extra()


def main() -> None:
    cli(prog_name="attune-pg")


def worker_main() -> None:
    worker_command(prog_name="attune-worker")


__all__ = ["cli", "fail", "main", "worker_main"]
