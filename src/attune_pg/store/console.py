"""The web console's reads (store/sql/console.sql): views only, so attune_reader suffices.

Rows map to dicts by column name. Nothing here commits or decides anything; control goes
through the SQL control functions (store/inquiries.py), which check everything themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from attune_pg import machine
from attune_pg.errors import NotFoundError
from attune_pg.redact import redact_params
from attune_pg.spec.params import secret_parameters
from attune_pg.store.queries import Q

Row = dict[str, Any]

PAGE_SIZE = 50
COUNT_WINDOW = 10_000  # finished executions looked at to count them per status
TASK_ROWS = 500  # task attempts shown on an execution page
AUDIT_ROWS = 500
CHILD_ROWS = 200

# Which status speaks for a with_items task whose items ended differently: the first listed.
STATUS_PRECEDENCE = [
    "failed", "timed_out", "running", "waiting", "scheduled", "pending", "canceled", "skipped",
    "succeeded",
]  # fmt: skip


@dataclass(frozen=True)
class ExecutionFilter:
    """The list page's filters; None means not filtered."""

    status: str | None = None
    workflow: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None

    def params(self) -> dict[str, Any]:
        like = None
        if self.text:
            escaped = self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            like = f"%{escaped}%"
        return {
            "status": self.status,
            "workflow": self.workflow,
            "since": self.since,
            "until": self.until,
            "text": like,
            "id_text": self.text.strip().lstrip("#") if self.text else None,
        }


@dataclass(frozen=True)
class StatusCount:
    status: str
    count: int
    exact: bool  # False: a lower bound (more than the counting window matched)


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    older: int | None  # `before` of the next older page, None at the end
    newer: int | None  # `after` of the next newer page, None on the newest page


def _rows(conn: psycopg.Connection, query: Any, params: dict[str, Any]) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def _one(conn: psycopg.Connection, query: Any, params: dict[str, Any], what: str) -> Row:
    rows = _rows(conn, query, params)
    if not rows:
        raise NotFoundError(f"{what} does not exist")
    return rows[0]


def execution_page(
    conn: psycopg.Connection,
    filters: ExecutionFilter,
    *,
    before: int | None = None,
    after: int | None = None,
    limit: int = PAGE_SIZE,
) -> Page:
    """One page, newest first; one extra row tells whether there is a further page."""
    params = {**filters.params(), "before": before, "after": after, "limit": limit + 1}
    if after is not None:
        rows = _rows(conn, Q.console_execution_page_newer, params)
        more_newer = len(rows) > limit
        rows = list(reversed(rows[:limit]))
        older = rows[-1]["id"] if rows else None
        return Page(rows, older, rows[0]["id"] if rows and more_newer else None)
    rows = _rows(conn, Q.console_execution_page_older, params)
    more_older = len(rows) > limit
    rows = rows[:limit]
    return Page(
        rows,
        rows[-1]["id"] if rows and more_older else None,
        rows[0]["id"] if rows and before is not None else None,
    )


def execution_counts(conn: psycopg.Connection, filters: ExecutionFilter) -> list[StatusCount]:
    """Executions per status (ignoring the status filter itself), in the machine's order."""
    params = {**filters.params(), "window": COUNT_WINDOW}
    live = {r["status"]: int(r["n"]) for r in _rows(conn, Q.console_execution_counts_live, params)}
    recent = _rows(conn, Q.console_execution_counts_recent, params)
    window_full = bool(recent) and int(recent[0]["rows"]) >= COUNT_WINDOW
    finished = {r["status"]: int(r["n"]) for r in recent}
    out = []
    for status in machine.WORKFLOW_STATES:
        if status in machine.WORKFLOW_TERMINAL:
            out.append(StatusCount(status, finished.get(status, 0), not window_full))
        else:
            out.append(StatusCount(status, live.get(status, 0), True))
    return out


def execution(conn: psycopg.Connection, execution_id: int) -> Row:
    row = _one(conn, Q.console_execution_get, {"id": execution_id}, f"execution {execution_id}")
    # `secret: true` parameters of an execution not started yet are still plain: mask them.
    schema = (row.get("definition") or {}).get("parameters") or {}
    row["parameters"] = redact_params(row["parameters"] or {}, secret_parameters(schema))
    return row


