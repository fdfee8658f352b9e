"""Read-side queries of triggers, rules, events, enforcements, timers and policies (CLI)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from attune_pg.errors import NotFoundError
from attune_pg.store.queries import Q

Row = dict[str, Any]


def _rows(conn: psycopg.Connection, sql: Any, params: dict[str, Any] | None = None) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params or {})
        return cur.fetchall()


def emit(conn: psycopg.Connection, trigger_ref: str, payload: dict[str, Any]) -> int:
    row = conn.execute(Q.event_emit, {"trigger": trigger_ref, "payload": Jsonb(payload)}).fetchone()
    assert row is not None
    return int(row[0])


def rules(conn: psycopg.Connection) -> list[Row]:
    return _rows(conn, Q.rule_list_all)


def rule(conn: psycopg.Connection, ref: str) -> Row:
    found = _rows(conn, Q.rule_show, {"ref": ref})
    if not found:
        raise NotFoundError(f"rule {ref!r} is not registered")
    return found[0]


def set_rule_enabled(conn: psycopg.Connection, ref: str, enabled: bool) -> None:
    if conn.execute(Q.rule_set_enabled, {"ref": ref, "enabled": enabled}).fetchone() is None:
        raise NotFoundError(f"rule {ref!r} is not registered")


def triggers(conn: psycopg.Connection) -> list[Row]:
    return _rows(conn, Q.trigger_list_all)


def events(conn: psycopg.Connection, trigger: str | None, limit: int) -> list[Row]:
    return _rows(conn, Q.event_list_recent, {"trigger": trigger, "n": limit})


def event(conn: psycopg.Connection, event_id: int) -> Row:
    found = _rows(conn, Q.event_show, {"id": event_id})
    if not found:
        raise NotFoundError(f"event {event_id} does not exist")
    return found[0]


def enforcements(
    conn: psycopg.Connection, rule: str | None, event: int | None, limit: int
) -> list[Row]:
    return _rows(conn, Q.enforcement_list_recent, {"rule": rule, "event": event, "n": limit})


def timers(conn: psycopg.Connection) -> list[Row]:
    return _rows(conn, Q.timer_list_upcoming)


def policies(conn: psycopg.Connection) -> list[Row]:
    return _rows(conn, Q.policy_usage)
