"""Read-side queries for the CLI and tests: executions, tasks, definitions."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from attune_pg.errors import NotFoundError
from attune_pg.redact import redact_params
from attune_pg.spec.params import secret_parameters

Row = dict[str, Any]


def _rows(conn: psycopg.Connection, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def start_execution(
    conn: psycopg.Connection,
    ref: str,
    parameters: dict[str, Any],
    *,
    requested_by: str | None = None,
    priority: int = 0,
    idempotency_key: str | None = None,
) -> int:
    # attune.start_execution: a repeated idempotency key returns the first execution.
    row = conn.execute(
        "SELECT attune.start_execution(%s, %s, %s, %s, coalesce(%s, current_user))",
        (ref, Jsonb(parameters), idempotency_key, priority, requested_by),
    ).fetchone()
    assert row is not None
    return int(row[0])


def execution(conn: psycopg.Connection, execution_id: int) -> Row:
    rows = _rows(
        conn,
        "SELECT id, workflow_ref, status, parameters, output, error, vars, priority, requested_by,"
        " parent_task_id, depth, created_at, started_at, finished_at,"
        " definition -> 'parameters' AS parameter_schema"
        " FROM attune.workflow_execution WHERE id = %s",
        (execution_id,),
    )
    if not rows:
        raise NotFoundError(f"execution {execution_id} does not exist")
    row = rows[0]
    # `secret: true` parameters of an execution not started yet are still plain: mask them.
    secret = secret_parameters(row.pop("parameter_schema") or {})
    row["parameters"] = redact_params(row["parameters"] or {}, secret)
    return row


def executions(
    conn: psycopg.Connection, *, status: str | None = None, limit: int = 20
) -> list[Row]:
    where = "WHERE status = %s" if status else ""
    params: tuple[Any, ...] = (status, limit) if status else (limit,)
    return _rows(
        conn,
        "SELECT id, workflow_ref, status, requested_by, created_at, started_at, finished_at,"
        f" error_message, tasks_total FROM attune.workflow_execution_summary {where}"
        " ORDER BY id DESC LIMIT %s",
        params,
    )


def tasks(conn: psycopg.Connection, execution_id: int) -> list[Row]:
    return _rows(
        conn,
        "SELECT id, task_name, iteration, item_index, attempt, action_ref, status, input, result,"
        " error, run_at, started_at, finished_at, lease_owner, claims"
        " FROM attune.task_execution WHERE workflow_execution_id = %s"
        " ORDER BY coalesce(started_at, run_at), id",
        (execution_id,),
    )


def status(conn: psycopg.Connection, execution_id: int) -> str:
    row = conn.execute(
        "SELECT status FROM attune.workflow_execution WHERE id = %s", (execution_id,)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"execution {execution_id} does not exist")
    return str(row[0])


def workflows(conn: psycopg.Connection) -> list[Row]:
    return _rows(
        conn,
        "SELECT ref, label, version, enabled, description FROM attune.workflow_definition"
        " ORDER BY ref",
    )


def workflow(conn: psycopg.Connection, ref: str) -> Row:
    rows = _rows(
        conn,
        "SELECT ref, label, version, enabled, description, parameters, definition, source,"
        " source_file, updated_at FROM attune.workflow_definition WHERE ref = %s",
        (ref,),
    )
    if not rows:
        raise NotFoundError(f"workflow {ref!r} is not registered")
    return rows[0]


def workers(conn: psycopg.Connection) -> list[Row]:
    return _rows(conn, "SELECT * FROM attune.worker_status ORDER BY started_at DESC")


def execution_definition(conn: psycopg.Connection, execution_id: int) -> dict[str, Any]:
    """The definition snapshot an execution runs with (`WorkflowSpec.from_dict` reads it)."""
    row = conn.execute(
        "SELECT definition FROM attune.workflow_execution WHERE id = %s", (execution_id,)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"execution {execution_id} does not exist")
    if row[0] is None:
        raise NotFoundError(f"execution {execution_id} has no definition snapshot")
    return dict(row[0])


# Which status speaks for a with_items task whose items ended differently: the first listed.
_STATUS_PRECEDENCE = [
    "failed", "timed_out", "running", "waiting", "scheduled", "pending", "canceled", "skipped",
    "succeeded",
]  # fmt: skip


def latest_task_statuses(conn: psycopg.Connection, execution_id: int) -> dict[str, str]:
    """Task name -> status of its latest run: the last attempt in its latest iteration.

    A with_items task has one such row per item; they are summed up by `_STATUS_PRECEDENCE`
    (any failed item makes it failed, else any running one running, ...).
    """
    rows = conn.execute(
        "SELECT task_name, (array_agg(status ORDER BY"
        " array_position(%s::text[], status) NULLS LAST))[1]"
        " FROM (SELECT DISTINCT ON (task_name, coalesce(item_index, -1)) task_name, status"
        "   FROM attune.task_execution t WHERE workflow_execution_id = %s"
        "    AND iteration = (SELECT max(iteration) FROM attune.task_execution m"
        "     WHERE m.workflow_execution_id = t.workflow_execution_id"
        "       AND m.task_name = t.task_name)"
        "   ORDER BY task_name, coalesce(item_index, -1), attempt DESC, id DESC) latest"
        " GROUP BY task_name",
        (_STATUS_PRECEDENCE, execution_id),
    ).fetchall()
    return {str(name): str(status) for name, status in rows}
