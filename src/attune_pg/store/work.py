"""The worker's SQL: claim, lock, fence, load snapshots, apply commands, reap.

Nothing here commits: callers (advance.py, worker/) own the transactions. Every
status write is guarded by the row's current status (and, for completions, by the
lease owner and attempt), so a stale actor changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from attune_pg import machine
from attune_pg.engine.state import (
    Attempt,
    Budget,
    Execution,
    TaskState,
)
from attune_pg.settings import Settings
from attune_pg.spec.model import WorkflowSpec
from attune_pg.store import decode
from attune_pg.store.queries import Q

log = logging.getLogger("attune_pg.store")

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
    # Set when a concurrency policy (`cancel`) refused the row: end it canceled, unrun.
    refused: dict[str, Json] | None = None


@dataclass(frozen=True)
class Finished:
    """A worker's outcome for a claimed task, to be fenced and advanced."""

    task: ClaimedTask
    status: str
    result: Json
    error: dict[str, Json] | None
    park: str | None = None  # "inquiry" | "workflow": the engine parks it in `waiting`


# ----------------------------------------------------------------- claiming

_CLAIM = """
UPDATE attune.task_execution t
   SET status = 'running', lease_owner = %(me)s,
       lease_expires_at = now() + make_interval(secs => %(lease)s),
       started_at = now(), claims = t.claims + 1
 WHERE t.id IN (SELECT id FROM attune.task_execution
                 WHERE status = 'scheduled' AND run_at <= now()
                 ORDER BY priority, fair_key, id
                 FOR UPDATE SKIP LOCKED
                 LIMIT %(n)s)
RETURNING t.id, t.workflow_execution_id, t.task_name, t.iteration, t.item_index, t.attempt,
          t.action_ref, t.input, t.timeout,
          extract(epoch FROM t.run_at)::float8, extract(epoch FROM now())::float8,
          CASE WHEN t.policy_ref IS NOT NULL AND NOT t.policy_slot THEN t.error END
"""


def claim_tasks(conn: psycopg.Connection, me: str, n: int, lease: float) -> list[ClaimedTask]:
    rows = conn.execute(_CLAIM, {"me": me, "n": n, "lease": lease}).fetchall()
    return sorted((ClaimedTask(*row) for row in rows), key=lambda t: t.id)


def next_due_in(conn: psycopg.Connection) -> tuple[float | None, float | None, float | None]:
    """Seconds until the next scheduled task is due and until the next deadline (a
    workflow timeout, an inquiry expiry or a timer's tick), and that deadline as epoch
    seconds; None where there is none. Reads only the partial indexes of live rows.
    (Rows a concurrency policy delays wait at run_at = infinity: not a due time.)"""
    row = conn.execute(
        "SELECT extract(epoch FROM (SELECT min(run_at) FROM attune.task_execution"
        "                            WHERE status = 'scheduled' AND run_at < 'infinity')"
        "                  - now())::float8,"
        " extract(epoch FROM least("
        "   (SELECT min(timeout_at) FROM attune.workflow_execution"
        "     WHERE status NOT IN ('succeeded', 'failed', 'canceled', 'timed_out')"
        "       AND status IN ('running', 'pausing', 'paused')),"
        "   (SELECT min(expires_at) FROM attune.inquiry WHERE status = 'pending'),"
        "   (SELECT min(next_fire_at) FROM attune.timer WHERE next_fire_at IS NOT NULL))"
        "   - now())::float8,"
        " extract(epoch FROM now())::float8"
    ).fetchone()
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
            "UPDATE attune.task_execution SET lease_expires_at = now() + make_interval(secs => %s)"
            " WHERE id = ANY(%s) AND status = 'running' AND lease_owner = %s"
            " RETURNING id, cancel_requested",
            (lease, list(task_ids), me),
        ).fetchall()
        cancel = [row[0] for row in rows if row[1]]
    running = len(task_ids)
    conn.execute(
        "UPDATE attune.worker SET heartbeat_at = now(), running = %s, tasks_done = %s"
        " WHERE id = %s",
        (running, done, me),
    )
    return cancel


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

# Definition snapshots are immutable, so each is parsed once per process, keyed by
# its md5; the advance then reads 32 bytes instead of the whole definition.
_SPECS: dict[str, WorkflowSpec] = {}

# A root in one of these statuses stops its whole tree (execution_follow_root).
_STOPPING = frozenset({"canceling", "canceled", "failed", "succeeded", "timed_out"})


