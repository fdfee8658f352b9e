"""Fence the outcomes an advance carries: the attempts a worker finished (only rows
still running under its lease) and the waiting rows whose inquiry or child ended.

Each returns the `Attempt`s that really ended, the events the conductor is fed;
an outcome the fence drops (a stale worker's) never reaches it. Nothing here commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import class_row, kwargs_row
from psycopg.types.json import Jsonb

from attune_pg.engine.state import Attempt
from attune_pg.machine import TaskStatus
from attune_pg.store import decode
from attune_pg.store.claims import ClaimedTask
from attune_pg.store.queries import Q, fetch

Json = Any
T = TaskStatus


@dataclass(frozen=True)
class Finished:
    """A worker's outcome for a claimed task, to be fenced and advanced."""

    task: ClaimedTask
    status: TaskStatus
    result: Json
    error: dict[str, Json] | None
    park: str | None = None  # "inquiry" | "workflow": the engine parks it in `waiting`


def _attempt(status: str, **columns: Any) -> Attempt:
    return Attempt(status=TaskStatus(status), **columns)


_ATTEMPT = kwargs_row(_attempt)


def _json(value: Json) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def finish_attempts(
    conn: psycopg.Connection, me: str, finished: Sequence[Finished]
) -> list[Attempt]:
    """Fenced completion: only rows still running under our lease are finished.

    A worker whose lease expired (its task was handed to another worker) gets
    nothing back for that row: its late result is dropped, the transition fires once.
    """
    rows = fetch(
        conn,
        Q.task_finish,
        {
            "me": me,
            "rows": Jsonb(
                [
                    {
                        "id": f.task.id,
                        "attempt": f.task.attempt,
                        "status": f.status,
                        "result": f.result,
                        "error": f.error,
                    }
                    for f in finished
                ]
            ),
        },
        _ATTEMPT,
    )
    return sorted(rows, key=lambda a: a.task_execution_id)


@dataclass(frozen=True)
class _Ended:
    """A waiting row whose inquiry ended or whose child finished (task_waiting_ended)."""

    task_id: int
    inquiry_id: int | None
    inquiry_status: str | None
    response: Json
    responded_by: str | None
    child_id: int | None
    child_status: str | None
    child_output: Json
    child_error: Json


def finish_waiting(conn: psycopg.Connection, execution_ids: Sequence[int]) -> list[Attempt]:
    """Waiting tasks whose inquiry ended or whose child finished: end them now."""

    ended = fetch(conn, Q.task_waiting_ended, {"ids": list(execution_ids)}, class_row(_Ended))
    if not ended:
        return []
    outcomes = [_waiting_outcome(e) for e in ended]
    done = fetch(
        conn,
        Q.task_finish_waiting,
        {
            "ids": [o[0] for o in outcomes],
            "statuses": [o[1] for o in outcomes],
            "results": [_json(o[2]) for o in outcomes],
            "errors": [_json(o[3]) for o in outcomes],
        },
        _ATTEMPT,
    )
    return sorted(done, key=lambda a: a.task_execution_id)


def _waiting_outcome(e: _Ended) -> tuple[int, TaskStatus, Json, Json]:
    reason = decode.problem(e.response, e.child_output, e.child_error)
    if reason is not None:
        # Quarantine the one row: the waiting task fails, every other answer goes on.
        what = (
            f"inquiry {e.inquiry_id}'s response"
            if e.inquiry_id
            else f"child execution {e.child_id}'s outcome"
        )
        return (
            e.task_id,
            T.FAILED,
            None,
            {
                "type": "Quarantined",
                "message": f"{what} cannot be processed: {reason} (setting json_max_depth)",
            },
        )
    if e.inquiry_id is not None and e.inquiry_status is not None:
        if e.inquiry_status == "responded":
            result: dict[str, Json] = {}
            if isinstance(e.response, dict):
                result.update(e.response)
            result.update({"response": e.response, "responded_by": e.responded_by})
            return e.task_id, T.SUCCEEDED, result, None
        if e.inquiry_status == "timed_out":
            expired = {
                "type": "InquiryExpired",
                "message": f"inquiry {e.inquiry_id} expired unanswered",
            }
            return e.task_id, T.TIMED_OUT, None, expired
        return e.task_id, T.CANCELED, None, None
    message = ""
    if isinstance(e.child_error, dict):
        message = str(e.child_error.get("message", ""))
    if e.child_status == "succeeded":
        return e.task_id, T.SUCCEEDED, e.child_output, None
    if e.child_status == "failed":
        error = {
            "type": "ChildFailed",
            "message": f"child execution {e.child_id} failed" + (f": {message}" if message else ""),
            "execution_id": e.child_id,
        }
        return e.task_id, T.FAILED, None, error
    if e.child_status == "timed_out":
        late = {"type": "ChildTimedOut", "message": f"child execution {e.child_id} timed out"}
        return e.task_id, T.TIMED_OUT, None, late
    return e.task_id, T.CANCELED, None, None
