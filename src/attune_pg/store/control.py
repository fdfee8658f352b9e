"""SQL of the control pass: what needs attention, parking and resuming waiting tasks,
cancel/pause side effects, and the timers (inquiry expiry, workflow timeouts).

Nothing here commits; advance.py owns the transaction. Lock order is kept: workflow
rows are locked (by work.lock_executions) before any of their task rows change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from attune_pg.engine.state import Attempt, Execution, LiveRows, TaskState
from attune_pg.machine import WORKFLOW_TERMINAL
from attune_pg.store import decode
from attune_pg.store.work import STATE_COLUMNS, state_of

Json = Any

_TERMINAL = list(WORKFLOW_TERMINAL)
_ENDED_INQUIRY = ["responded", "timed_out", "canceled"]


def candidates(conn: psycopg.Connection, limit: int) -> list[int]:
    """Executions with a control request, an answered/expired inquiry or a finished
    child. Not locked here: lock_executions locks them in id order afterwards."""
    rows = conn.execute(
        "SELECT id FROM ("
        "  SELECT id FROM attune.workflow_execution WHERE control_requested_at IS NOT NULL"
        "  UNION"
        "  SELECT t.workflow_execution_id FROM attune.task_execution t"
        "    JOIN attune.inquiry i ON i.task_execution_id = t.id"
        "   WHERE t.status = 'waiting' AND i.status = ANY(%(ended)s)"
        "  UNION"
        "  SELECT t.workflow_execution_id FROM attune.task_execution t"
        "    JOIN attune.workflow_execution c ON c.parent_task_id = t.id"
        "   WHERE t.status = 'waiting' AND c.status = ANY(%(terminal)s)"
        ") ids ORDER BY id LIMIT %(limit)s",
        {"ended": _ENDED_INQUIRY, "terminal": _TERMINAL, "limit": limit},
    ).fetchall()
    return [row[0] for row in rows]


def take_requests(conn: psycopg.Connection, ids: Sequence[int]) -> set[int]:
    """Clear the control requests of locked executions; return which had one."""
    rows = conn.execute(
        "UPDATE attune.workflow_execution SET control_requested_at = NULL"
        " WHERE id = ANY(%s) AND control_requested_at IS NOT NULL RETURNING id",
        (list(ids),),
    ).fetchall()
    return {row[0] for row in rows}


def running_rows(conn: psycopg.Connection, ids: Sequence[int]) -> dict[int, int]:
    if not ids:
        return {}
    rows = conn.execute(
        "SELECT workflow_execution_id, count(*) FROM attune.task_execution"
        " WHERE workflow_execution_id = ANY(%s) AND status = 'running' GROUP BY 1",
        (list(ids),),
    ).fetchall()
    counts = {i: 0 for i in ids}
    counts.update({row[0]: int(row[1]) for row in rows})
    return counts


def live_rows(conn: psycopg.Connection, execution_id: int) -> dict[tuple[str, int], LiveRows]:
    """Per task state: rows a cancel leaves alive (running, or waiting on a live child)."""
    rows = conn.execute(
        "SELECT t.task_name, t.iteration,"
        " count(*) FILTER (WHERE t.status = 'running'),"
        " count(*) FILTER (WHERE t.status = 'waiting' AND EXISTS ("
        "   SELECT 1 FROM attune.workflow_execution c"
        "    WHERE c.parent_task_id = t.id AND c.status <> ALL(%s)))"
        " FROM attune.task_execution t"
        " WHERE t.workflow_execution_id = %s AND t.status IN ('running', 'waiting')"
        " GROUP BY 1, 2",
        (_TERMINAL, execution_id),
    ).fetchall()
    return {(name, it): LiveRows(int(r), int(w)) for name, it, r, w in rows}




def unhandled_states(conn: psycopg.Connection, execution_id: int) -> list[TaskState]:
    """Every task state whose failure nobody handled (what retry_execution re-runs)."""
    rows = conn.execute(
        f"SELECT {STATE_COLUMNS} FROM attune.task_state"
        " WHERE workflow_execution_id = %s AND unhandled",
        (execution_id,),
    ).fetchall()
    return [state_of(row) for row in rows]


def open_states(conn: psycopg.Connection, execution_id: int) -> list[TaskState]:
    """Every task state still pending or running (older iterations included)."""
    rows = conn.execute(
        f"SELECT {STATE_COLUMNS} FROM attune.task_state"
        " WHERE workflow_execution_id = %s AND status IN ('pending', 'running')",
        (execution_id,),
    ).fetchall()
    return [state_of(row) for row in rows]


# ----------------------------------------------------------------- cancel and pause


def cancel_live(
    conn: psycopg.Connection, execution_ids: Sequence[int], cancel_running: bool
) -> None:
    ids = list(execution_ids)
    conn.execute(
        "UPDATE attune.task_execution SET status = 'canceled', held = false"
        " WHERE workflow_execution_id = ANY(%s) AND status IN ('pending', 'scheduled')",
        (ids,),
    )
    if cancel_running:
        cur = conn.execute(
            "UPDATE attune.task_execution SET cancel_requested = true"
            " WHERE workflow_execution_id = ANY(%s) AND status = 'running'"
            " AND NOT cancel_requested",
            (ids,),
        )
        if cur.rowcount:
            conn.execute("SELECT pg_notify('attune_control', '')")
    conn.execute(
        "UPDATE attune.inquiry SET status = 'canceled'"
        " WHERE workflow_execution_id = ANY(%s) AND status = 'pending'",
        (ids,),
    )
    # Child executions: not started -> canceled; running -> canceling with our policy.
    conn.execute(
        "UPDATE attune.workflow_execution c"
        "   SET status = CASE WHEN c.status = 'requested' THEN 'canceled' ELSE 'canceling' END,"
        "       cancel_policy = coalesce(p.cancel_policy, 'allow_finish'),"
        "       control_requested_at = now()"
        "  FROM attune.task_execution t JOIN attune.workflow_execution p"
        "       ON p.id = t.workflow_execution_id"
        " WHERE c.parent_task_id = t.id AND t.workflow_execution_id = ANY(%s)"
        "   AND t.status = 'waiting' AND c.status IN ('requested', 'running', 'pausing', 'paused')",
        (ids,),
    )
    # Waiting rows with nothing left to wait for (inquiry canceled above) end now.
    conn.execute(
        "UPDATE attune.task_execution t SET status = 'canceled'"
        " WHERE t.workflow_execution_id = ANY(%s) AND t.status = 'waiting'"
        "   AND NOT EXISTS (SELECT 1 FROM attune.workflow_execution c"
        "                    WHERE c.parent_task_id = t.id AND c.status <> ALL(%s))",
        (ids, _TERMINAL),
    )
    conn.execute("SELECT pg_notify('attune_control', '')")


def hold_scheduled(conn: psycopg.Connection, execution_ids: Sequence[int]) -> None:
    ids = list(execution_ids)
    conn.execute(
        "UPDATE attune.task_execution SET status = 'pending', held = true"
        " WHERE workflow_execution_id = ANY(%s) AND status = 'scheduled'",
        (ids,),
    )
    conn.execute(
        "UPDATE attune.workflow_execution c SET status = 'pausing', control_requested_at = now()"
        "  FROM attune.task_execution t"
        " WHERE c.parent_task_id = t.id AND t.workflow_execution_id = ANY(%s)"
        "   AND t.status = 'waiting' AND c.status = 'running'",
        (ids,),
    )
    conn.execute("SELECT pg_notify('attune_control', '')")


# ----------------------------------------------------------------- parking and resuming


@dataclass(frozen=True)
class Park:
    """A claimed task the engine itself handles: it waits for a person or a child."""

    task_execution_id: int
    kind: str  # "inquiry" | "workflow"
    action_ref: str
    input: dict[str, Json]


def park(conn: psycopg.Connection, execution: Execution, parked: Sequence[Park]) -> None:
    """Create the inquiry or the child execution a waiting task waits for."""
    for item in parked:
        if item.kind == "inquiry":
            assigned = item.input.get("assigned_to")
            if isinstance(assigned, list):
                assigned = ",".join(str(a) for a in assigned)
            conn.execute(
                "INSERT INTO attune.inquiry (task_execution_id, workflow_execution_id, prompt,"
                " schema, assigned_to, expires_at) VALUES (%s, %s, %s, %s, %s,"
                " now() + make_interval(secs => %s))",
                (
                    item.task_execution_id,
                    execution.id,
                    str(item.input.get("prompt") or ""),
                    Jsonb(item.input.get("schema") or {}),
                    assigned,
                    item.input.get("timeout"),
                ),
            )
        else:
            conn.execute(
                "INSERT INTO attune.workflow_execution (workflow_ref, parameters, parent_task_id,"
                " root_id, depth, priority, requested_by)"
                " SELECT %s, %s, %s, coalesce(p.root_id, p.id), p.depth + 1, p.priority,"
                "        p.requested_by FROM attune.workflow_execution p WHERE p.id = %s",
                (item.action_ref, Jsonb(item.input), item.task_execution_id, execution.id),
            )


def runnable_workflows(conn: psycopg.Connection, refs: Sequence[str]) -> set[str]:
    rows = conn.execute(
        "SELECT ref FROM attune.workflow_definition WHERE ref = ANY(%s) AND enabled",
        (list(refs),),
    ).fetchall()
    return {row[0] for row in rows}


def finish_waiting(conn: psycopg.Connection, execution_ids: Sequence[int]) -> list[Attempt]:
    """Waiting tasks whose inquiry ended or whose child finished: end them now."""
    rows = conn.execute(
        "SELECT t.id, i.id, i.status, i.response, i.responded_by,"
        "       c.id, c.status, c.output, c.error"
        "  FROM attune.task_execution t"
        "  LEFT JOIN attune.inquiry i ON i.task_execution_id = t.id"
        "  LEFT JOIN attune.workflow_execution c ON c.parent_task_id = t.id"
        " WHERE t.workflow_execution_id = ANY(%s) AND t.status = 'waiting'"
        "   AND (i.status = ANY(%s) OR c.status = ANY(%s))",
        (list(execution_ids), _ENDED_INQUIRY, _TERMINAL),
    ).fetchall()
    if not rows:
        return []
    outcomes = [_waiting_outcome(*row) for row in rows]
    done = conn.execute(
        "UPDATE attune.task_execution t SET status = v.status, result = v.result, error = v.error"
        "  FROM unnest(%s::bigint[], %s::text[], %s::jsonb[], %s::jsonb[])"
        "       AS v(id, status, result, error)"
        " WHERE t.id = v.id AND t.status = 'waiting'"
        " RETURNING t.id, t.workflow_execution_id, t.task_name, t.iteration, t.item_index,"
        "           t.attempt, t.action_ref, t.input, t.status, t.result, t.error",
        (
            [o[0] for o in outcomes],
            [o[1] for o in outcomes],
            [None if o[2] is None else Jsonb(o[2]) for o in outcomes],
            [None if o[3] is None else Jsonb(o[3]) for o in outcomes],
        ),
    ).fetchall()
    return sorted((Attempt(*row) for row in done), key=lambda a: a.task_execution_id)


def _waiting_outcome(
    task_id: int,
    inquiry_id: int | None,
    inquiry_status: str | None,
    response: Json,
    responded_by: str | None,
    child_id: int | None,
    child_status: str | None,
    child_output: Json,
    child_error: Json,
) -> tuple[int, str, Json, Json]:
    reason = decode.problem(response, child_output, child_error)
    if reason is not None:
        # Quarantine the one row: the waiting task fails, every other answer goes on.
        what = (
            f"inquiry {inquiry_id}'s response"
            if inquiry_id
            else f"child execution {child_id}'s outcome"
        )
        return (
            task_id,
            "failed",
            None,
            {
                "type": "Quarantined",
                "message": f"{what} cannot be processed: {reason} (setting json_max_depth)",
            },
        )
    if inquiry_id is not None and inquiry_status is not None:
        if inquiry_status == "responded":
            result: dict[str, Json] = {}
            if isinstance(response, dict):
                result.update(response)
            result.update({"response": response, "responded_by": responded_by})
            return task_id, "succeeded", result, None
        if inquiry_status == "timed_out":
            expired = {
                "type": "InquiryExpired",
                "message": f"inquiry {inquiry_id} expired unanswered",
            }
            return task_id, "timed_out", None, expired
        return task_id, "canceled", None, None
    message = ""
    if isinstance(child_error, dict):
        message = str(child_error.get("message", ""))
    if child_status == "succeeded":
        return task_id, "succeeded", child_output, None
    if child_status == "failed":
        error = {
            "type": "ChildFailed",
            "message": f"child execution {child_id} failed" + (f": {message}" if message else ""),
            "execution_id": child_id,
        }
        return task_id, "failed", None, error
    if child_status == "timed_out":
        late = {"type": "ChildTimedOut", "message": f"child execution {child_id} timed out"}
        return task_id, "timed_out", None, late
    return task_id, "canceled", None, None


# ----------------------------------------------------------------- timers


def expire_inquiries(conn: psycopg.Connection) -> int:
    cur = conn.execute(
        "UPDATE attune.inquiry SET status = 'timed_out'"
        " WHERE status = 'pending' AND expires_at < now()"
    )
    if cur.rowcount:
        conn.execute("SELECT pg_notify('attune_control', '')")
    return cur.rowcount


def time_out_workflows(conn: psycopg.Connection, limit: int = 100) -> int:
    """Executions past their `timeout`: cancel what runs, then end as timed_out."""
    cur = conn.execute(
        "UPDATE attune.workflow_execution SET status = 'canceling',"
        " cancel_policy = 'cancel_running', control_requested_at = now(),"
        " error = jsonb_build_object('type', 'WorkflowTimedOut', 'message',"
        "   format('workflow timed out after %%s s', (definition ->> 'timeout')))"
        " WHERE id IN (SELECT id FROM attune.workflow_execution"
        "               WHERE status IN ('running', 'pausing', 'paused') AND timeout_at < now()"
        "               ORDER BY timeout_at FOR UPDATE SKIP LOCKED LIMIT %s)",
        (limit,),
    )
    if cur.rowcount:
        conn.execute("SELECT pg_notify('attune_control', '')")
    return cur.rowcount
