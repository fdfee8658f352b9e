"""Claims on the queue, as a worker makes them: claim due rows, renew leases, reap, hand
back.

Nothing here commits: the worker loop owns the transactions (a claim commits at once).
Every write is guarded by the row's status and lease owner, so a stale worker changes
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import class_row

from attune_pg.store.queries import Q, fetch

Json = Any


@dataclass(frozen=True)
class ClaimedTask:
    id: int
    workflow_execution_id: int
    task_name: str
    iteration: int
    item_index: int | None
    attempt: int
    action_ref: str
    input: dict[str, Json]
    timeout: float | None
    ready_at: float  # epoch seconds the row became claimable
    claimed_at: float
    # Set when a concurrency policy (`cancel`) refused the row: end it canceled, unrun.
    refused: dict[str, Json] | None = None
    trace_id: str | None = None  # of the root execution (schema/0010)


@dataclass(frozen=True)
class Slots:
    """A worker's free slots, lent to a transaction that creates task rows: up to `free`
    of them may be created already claimed, under `me`'s lease of `lease` seconds
    (schema 0015; store/sql/apply.sql: task_insert). The worker runs them once the
    transaction commits."""

    me: str
    lease: float
    free: int

    def less(self, taken: int) -> Slots:
        return Slots(self.me, self.lease, max(self.free - taken, 0))


def claim_tasks(conn: psycopg.Connection, me: str, n: int, lease: float) -> list[ClaimedTask]:
    rows = fetch(conn, Q.task_claim, {"me": me, "n": n, "lease": lease}, class_row(ClaimedTask))
    return sorted(rows, key=lambda t: t.id)


def next_due_in(conn: psycopg.Connection) -> tuple[float | None, float | None, float | None]:
    """Seconds until the next scheduled task is due and until the next deadline (a
    workflow timeout, an inquiry expiry or a timer's tick), and that deadline as epoch
    seconds; None where there is none."""
    row = conn.execute(Q.queue_next_due).fetchone()
    if row is None:
        return None, None, None
    due = None if row[0] is None else float(row[0])
    deadline = None if row[1] is None else float(row[1])
    return due, deadline, None if deadline is None else float(row[2]) + deadline


def heartbeat(
    conn: psycopg.Connection, me: str, task_ids: Sequence[int], lease: float, done: int
) -> list[int]:
    """Extend the leases of the tasks this worker is running, in one statement.

    Only the ids it really runs: a row whose advance was rolled back must be
    allowed to expire and be reaped, not kept alive forever. Returns the ids whose
    execution asked for them to be canceled (cancel_running).
    """
    cancel: list[int] = []
    if task_ids:
        rows = conn.execute(
            Q.task_heartbeat, {"lease": lease, "ids": list(task_ids), "me": me}
        ).fetchall()
        cancel = [row[0] for row in rows if row[1]]
    conn.execute(Q.worker_heartbeat, {"running": len(task_ids), "done": done, "me": me})
    return cancel


def reap_expired(conn: psycopg.Connection, limit: int = 100) -> tuple[int, int]:
    """Hand tasks whose lease expired (their worker died) back to the queue, and close
    those whose execution has ended. Returns (requeued, closed)."""
    row = conn.execute(Q.task_reap, {"n": limit}).fetchone()
    assert row is not None  # two counts, always
    return row[0], row[1]


def hand_back(conn: psycopg.Connection, me: str, task_ids: Sequence[int]) -> int:
    """Graceful stop: give unfinished tasks back so another worker runs them now (those of
    an execution that has ended are closed instead). Returns how many it took back."""
    if not task_ids:
        return 0
    row = conn.execute(Q.task_hand_back, {"ids": list(task_ids), "me": me}).fetchone()
    assert row is not None  # one count, always
    return int(row[0])


def register_worker(
    conn: psycopg.Connection, me: str, hostname: str, pid: int, concurrency: int
) -> None:
    conn.execute(
        Q.worker_register, {"me": me, "hostname": hostname, "pid": pid, "concurrency": concurrency}
    )


def stop_worker(conn: psycopg.Connection, me: str, done: int) -> None:
    conn.execute(Q.worker_stop, {"done": done, "me": me})


def forget_plans(conn: psycopg.Connection) -> None:
    """Re-plan every statement of this session from its next executions on."""
    conn.execute(Q.session_plans_forget)


def plan_generic(conn: psycopg.Connection) -> None:
    """Plan each prepared statement once for any values (worker.loop)."""
    conn.execute(Q.session_plans_generic)
