"""Read-only queries for watching the engine: the metrics' queue sample, `attune-pg watch`.

Each is bounded by a LIMIT and reads the partial indexes of live rows, so running them
every second costs the same with a thousand or a hundred million finished rows.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from attune_pg.store.queries import Q

Row = dict[str, Any]


def queue_sample(conn: psycopg.Connection, cap: int) -> dict[str, float]:
    """Ready, delayed, running, waiting tasks and requested executions (each counted up to
    `cap`), and the age in seconds of the oldest ready task."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(Q.queue_sample, {"cap": cap}).fetchone()
    assert row is not None
    return {key: float(value) for key, value in row.items()}


def live_executions(conn: psycopg.Connection, limit: int = 50) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(Q.watch_executions, {"limit": limit}).fetchall()


def execution_header(conn: psycopg.Connection, execution_id: int) -> Row | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(Q.watch_execution, {"id": execution_id}).fetchone()


def execution_tasks(conn: psycopg.Connection, execution_id: int, limit: int = 200) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(Q.watch_tasks, {"id": execution_id, "limit": limit}).fetchall()
