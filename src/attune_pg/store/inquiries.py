"""Inquiries and execution control for the CLI: thin wrappers over the SQL functions."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from attune_pg.errors import NotFoundError

Row = dict[str, Any]


def control(
    conn: psycopg.Connection, verb: str, execution_id: int, policy: str | None = None
) -> str:
    """Call attune.<verb>_execution: cancel, pause, resume or retry."""
    if verb == "cancel":
        row = conn.execute(
            "SELECT attune.cancel_execution(%s, %s)", (execution_id, policy)
        ).fetchone()
    else:
        row = conn.execute(f"SELECT attune.{verb}_execution(%s)", (execution_id,)).fetchone()
    assert row is not None
    return str(row[0])


def inquiries(conn: psycopg.Connection, *, all_statuses: bool = False) -> list[Row]:
    where = "" if all_statuses else "WHERE i.status = 'pending'"
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT i.id, i.workflow_execution_id, t.task_name, i.status, i.prompt, i.assigned_to,"
            " i.expires_at, i.created_at FROM attune.inquiry i"
            f" JOIN attune.task_execution t ON t.id = i.task_execution_id {where} ORDER BY i.id"
        ).fetchall()


def inquiry(conn: psycopg.Connection, inquiry_id: int) -> Row:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT i.*, t.task_name FROM attune.inquiry i"
            " JOIN attune.task_execution t ON t.id = i.task_execution_id WHERE i.id = %s",
            (inquiry_id,),
        ).fetchone()
    if row is None:
        raise NotFoundError(f"inquiry {inquiry_id} does not exist")
    return row


def respond(conn: psycopg.Connection, inquiry_id: int, response: Any, who: str) -> str:
    row = conn.execute(
        "SELECT attune.respond_inquiry(%s, %s, %s)", (inquiry_id, Jsonb(response), who)
    ).fetchone()
    assert row is not None
    return str(row[0])
