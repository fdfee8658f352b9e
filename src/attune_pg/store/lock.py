"""Lock the executions an advance works on, as the conductor's `Execution`s.

`lock_executions` locks workflow rows in id order (the global lock order, DESIGN §8)
or claims executions waiting to start, and leaves out what a worker cannot process
(quarantined: failed with the cause). The rest of an execution's transaction-wide
bookkeeping is here too: the tree's spawn budget, charged last, and the last-resort
failure of executions whose advance hit a bug. Nothing here commits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from attune_pg.engine.state import Budget, Execution
from attune_pg.machine import WORKFLOW_LIVE, WORKFLOW_STOPPING, WorkflowStatus
from attune_pg.settings import Settings
from attune_pg.spec.model import WorkflowSpec
from attune_pg.store import decode
from attune_pg.store.queries import Q, fetch, named_row

log = logging.getLogger("attune_pg.store")

Json = Any

# Definition snapshots are immutable, so each is parsed once per process, keyed by
# its md5; the advance then reads 32 bytes instead of the whole definition.
_SPECS: dict[str, WorkflowSpec] = {}


class _Locked(NamedTuple):
    """A row of execution_lock (and of the claims of requested executions)."""

    id: int
    ref: str
    status: str
    digest: str | None
    parameters: Json
    vars: Json
    active_tasks: int
    error: Json
    output: Json
    pack_config: Json
    login: str
    started_at: float | None
    depth: int
    cancel_policy: str | None
    root_id: int
    root_status: str
    root_cancel_policy: str | None
    used_executions: int
    used_rows: int
    trace_id: str | None
    now: float
    priority: int = 0  # read by the claims of requested executions (StartCursor)


_LOCKED = named_row(_Locked)


@dataclass
class StartCursor:
    """Where a worker's next claim of requested executions resumes: after the last
    (priority, id) it started, so that it does not walk again the index entries of the
    executions it started before (under an old snapshot vacuum removes none of them, and
    a scan from the head walks every one). From the head again every `rescan_seconds`,
    and when the resumed scan finds nothing (at most every `retry_seconds`): a row
    skipped while another worker held it, or a new one of a better priority, waits that
    long, or until the next poll of an idle worker."""

    after: tuple[int, int] | None = None
    rescan_seconds: float = 1.0
    retry_seconds: float = 0.25
    head_at: float = float("-inf")  # monotonic time of the last scan from the head
    # Where this transaction's claim got to: the cursor moves there once it commits (a
    # rolled-back or rerun transaction started nothing, so it must not move the cursor).
    moved: bool = False
    to: tuple[int, int] | None = None

    def resume_from(self) -> tuple[int, int] | None:
        if time.monotonic() - self.head_at >= self.rescan_seconds:
            return None
        return self.after

    def head_again(self) -> bool:
        return time.monotonic() - self.head_at >= self.retry_seconds

    def move(self, to: tuple[int, int] | None) -> None:
        self.moved, self.to = True, to

    def committed(self) -> None:
        if self.moved:
            self.after = self.to
        self.moved = False

    def rolled_back(self) -> None:
        self.moved = False


@dataclass(frozen=True)
class _Definition:
    digest: str
    definition: Json


def lock_executions(
    conn: psycopg.Connection,
    ids: Sequence[int] = (),
    *,
    requested: int = 0,
    one: int | None = None,
    settings: Settings | None = None,
    cursor: StartCursor | None = None,
) -> tuple[list[Execution], float]:
    """Lock workflow rows in id order, or claim up to `requested` executions waiting to
    start (or just the requested execution `one`). Returns them and the DB clock.

    Rows a worker cannot process are failed here (quarantined) and left out: a value
    that does not decode, a definition that does not load. Executions whose root is
    canceling or ended are stopped first (a requested one is canceled and left out).
    Each tree's executions share one `Budget` (settings max_task_rows, max_descendants).
    """
    if one is not None:
        rows = fetch(conn, Q.execution_claim_one, {"id": one}, _LOCKED)
    elif requested:
        rows = _claim_requested(conn, requested, cursor)
    else:
        rows = fetch(conn, Q.execution_lock, {"ids": list(ids)}, _LOCKED)
    if not rows:
        return [], 0.0
    now = rows[0].now
    bad: list[tuple[int, dict[str, Json]]] = []
    for r in rows:
        if r.digest is None:
            # No snapshot (a row edited by hand?): fail it rather than poison every batch.
            bad.append((r.id, _error("InternalError", "definition snapshot is missing")))
        elif (
            reason := decode.problem(
                r.parameters, r.vars, r.active_tasks, r.error, r.output, r.pack_config
            )
        ) is not None:
            bad.append((r.id, _undecodable(r.id, reason)))
    missing = {r.id: r.digest for r in rows if r.digest is not None and r.digest not in _SPECS}
    if missing:
        bad.extend(_load_definitions(conn, missing))
    if bad:
        quarantine(conn, bad)
        dropped = {i for i, _ in bad}
        rows = [r for r in rows if r.id not in dropped]
    rows = _follow_root(conn, rows)
    limits = settings or Settings()
    budgets: dict[int, Budget] = {}
    executions = []
    for r in rows:
        if r.root_id not in budgets:
            budgets[r.root_id] = Budget(
                r.root_id,
                rows_left=max(limits.max_task_rows - r.used_rows, 0),
                executions_left=max(limits.max_descendants - r.used_executions, 0),
            )
        executions.append(_execution(r, budgets[r.root_id]))
    return executions, now


def _claim_requested(conn: psycopg.Connection, n: int, cursor: StartCursor | None) -> list[_Locked]:
    after = cursor.resume_from() if cursor is not None else None
    if after is not None:
        params = {"n": n, "priority": after[0], "id": after[1]}
        rows = fetch(conn, Q.execution_claim_requested_after, params, _LOCKED)
        if rows or not cursor or not cursor.head_again():
            if rows and cursor:
                cursor.move((rows[-1].priority, rows[-1].id))
            return rows
    rows = fetch(conn, Q.execution_claim_requested, {"n": n}, _LOCKED)
    if cursor is not None:
        cursor.head_at = time.monotonic()
        cursor.move((rows[-1].priority, rows[-1].id) if rows else None)
    return rows


def _load_definitions(
    conn: psycopg.Connection, missing: dict[int, str]
) -> list[tuple[int, dict[str, Json]]]:
    """Parse the snapshots not cached yet; the executions whose snapshot cannot load."""
    if len(_SPECS) > 1024:
        _SPECS.clear()
    bad = []
    for d in fetch(conn, Q.execution_definitions, {"ids": list(missing)}, class_row(_Definition)):
        try:
            if isinstance(d.definition, decode.Undecodable):
                raise ValueError(d.definition.reason)
            _SPECS[d.digest] = WorkflowSpec.from_dict(d.definition)
        except Exception as exc:  # a snapshot this version cannot read
            for execution_id, want in missing.items():
                if want == d.digest:
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
    return bad


def _error(kind: str, message: str) -> dict[str, Json]:
    return {"type": kind, "message": message}


def _undecodable(execution_id: int, reason: str) -> dict[str, Json]:
    return _error(
        "Quarantined",
        f"execution {execution_id}: a JSON value of its row cannot be processed: {reason}"
        " (setting json_max_depth bounds new values)",
    )


def _follow_root(conn: psycopg.Connection, rows: list[_Locked]) -> list[_Locked]:
    """Stop executions whose root is stopping; drop the requested ones (now canceled)."""
    follow = [
        r
        for r in rows
        if r.root_id != r.id and r.root_status in WORKFLOW_STOPPING and r.status in WORKFLOW_LIVE
    ]
    if not follow:
        return rows
    changed: dict[int, str] = dict(
        conn.execute(
            Q.execution_follow_root,
            {
                "ids": [r.id for r in follow],
                "policies": [r.root_cancel_policy or "allow_finish" for r in follow],
            },
        ).fetchall()
    )
    out = []
    for r in rows:
        status = changed.get(r.id)
        if status == WorkflowStatus.CANCELED:
            continue
        if status is not None:
            r = r._replace(status=status, cancel_policy=r.root_cancel_policy or "allow_finish")
        out.append(r)
    return out


def _execution(r: _Locked, budget: Budget) -> Execution:
    assert r.digest is not None
    return Execution(
        id=r.id,
        ref=r.ref,
        status=WorkflowStatus(r.status),
        spec=_SPECS[r.digest],
        parameters=r.parameters if r.parameters is not None else {},
        vars=r.vars if r.vars is not None else {},
        active_tasks=r.active_tasks,
        error=r.error,
        output=r.output,
        pack_config=r.pack_config if r.pack_config is not None else {},
        login=r.login,
        started_at=r.started_at,
        depth=r.depth,
        cancel_policy=r.cancel_policy,
        root_id=r.root_id,
        budget=budget,
        trace_id=r.trace_id,
    )


def quarantine(conn: psycopg.Connection, failures: Sequence[tuple[int, dict[str, Json]]]) -> None:
    """Fail executions a worker cannot process, and close their open rows (so neither the
    start, the claim nor the request pass picks them up again)."""
    if not failures:
        return
    for execution_id, error in failures:
        log.error("quarantined execution %s: %s", execution_id, error.get("message"))
    _fail_and_close(conn, failures)


def lock_ids(conn: psycopg.Connection, ids: Sequence[int]) -> None:
    """Lock these executions (in id order; a no-op for those this transaction holds)."""
    conn.execute(Q.execution_lock_ids, {"ids": sorted(ids)})


def _fail_and_close(
    conn: psycopg.Connection, failures: Sequence[tuple[int, dict[str, Json]]]
) -> None:
    # Locked first, in a statement of its own: the quarantine's snapshot then sees every
    # task row an advance of these executions committed before the lock was granted.
    lock_ids(conn, [i for i, _ in failures])
    conn.execute(
        Q.execution_quarantine,
        {"ids": [i for i, _ in failures], "errors": [Jsonb(e) for _, e in failures]},
    )


def fail_executions(
    conn: psycopg.Connection, failures: Sequence[tuple[int, dict[str, Json]]]
) -> None:
    """Last resort for a bug in advancing: fail the executions with the error, and close
    their queued rows as a quarantine does (left queued, they would run for an execution
    that had ended)."""
    _fail_and_close(conn, failures)


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