def lock_executions(
    conn: psycopg.Connection,
    ids: Sequence[int] = (),
    *,
    requested: int = 0,
    one: int | None = None,
    settings: Settings | None = None,
) -> tuple[list[Execution], float]:
    """Lock workflow rows in id order (the global lock order, DESIGN §8), or claim up
    to `requested` executions waiting to start (or just the requested execution `one`).
    Returns them and the DB clock.

    Rows a worker cannot process are failed here (quarantined) and left out: a value
    that does not decode, a definition that does not load. Executions whose root is
    canceling or ended are stopped first (a requested one is canceled and left out).
    Each tree's executions share one `Budget` (settings max_task_rows, max_descendants).
    """
    if one is not None:
        rows = conn.execute(Q.execution_claim_one, {"id": one}).fetchall()
    elif requested:
        rows = conn.execute(Q.execution_claim_requested, {"n": requested}).fetchall()
    else:
        rows = conn.execute(Q.execution_lock, {"ids": list(ids)}).fetchall()
    if not rows:
        return [], 0.0
    now = float(rows[0][-1])
    bad: list[tuple[int, dict[str, Json]]] = []
    for row in rows:
        if row[3] is None:
            # No snapshot (a row edited by hand?): fail it rather than poison every batch.
            bad.append((row[0], _error("InternalError", "definition snapshot is missing")))
        elif (reason := decode.problem(*row[4:10])) is not None:
            bad.append((row[0], _undecodable(row[0], reason)))
    missing = {row[0]: row[3] for row in rows if row[3] is not None and row[3] not in _SPECS}
    if missing:
        if len(_SPECS) > 1024:
            _SPECS.clear()
        for digest, definition in conn.execute(Q.execution_definitions, {"ids": list(missing)}):
            try:
                if isinstance(definition, decode.Undecodable):
                    raise ValueError(definition.reason)
                _SPECS[digest] = WorkflowSpec.from_dict(definition)
            except Exception as exc:  # a snapshot this version cannot read
                for execution_id, want in missing.items():
                    if want == digest:
                        bad.append(
                            (
                                execution_id,
                                _error(
                                    "Quarantined",
                                    f"execution {execution_id}: its definition snapshot cannot be"
                                    f" loaded ({type(exc).__name__}: {str(exc)[:300]})",
                                ),
                            )
                        )
    if bad:
        quarantine(conn, bad)
        dropped = {i for i, _ in bad}
        rows = [row for row in rows if row[0] not in dropped]
    rows = _follow_root(conn, rows)
    limits = settings or Settings()
    budgets: dict[int, Budget] = {}
    executions = []
    for row in rows:
        root_id, used_executions, used_rows = row[14], row[17], row[18]
        if root_id not in budgets:
            budgets[root_id] = Budget(
                root_id,
                rows_left=max(limits.max_task_rows - used_rows, 0),
                executions_left=max(limits.max_descendants - used_executions, 0),
            )
        executions.append(_execution(row, budgets[root_id]))
    return executions, now


def _error(kind: str, message: str) -> dict[str, Json]:
    return {"type": kind, "message": message}


def _undecodable(execution_id: int, reason: str) -> dict[str, Json]:
    return _error(
        "Quarantined",
        f"execution {execution_id}: a JSON value of its row cannot be processed: {reason}"
        " (setting json_max_depth bounds new values)",
    )


def _follow_root(conn: psycopg.Connection, rows: list[Any]) -> list[Any]:
    """Stop executions whose root is stopping; drop the requested ones (now canceled)."""
    follow = [
        row
        for row in rows
        if row[14] != row[0]
        and row[15] in _STOPPING
        and row[2] in ("requested", "running", "pausing", "paused")
    ]
    if not follow:
        return rows
    changed: dict[int, str] = dict(
        conn.execute(
            Q.execution_follow_root,
            {
                "ids": [row[0] for row in follow],
                "policies": [row[16] or "allow_finish" for row in follow],
            },
        ).fetchall()
    )
    out = []
    for row in rows:
        status = changed.get(row[0])
        if status == "canceled":
            continue
        if status is not None:
            row = (*row[:2], status, *row[3:13], row[16] or "allow_finish", *row[14:])
        out.append(row)
    return out


def quarantine(conn: psycopg.Connection, failures: Sequence[tuple[int, dict[str, Json]]]) -> None:
    """Fail executions a worker cannot process, and close their open rows (so neither the
    start, the claim nor the control pass picks them up again)."""
    if not failures:
        return
    for execution_id, error in failures:
        log.error("quarantined execution %s: %s", execution_id, error.get("message"))
    conn.execute(
        Q.execution_quarantine,
        {"ids": [i for i, _ in failures], "errors": [Jsonb(e) for _, e in failures]},
    )


