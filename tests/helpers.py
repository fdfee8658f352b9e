"""Small helpers shared by integration and e2e tests."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

TERMINAL = ("succeeded", "failed", "canceled", "timed_out")


def start(conn: psycopg.Connection, ref: str, params: dict[str, Any] | None = None) -> int:
    row = conn.execute(
        "INSERT INTO attune.workflow_execution (workflow_ref, parameters)"
        " VALUES (%s, %s) RETURNING id",
        (ref, Jsonb(params or {})),
    ).fetchone()
    assert row is not None
    return int(row[0])


def wait_done(conn: psycopg.Connection, execution_id: int, timeout: float = 30.0) -> dict[str, Any]:
    """Wait until the execution is terminal; return its row."""
    deadline = time.monotonic() + timeout
    while True:
        with conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(
                "SELECT * FROM attune.workflow_execution WHERE id = %s", (execution_id,)
            ).fetchone()
        assert row is not None
        if row["status"] in TERMINAL:
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"execution {execution_id} still {row['status']} after {timeout}s")
        time.sleep(0.02)


def tasks(conn: psycopg.Connection, execution_id: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM attune.task_execution WHERE workflow_execution_id = %s ORDER BY id",
            (execution_id,),
        ).fetchall()


def statuses(conn: psycopg.Connection, execution_id: int) -> dict[str, str]:
    """task_name -> status of its latest row (by id)."""
    return {t["task_name"]: t["status"] for t in tasks(conn, execution_id)}


def task_states(conn: psycopg.Connection, execution_id: int) -> dict[str, str]:
    """task_name -> status of its latest iteration (the logical task, items combined)."""
    rows = conn.execute(
        "SELECT DISTINCT ON (task_name) task_name, status FROM attune.task_state"
        " WHERE workflow_execution_id = %s ORDER BY task_name, iteration DESC",
        (execution_id,),
    ).fetchall()
    return {name: status for name, status in rows}
