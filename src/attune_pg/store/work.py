"""The worker's SQL: claim, lock, fence, load snapshots, apply commands, reap.

Nothing here commits: callers (advance.py, worker/) own the transactions. Every
status write is guarded by the row's current status (and, for completions, by the
lease owner and attempt), so a stale actor changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from attune_pg import machine
from attune_pg.engine.state import (
    AggregateItems,
    Attempt,
    CancelPendingItems,
    Command,
    Execution,
    NewTaskRows,
    Publish,
    ReleaseItems,
    TaskState,
    WriteExecution,
    WriteTaskState,
)
from attune_pg.spec.model import WorkflowSpec

Json = Any


class StaleWrite(Exception):
    """A guarded write matched no row: another actor got there first. Roll back."""


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


@dataclass(frozen=True)
class Finished:
    """A worker's outcome for a claimed task, to be fenced and advanced."""

    task: ClaimedTask
    status: str
    result: Json
    error: dict[str, Json] | None


# ----------------------------------------------------------------- claiming

_CLAIM = """
UPDATE attune.task_execution t
   SET status = 'running', lease_owner = %(me)s,
       lease_expires_at = now() + make_interval(secs => %(lease)s),
       started_at = now(), claims = t.claims + 1
 WHERE t.id IN (SELECT id FROM attune.task_execution
                 WHERE status = 'scheduled' AND run_at <= now()
                 ORDER BY priority, run_at, id
                 FOR UPDATE SKIP LOCKED
                 LIMIT %(n)s)
RETURNING t.id, t.workflow_execution_id, t.task_name, t.iteration, t.item_index, t.attempt,
          t.action_ref, t.input, t.timeout,
          extract(epoch FROM t.run_at)::float8, extract(epoch FROM now())::float8
"""


def claim_tasks(conn: psycopg.Connection, me: str, n: int, lease: float) -> list[ClaimedTask]:
    rows = conn.execute(_CLAIM, {"me": me, "n": n, "lease": lease}).fetchall()
    return sorted((ClaimedTask(*row) for row in rows), key=lambda t: t.id)