def execution_tasks(conn: psycopg.Connection, execution_id: int) -> list[Row]:
    return _rows(conn, Q.console_execution_tasks, {"id": execution_id, "limit": TASK_ROWS})


def task_totals(conn: psycopg.Connection, execution_id: int) -> dict[str, Row]:
    rows = _rows(conn, Q.console_execution_task_totals, {"id": execution_id})
    return {row["task_name"]: row for row in rows}


def latest_statuses(conn: psycopg.Connection, execution_id: int) -> dict[str, str]:
    rows = _rows(
        conn,
        Q.console_execution_latest_statuses,
        {"id": execution_id, "precedence": STATUS_PRECEDENCE},
    )
    return {row["task_name"]: row["status"] for row in rows}


def audit(conn: psycopg.Connection, execution_id: int) -> list[Row]:
    return _rows(conn, Q.console_execution_audit, {"id": execution_id, "limit": AUDIT_ROWS})


def children(conn: psycopg.Connection, execution_id: int) -> list[Row]:
    return _rows(conn, Q.console_execution_children, {"id": execution_id, "limit": CHILD_ROWS})


def open_inquiries(conn: psycopg.Connection, execution_id: int) -> list[Row]:
    return _rows(conn, Q.console_execution_inquiries, {"id": execution_id})


def inquiry(conn: psycopg.Connection, inquiry_id: int) -> Row:
    return _one(conn, Q.console_inquiry_get, {"id": inquiry_id}, f"open inquiry {inquiry_id}")


def workflows(conn: psycopg.Connection) -> list[Row]:
    return _rows(conn, Q.console_workflow_list, {})


def workflow(conn: psycopg.Connection, ref: str) -> Row:
    return _one(conn, Q.console_workflow_get, {"ref": ref}, f"workflow {ref!r}")


def workers(conn: psycopg.Connection) -> list[Row]:
    return _rows(conn, Q.console_worker_list, {})


def queue_depth(conn: psycopg.Connection) -> list[Row]:
    return _rows(conn, Q.console_queue_depth, {})


def identity(conn: psycopg.Connection) -> Row:
    return _one(conn, Q.console_identity, {}, "the session")


# ----------------------------------------------------------------- automation (0009, 0013)

EVENT_PAGE = 50
ENFORCEMENT_ROWS = 100


def rules(conn: psycopg.Connection) -> list[Row]:
    return _rows(conn, Q.console_rule_list, {})


def rule(conn: psycopg.Connection, ref: str) -> Row:
    return _one(conn, Q.console_rule_get, {"ref": ref}, f"rule {ref!r}")


def triggers(conn: psycopg.Connection) -> list[Row]:
    return _rows(conn, Q.console_trigger_list, {})


def timers(conn: psycopg.Connection) -> list[Row]:
    return _rows(conn, Q.console_timer_list, {})


def policies(conn: psycopg.Connection) -> list[Row]:
    return _rows(conn, Q.console_policy_list, {})


def event_page(
    conn: psycopg.Connection, *, trigger: str | None, before: int | None
) -> tuple[list[Row], int | None]:
    """Events newest first; the `before` of the next older page, or None at the end."""
    params = {"trigger": trigger, "before": before, "limit": EVENT_PAGE + 1}
    rows = _rows(conn, Q.console_event_page, params)
    older = rows[EVENT_PAGE - 1]["id"] if len(rows) > EVENT_PAGE else None
    return rows[:EVENT_PAGE], older


def event(conn: psycopg.Connection, event_id: int) -> Row:
    return _one(conn, Q.console_event_get, {"id": event_id}, f"event {event_id}")


def enforcements(
    conn: psycopg.Connection, *, event_id: int | None = None, rule_ref: str | None = None
) -> list[Row]:
    params = {"event": event_id, "rule": rule_ref, "limit": ENFORCEMENT_ROWS}
    return _rows(conn, Q.console_enforcement_list, params)
