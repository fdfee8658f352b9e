"""Inquiries and execution requests (cancel, pause, resume, retry) for the CLI and the
console: thin wrappers over the SQL functions of schema/0004_control.sql."""

from __future__ import annotations

from typing import Any, LiteralString

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from attune_pg.errors import NotFoundError
from attune_pg.store.queries import Q, fetch

Row = dict[str, Any]

_REQUESTS: dict[str, LiteralString] = {
    "cancel": Q.execution_cancel,
    "pause": Q.execution_pause,
    "resume": Q.execution_resume,
    "retry": Q.execution_retry,
}


def request(
    conn: psycopg.Connection, verb: str, execution_id: int, policy: str | None = None
) -> str:
    """Call attune.<verb>_execution: cancel (with `policy`), pause, resume or retry."""
    params: dict[str, Any] = {"id": execution_id}
    if verb == "cancel":
        params["policy"] = policy
    row = conn.execute(_REQUESTS[verb], params).fetchone()
    assert row is not None
    return str(row[0])


def inquiries(conn: psycopg.Connection, *, all_statuses: bool = False) -> list[Row]:
    return fetch(conn, Q.inquiry_list, {"all": all_statuses}, dict_row)


def inquiry(conn: psycopg.Connection, inquiry_id: int) -> Row:
    rows = fetch(conn, Q.inquiry_get, {"id": inquiry_id}, dict_row)
    if not rows:
        raise NotFoundError(f"inquiry {inquiry_id} does not exist")
    return rows[0]


def respond(conn: psycopg.Connection, inquiry_id: int, response: Any, who: str) -> str:
    row = conn.execute(
        Q.inquiry_respond, {"id": inquiry_id, "response": Jsonb(response), "who": who}
    ).fetchone()
    assert row is not None
    return str(row[0])
