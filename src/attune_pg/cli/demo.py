"""`attune-pg demo`: everything on a fresh machine, in one command.

Starts (or finds) the database, applies the schema, registers the shipped core and
examples packs (package data: it works from any directory), runs a worker in the
background, runs `examples.hello_join` (branching, a decision and a join), prints its
task timeline and output, and stops the worker.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

from attune_pg import db, packs, shipped
from attune_pg.cli.follow import follow
from attune_pg.store import migrate, read
from attune_pg.worker.procs import start_worker, stop_worker

DEMO_WORKFLOW = "examples.hello_join"


def run_demo(dsn: str | None, name: str) -> int:
    resolved = db.resolve_dsn(dsn)
    with db.connect(resolved) as conn:
        migrate.migrate(conn)
        # The shipped packs (package data), so the demo runs from any directory.
        for pack in shipped.SHIPPED:
            for report in packs.register(conn, shipped.pack_dir(pack)).packs:
                click.echo(report.summary())
        log = Path(tempfile.gettempdir()) / "attune-demo-worker.log"
        worker = start_worker(resolved, concurrency=4, log_level="info", log_file=str(log))
        click.echo(f"started a worker (pid {worker.pid}, log {log})")
        try:
            execution_id = read.start_execution(conn, DEMO_WORKFLOW, {"name": name})
            click.echo(f"running {DEMO_WORKFLOW} as execution {execution_id}")
            status = follow(conn, execution_id, quiet=True, timeout=60)
            _timeline(read.tasks(conn, execution_id))
            row = read.execution(conn, execution_id)
        finally:
            stop_worker(worker)
            click.echo("stopped the worker")
    click.echo(f"\nexecution {execution_id}: {status}")
    if row["output"] is not None:
        click.echo("output: " + json.dumps(row["output"]))
    if row["error"]:
        click.echo("error: " + str(row["error"].get("message")))
    return 0 if status == "succeeded" else 1


def _timeline(tasks: list[dict[str, object]]) -> None:
    starts = [t["started_at"] for t in tasks if t["started_at"]]
    if not starts:
        return
    t0 = min(starts)  # type: ignore[type-var]
    click.echo("\ntask timeline (ms from the first task's start):")
    for task in tasks:
        start, end = task["started_at"], task["finished_at"]
        if start is None:
            continue
        offset = (start - t0).total_seconds() * 1000  # type: ignore[operator]
        took = (end - start).total_seconds() * 1000 if end else 0.0  # type: ignore[operator]
        bar = " " * int(offset / 5) + "#" * max(1, int(took / 5))
        click.echo(
            f"  {task['task_name']:<14} {task['status']:<10}"
            f" +{offset:7.1f} {took:6.1f}ms  {bar[:60]}"
        )
