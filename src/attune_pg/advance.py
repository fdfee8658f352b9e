"""THE transaction: lock workflow rows, fence results, run the conductor, apply.

Two entry points, each one transaction for a whole batch of executions:
- `start_requested`: executions INSERTed as `requested` become `running`.
- `complete`: finished task attempts are fenced and their workflows advanced.

A batch costs a fixed number of statements however many executions it holds
(lock, fence, load states, one write per kind; DESIGN §3.3). Rows are locked in
id order, so two workers advancing overlapping batches queue instead of
deadlocking. A Python error while conducting one execution fails that execution
with the error (it must not wedge the queue or loop forever); a stale guarded
write rolls the batch back and it is retried one execution at a time.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psycopg

from attune_pg.engine.conductor import Conductor, error_of
from attune_pg.engine.state import Context, Execution, TaskState
from attune_pg.spec.model import ActionSpec
from attune_pg.store import work
from attune_pg.store.catalog import DbKV

log = logging.getLogger("attune_pg.advance")

Json = object


@dataclass
class AdvanceStats:
    started: int = 0
    advanced: int = 0
    stale: int = 0
    errors: int = 0


class _Batch:
    """Conductors of one transaction, and the executions that hit a bug."""

    def __init__(self, conn: psycopg.Connection, stats: AdvanceStats) -> None:
        self.conn = conn
        self.stats = stats
        self.conductors: dict[int, Conductor] = {}
        self.failures: list[tuple[int, dict[str, Json]]] = []

    def bug(self, execution_id: int, exc: Exception) -> None:
        log.exception("advancing execution %s failed", execution_id)
        self.stats.errors += 1
        self.conductors.pop(execution_id, None)
        self.failures.append(
            (execution_id, error_of("InternalError", f"{type(exc).__name__}: {exc}"[:1000]))
        )

    def write(self) -> None:
        """Apply every conductor's commands, then any with-items aggregations they
        asked for (which may cascade), until nothing is left to write."""
        pending = dict(self.conductors)
        while pending:
            aggregates = work.apply_batch(
                self.conn, [(eid, c.flush()) for eid, c in sorted(pending.items())]
            )
            pending = {}
            for execution_id, agg in aggregates:
                conductor = self.conductors.get(execution_id)
                if conductor is None:
                    continue
                results, failed = work.item_results(
                    self.conn, execution_id, agg.task_name, agg.iteration
                )
                try:
                    conductor.items_aggregated(agg.task_name, agg.iteration, results, failed)
                    pending[execution_id] = conductor
                except Exception as exc:
                    self.bug(execution_id, exc)
        if self.failures:
            work.fail_executions(self.conn, self.failures)


def start_requested(
    conn: psycopg.Connection, actions: Mapping[str, ActionSpec], limit: int
) -> AdvanceStats:
    stats = AdvanceStats()
    with conn.transaction():
        executions, now = work.lock_executions(conn, requested=limit)
        if not executions:
            return stats
        batch = _Batch(conn, stats)
        ctx = Context(now, actions, DbKV(conn))
        for execution in executions:
            try:
                conductor = Conductor(execution, {}, ctx)
                conductor.start()
                batch.conductors[execution.id] = conductor
                stats.started += 1
            except Exception as exc:
                batch.bug(execution.id, exc)
        batch.write()
    return stats


def complete(
    conn: psycopg.Connection,
    me: str,
    finished: Sequence[work.Finished],
    actions: Mapping[str, ActionSpec],
) -> AdvanceStats:
    stats = AdvanceStats()
    try:
        with conn.transaction():
            _complete(conn, me, finished, actions, stats)
        return stats
    except work.StaleWrite as exc:
        log.info("batch advance hit a stale write (%s); retrying one execution at a time", exc)
    stats = AdvanceStats()
    groups: dict[int, list[work.Finished]] = defaultdict(list)
    for item in finished:
        groups[item.task.workflow_execution_id].append(item)
    for execution_id, group in sorted(groups.items()):
        try:
            with conn.transaction():
                _complete(conn, me, group, actions, stats)
        except work.StaleWrite as exc:
            stats.stale += len(group)
            log.warning("stale advance of execution %s dropped: %s", execution_id, exc)
    return stats


def _complete(
    conn: psycopg.Connection,
    me: str,
    finished: Sequence[work.Finished],
    actions: Mapping[str, ActionSpec],
    stats: AdvanceStats,
) -> None:
    ids = sorted({f.task.workflow_execution_id for f in finished})
    executions, now = work.lock_executions(conn, ids)
    attempts = work.finish_attempts(conn, me, finished)
    stats.stale += len(finished) - len(attempts)
    if not attempts:
        return
    by_execution = defaultdict(list)
    for attempt in attempts:
        by_execution[attempt.execution_id].append(attempt)
    live: list[Execution] = [e for e in executions if e.id in by_execution]
    latest = work.latest_states_many(conn, [e.id for e in live])
    older = [
        (a.execution_id, a.task_name, a.iteration)
        for a in attempts
        if (state := latest[a.execution_id].get(a.task_name)) is None
        or state.iteration != a.iteration
    ]
    extra: dict[int, list[TaskState]] = defaultdict(list)
    for execution_id, state in work.states_of(conn, older):
        extra[execution_id].append(state)
    batch = _Batch(conn, stats)
    ctx = Context(now, actions, DbKV(conn))
    for execution in live:
        try:
            conductor = Conductor(execution, latest[execution.id], ctx)
            for state in extra.get(execution.id, ()):
                conductor.add_state(state)
            for attempt in by_execution[execution.id]:
                conductor.attempt_finished(attempt)
            batch.conductors[execution.id] = conductor
            stats.advanced += len(by_execution[execution.id])
        except Exception as exc:
            batch.bug(execution.id, exc)
    batch.write()