def next_due_in(conn: psycopg.Connection) -> float | None:
    """Seconds until the next scheduled task is due (<= 0: due now), None if none."""
    row = conn.execute(
        "SELECT extract(epoch FROM min(run_at) - now())::float8 FROM attune.task_execution"
        " WHERE status = 'scheduled'"
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def lock_requested(conn: psycopg.Connection, n: int) -> list[int]:
    rows = conn.execute(
        "SELECT id FROM attune.workflow_execution WHERE status = 'requested'"
        " ORDER BY priority, id FOR UPDATE SKIP LOCKED LIMIT %s",
        (n,),
    ).fetchall()
    return [row[0] for row in rows]


def heartbeat(
    conn: psycopg.Connection, me: str, task_ids: Sequence[int], lease: float, done: int
) -> None:
    """Extend the leases of the tasks this worker is running, in one statement.

    Only the ids it really runs: a row whose advance was rolled back must be
    allowed to expire and be reaped, not kept alive forever.
    """
    if task_ids:
        conn.execute(
            "UPDATE attune.task_execution SET lease_expires_at = now() + make_interval(secs => %s)"
            " WHERE id = ANY(%s) AND status = 'running' AND lease_owner = %s",
            (lease, list(task_ids), me),
        )
    running = len(task_ids)
    conn.execute(
        "UPDATE attune.worker SET heartbeat_at = now(), running = %s, tasks_done = %s WHERE id = %s",
        (running, done, me),
    )


def reap_expired(conn: psycopg.Connection, limit: int = 100) -> int:
    """Hand tasks whose lease expired (their worker died) back to the queue."""
    src = machine.sources("task", "requeue")
    cur = conn.execute(
        "UPDATE attune.task_execution t SET status = 'scheduled', run_at = now(),"
        " lease_owner = NULL, lease_expires_at = NULL"
        " WHERE t.id IN (SELECT id FROM attune.task_execution"
        "                 WHERE status = ANY(%s) AND lease_expires_at < now()"
        "                 ORDER BY lease_expires_at FOR UPDATE SKIP LOCKED LIMIT %s)",
        (list(src), limit),
    )
    return cur.rowcount


def hand_back(conn: psycopg.Connection, me: str, task_ids: Sequence[int]) -> int:
    """Graceful stop: give unfinished tasks back so another worker runs them now."""
    if not task_ids:
        return 0
    cur = conn.execute(
        "UPDATE attune.task_execution SET status = 'scheduled', run_at = now(),"
        " lease_owner = NULL, lease_expires_at = NULL"
        " WHERE id = ANY(%s) AND status = 'running' AND lease_owner = %s",
        (list(task_ids), me),
    )
    return cur.rowcount


def register_worker(
    conn: psycopg.Connection, me: str, hostname: str, pid: int, concurrency: int
) -> None:
    conn.execute(
        "INSERT INTO attune.worker (id, hostname, pid, concurrency) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL",
        (me, hostname, pid, concurrency),
    )


def stop_worker(conn: psycopg.Connection, me: str, done: int) -> None:
    conn.execute(
        "UPDATE attune.worker SET stopped_at = now(), running = 0, tasks_done = %s WHERE id = %s",
        (done, me),
    )


# ----------------------------------------------------------------- advancing

_EXECUTION_COLUMNS = (
    "id, workflow_ref, status, definition, parameters, vars, active_tasks, error, output,"
    " pack_config, requested_by, extract(epoch FROM started_at)::float8, depth,"
    " extract(epoch FROM now())::float8"
)


def lock_execution(conn: psycopg.Connection, execution_id: int) -> tuple[Execution, float] | None:
    """Lock the workflow row (always first: see DESIGN §8 lock order); return it and DB now."""
    row = conn.execute(
        f"SELECT {_EXECUTION_COLUMNS} FROM attune.workflow_execution WHERE id = %s FOR UPDATE",
        (execution_id,),
    ).fetchone()
    if row is None:
        return None
    (
        id_,
        ref,
        status,
        definition,
        parameters,
        vars_,
        active,
        error,
        output,
        pack_config,
        requested_by,
        started_at,
        depth,
        now,
    ) = row
    execution = Execution(
        id=id_,
        ref=ref,
        status=status,
        spec=WorkflowSpec.from_dict(definition),
        parameters=parameters,
        vars=vars_,
        active_tasks=active,
        error=error,
        output=output,
        pack_config=pack_config,
        requested_by=requested_by,
        started_at=started_at,
        depth=depth,
    )
    return execution, float(now)


_STATE_COLUMNS = (
    "task_name, iteration, status, join_required, join_arrivals, items_total,"
    " items_released, items_done, items_failed, result, error"
)


def latest_states(conn: psycopg.Connection, execution_id: int) -> dict[str, TaskState]:
    """The newest iteration of every task of one execution (bounded by its task count)."""
    rows = conn.execute(
        f"SELECT DISTINCT ON (task_name) {_STATE_COLUMNS} FROM attune.task_state"
        " WHERE workflow_execution_id = %s ORDER BY task_name, iteration DESC",
        (execution_id,),
    ).fetchall()
    return {row[0]: TaskState(*row) for row in rows}


def states_of(
    conn: psycopg.Connection, execution_id: int, keys: Iterable[tuple[str, int]]
) -> list[TaskState]:
    keys = list(keys)
    if not keys:
        return []
    rows = conn.execute(
        f"SELECT {_STATE_COLUMNS} FROM attune.task_state WHERE workflow_execution_id = %s"
        " AND (task_name, iteration) IN (SELECT * FROM unnest(%s::text[], %s::int[]))",
        (execution_id, [k[0] for k in keys], [k[1] for k in keys]),
    ).fetchall()
    return [TaskState(*row) for row in rows]


_FINISH = """
UPDATE attune.task_execution t
   SET status = v.status, result = v.result, error = v.error,
       lease_owner = NULL, lease_expires_at = NULL
  FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(statuses)s::text[],
              %(results)s::jsonb[], %(errors)s::jsonb[]) AS v(id, attempt, status, result, error)
 WHERE t.id = v.id AND t.attempt = v.attempt AND t.status = 'running' AND t.lease_owner = %(me)s
RETURNING t.id, t.task_name, t.iteration, t.item_index, t.attempt, t.action_ref, t.input,
          t.status, t.result, t.error
"""


def finish_attempts(conn: psycopg.Connection, me: str, finished: Sequence[Finished]) -> list[Attempt]:
    """Fenced completion: only rows still running under our lease are finished.

    A worker whose lease expired (its task was handed to another worker) gets
    nothing back for that row: its late result is dropped, the transition fires once.
    """
    rows = conn.execute(
        _FINISH,
        {
            "me": me,
            "ids": [f.task.id for f in finished],
            "attempts": [f.task.attempt for f in finished],
            "statuses": [f.status for f in finished],
            "results": [Jsonb(f.result) for f in finished],
            "errors": [None if f.error is None else Jsonb(f.error) for f in finished],
        },
    ).fetchall()
    return sorted((Attempt(*row) for row in rows), key=lambda a: a.task_execution_id)


def item_results(
    conn: psycopg.Connection, execution_id: int, task_name: str, iteration: int
) -> tuple[list[Json], list[int]]:
    """Final attempt of every item, in item order: (results, indices that failed)."""
    rows = conn.execute(
        "SELECT DISTINCT ON (item_index) item_index, status, result FROM attune.task_execution"
        " WHERE workflow_execution_id = %s AND task_name = %s AND iteration = %s"
        " AND item_index IS NOT NULL ORDER BY item_index, attempt DESC",
        (execution_id, task_name, iteration),
    ).fetchall()
    results: list[Json] = []
    failed: list[int] = []
    for index, status, result in rows:
        if status == "canceled":
            continue
        results.append(result)
        if status != "succeeded":
            failed.append(index)
    return results, failed


def apply(conn: psycopg.Connection, execution_id: int, commands: Sequence[Command]) -> list[AggregateItems]:
    """Write the conductor's commands; return the aggregations it asked for."""
    aggregates: list[AggregateItems] = []
    for command in commands:
        if isinstance(command, WriteTaskState):
            _write_state(conn, execution_id, command)
        elif isinstance(command, NewTaskRows):
            _insert_tasks(conn, execution_id, command)
        elif isinstance(command, ReleaseItems):
            conn.execute(
                "UPDATE attune.task_execution SET status = 'scheduled', run_at = now()"
                " WHERE id IN (SELECT id FROM attune.task_execution"
                "   WHERE workflow_execution_id = %s AND task_name = %s AND iteration = %s"
                "   AND status = 'pending' ORDER BY item_index LIMIT %s)",
                (execution_id, command.task_name, command.iteration, command.count),
            )
        elif isinstance(command, CancelPendingItems):
            conn.execute(
                "UPDATE attune.task_execution SET status = 'canceled'"
                " WHERE workflow_execution_id = %s AND task_name = %s AND iteration = %s"
                " AND status = 'pending'",
                (execution_id, command.task_name, command.iteration),
            )
        elif isinstance(command, Publish):
            conn.execute(
                "INSERT INTO attune.execution_event (workflow_execution_id, task_name, kind, data)"
                " VALUES (%s, %s, 'publish', %s)",
                (execution_id, command.task_name, Jsonb(command.values)),
            )
        elif isinstance(command, AggregateItems):
            aggregates.append(command)
        elif isinstance(command, WriteExecution):
            _write_execution(conn, execution_id, command)
    return aggregates


def _write_state(conn: psycopg.Connection, execution_id: int, command: WriteTaskState) -> None:
    s = command.state
    values = (
        s.status,
        s.join_required,
        s.join_arrivals,
        s.items_total,
        s.items_released,
        s.items_done,
        s.items_failed,
        None if s.result is None else Jsonb(s.result),
        None if s.error is None else Jsonb(s.error),
    )
    if command.before is None:
        conn.execute(
            "INSERT INTO attune.task_state (workflow_execution_id, task_name, iteration, status,"
            " join_required, join_arrivals, items_total, items_released, items_done, items_failed,"
            " result, error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (execution_id, s.name, s.iteration, *values),
        )
        return
    cur = conn.execute(
        "UPDATE attune.task_state SET status = %s, join_required = %s, join_arrivals = %s,"
        " items_total = %s, items_released = %s, items_done = %s, items_failed = %s,"
        " result = %s, error = %s"
        " WHERE workflow_execution_id = %s AND task_name = %s AND iteration = %s AND status = %s",
        (*values, execution_id, s.name, s.iteration, command.before),
    )
    if cur.rowcount != 1:
        raise StaleWrite(f"task_state {execution_id}/{s.name}/{s.iteration} is no longer {command.before}")


def _insert_tasks(conn: psycopg.Connection, execution_id: int, command: NewTaskRows) -> None:
    n = len(command.items)
    statuses = ["scheduled" if i < command.release else "pending" for i in range(n)]
    conn.execute(
        "INSERT INTO attune.task_execution (workflow_execution_id, task_name, iteration,"
        " item_index, attempt, action_ref, status, input, priority, run_at, timeout)"
        " SELECT %s, %s, %s, v.item_index, %s, %s, v.status, v.input, e.priority,"
        "        now() + make_interval(secs => %s), %s"
        "   FROM attune.workflow_execution e,"
        "        unnest(%s::int[], %s::text[], %s::jsonb[]) AS v(item_index, status, input)"
        "  WHERE e.id = %s",
        (
            execution_id,
            command.task_name,
            command.iteration,
            command.attempt,
            command.action_ref,
            command.delay,
            command.timeout,
            [index for index, _ in command.items],
            statuses,
            [Jsonb(value) for _, value in command.items],
            execution_id,
        ),
    )


def _write_execution(conn: psycopg.Connection, execution_id: int, command: WriteExecution) -> None:
    started = ", started_at = now()" if command.before == "requested" else ""
    timeout = (
        ", timeout_at = to_timestamp(%(timeout_at)s)" if command.timeout_at is not None else ""
    )
    cur = conn.execute(
        "UPDATE attune.workflow_execution SET status = %(status)s, vars = %(vars)s,"
        " parameters = %(parameters)s,"
        " active_tasks = %(active)s, error = %(error)s, output = %(output)s"
        f"{started}{timeout}"
        " WHERE id = %(id)s AND status = %(before)s",
        {
            "status": command.status,
            "vars": Jsonb(command.vars),
            "parameters": Jsonb(command.parameters),
            "active": command.active_tasks,
            "error": None if command.error is None else Jsonb(command.error),
            "output": None if command.output is None else Jsonb(command.output),
            "timeout_at": command.timeout_at,
            "id": execution_id,
            "before": command.before,
        },
    )
    if cur.rowcount != 1:
        raise StaleWrite(f"workflow_execution {execution_id} is no longer {command.before}")