def charge_budgets(conn: psycopg.Connection, executions: Iterable[Execution]) -> None:
    """Record what this transaction took from each tree's budget. Call it last."""
    budgets = {id(e.budget): e.budget for e in executions if e.budget is not None}
    taken = [b for b in budgets.values() if b.rows_taken or b.executions_taken]
    if not taken:
        return
    conn.execute(
        Q.budget_charge,
        {
            "roots": [b.root_id for b in taken],
            "executions": [b.executions_taken for b in taken],
            "rows": [b.rows_taken for b in taken],
        },
    )
    for b in taken:
        b.rows_taken = b.executions_taken = 0


def signing_key(conn: psycopg.Connection) -> bytes:
    row = conn.execute(Q.signing_key_get).fetchone()
    return b"" if row is None else bytes(row[0])


def _execution(row: Sequence[Any], budget: Budget) -> Execution:
    (
        id_,
        ref,
        status,
        digest,
        parameters,
        vars_,
        active,
        error,
        output,
        pack_config,
        login,
        started_at,
        depth,
        cancel_policy,
        root_id,
        *_rest,
    ) = row
    return Execution(
        id=id_,
        ref=ref,
        status=status,
        spec=_SPECS[digest],
        parameters=parameters,
        vars=vars_,
        active_tasks=active,
        error=error,
        output=output,
        pack_config=pack_config,
        login=login,
        started_at=started_at,
        depth=depth,
        cancel_policy=cancel_policy,
        root_id=root_id,
        budget=budget,
    )


STATE_COLUMNS = (
    "task_name, iteration, status, join_required, join_arrivals, items_total,"
    " items_released, items_done, items_failed, result, error, unhandled, route, join_from"
)


def state_of(row: Sequence[Any]) -> TaskState:
    """A task_state row (the columns above) as a TaskState."""
    *columns, join_from = row
    return replace(TaskState(*columns), join_from=tuple(join_from or ()))


def latest_states_many(
    conn: psycopg.Connection, ids: Sequence[int]
) -> dict[int, list[TaskState]]:
    """The latest iteration of each task in each route (branch), per execution."""
    out: dict[int, list[TaskState]] = {i: [] for i in ids}
    rows = conn.execute(
        f"SELECT DISTINCT ON (workflow_execution_id, task_name, route) workflow_execution_id,"
        f" {STATE_COLUMNS} FROM attune.task_state WHERE workflow_execution_id = ANY(%s)"
        " ORDER BY workflow_execution_id, task_name, route, iteration DESC",
        (list(ids),),
    ).fetchall()
    for row in rows:
        out[row[0]].append(state_of(row[1:]))
    return out


def states_of(
    conn: psycopg.Connection, keys: Iterable[tuple[int, str, int]]
) -> list[tuple[int, TaskState]]:
    """Specific (execution, task, iteration) states: older iterations still running."""
    keys = list(keys)
    if not keys:
        return []
    rows = conn.execute(
        f"SELECT workflow_execution_id, {STATE_COLUMNS} FROM attune.task_state"
        " WHERE (workflow_execution_id, task_name, iteration) IN"
        " (SELECT * FROM unnest(%s::bigint[], %s::text[], %s::int[]))",
        ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]),
    ).fetchall()
    return [(row[0], state_of(row[1:])) for row in rows]


_FINISH = """
UPDATE attune.task_execution t
   SET status = v.status, result = v.result, error = v.error,
       lease_owner = NULL, lease_expires_at = NULL
  FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(statuses)s::text[],
              %(results)s::jsonb[], %(errors)s::jsonb[]) AS v(id, attempt, status, result, error)
 WHERE t.id = v.id AND t.attempt = v.attempt AND t.status = 'running' AND t.lease_owner = %(me)s
RETURNING t.id, t.workflow_execution_id, t.task_name, t.iteration, t.item_index, t.attempt,
          t.action_ref, t.input,
          t.status, t.result, t.error
"""


def finish_attempts(
    conn: psycopg.Connection, me: str, finished: Sequence[Finished]
) -> list[Attempt]:
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


def fail_executions(
    conn: psycopg.Connection, failures: Sequence[tuple[int, dict[str, Json]]]
) -> None:
    """Last resort for a bug in advancing: fail the executions with the error."""
    conn.execute(
        "UPDATE attune.workflow_execution e SET status = 'failed', error = v.error"
        " FROM unnest(%s::bigint[], %s::jsonb[]) AS v(id, error)"
        " WHERE e.id = v.id AND e.status = ANY(%s)",
        (
            [i for i, _ in failures],
            [Jsonb(err) for _, err in failures],
            list(machine.sources("workflow", "fail")),
        ),
    )


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
        # Canceled items (never run) stay as null, so positions match item indices.
        results.append(None if status == "canceled" else result)
        if status not in ("succeeded", "canceled"):
            failed.append(index)
    return results, failed
