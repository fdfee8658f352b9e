"""Follow an execution until it ends: live task progress for `run --wait` and the demo."""

from __future__ import annotations

import time
from typing import Any

import click
import psycopg

from attune_pg.cli.common import clock
from attune_pg.machine import WORKFLOW_TERMINAL
from attune_pg.store import notify, read


def follow(
    conn: psycopg.Connection,
    execution_id: int,
    *,
    quiet: bool = False,
    timeout: float | None = None,
) -> str:
    """Print each task status change as it happens; return the final workflow status.

    Wakes on the `attune_execution` notification and re-reads the task rows, with a
    short poll as a fallback, so it needs nothing but the database.
    """
    seen: dict[tuple[int, str], bool] = {}
    notify.listen(conn, ("attune_execution", "attune_work"))
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = read.status(conn, execution_id)
        if not quiet:
            for task in read.tasks(conn, execution_id):
                key = (task["id"], task["status"])
                if key not in seen:
                    seen[key] = True
                    click.echo(_line(task))
        if status in WORKFLOW_TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            return status
        for _ in conn.notifies(timeout=0.2, stop_after=1):
            pass


def _line(task: dict[str, Any]) -> str:
    when = task["finished_at"] or task["started_at"] or task["run_at"]
    name = task["task_name"]
    if task["item_index"] is not None:
        name += f"[{task['item_index']}]"
    if task["attempt"] > 1:
        name += f" (attempt {task['attempt']})"
    detail = ""
    if task["error"]:
        detail = "  " + str(task["error"].get("message", ""))[:100]
    return f"  {clock(when)}  {name:<28} {task['status']}{detail}"
