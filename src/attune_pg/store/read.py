"""Read-side queries for the CLI and tests: executions, tasks, definitions."""

from __future__ import annotations

from typing import Any, LiteralString

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from attune_pg.errors import NotFoundError
from attune_pg.redact import redact_params
from attune_pg.spec.params import secret_parameters
from attune_pg.store.queries import Q, fetch

Row = dict[str, Any]


def _rows(
    conn: psycopg.Connection, query: LiteralString, params: dict[str, Any] | None = None
) -> list[Row]:
    return fetch(conn, query, params, dict_row)


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
        Q.execution_start,
        {
            "ref": ref,
            "parameters": Jsonb(parameters),
            "key": idempotency_key,
            "priority": priority,
            "who": requested_by,
        },
    ).fetchone()
    assert row is not None
    return int(row[0])


def execution(conn: psycopg.Connection, execution_id: int) -> Row:
    rows = _rows(conn, Q.execution_show, {"id": execution_id})
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
    return _rows(conn, Q.execution_list, {"status": status or None, "limit": limit})


def tasks(conn: psycopg.Connection, execution_id: int) -> list[Row]:
    return _rows(conn, Q.task_list, {"id": execution_id})


def status(conn: psycopg.Connection, execution_id: int) -> str:
    row = conn.execute(Q.execution_status, {"id": execution_id}).fetchone()
    if row is None:
        raise NotFoundError(f"execution {execution_id} does not exist")
    return str(row[0])


def workflows(conn: psycopg.Connection) -> list[Row]:
    return _rows(conn, Q.workflow_list_brief)


def workflow(conn: psycopg.Connection, ref: str) -> Row:
    rows = _rows(conn, Q.workflow_show, {"ref": ref})
    if not rows:
        raise NotFoundError(f"workflow {ref!r} is not registered")
    return rows[0]


def workers(conn: psycopg.Connection) -> list[Row]:
    return _rows(conn, Q.worker_list)


def execution_definition(conn: psycopg.Connection, execution_id: int) -> dict[str, Any]:
    """The definition snapshot an execution runs with (`WorkflowSpec.from_dict` reads it)."""
    row = conn.execute(Q.execution_definition, {"id": execution_id}).fetchone()
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
        Q.task_latest_statuses, {"precedence": _STATUS_PRECEDENCE, "id": execution_id}
    ).fetchall()
    return {str(name): str(status) for name, status in rows}
