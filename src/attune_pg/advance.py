"""THE transaction: lock workflow rows, fence results, run the conductor, apply.

Two entry points, each one transaction for a whole batch (fewer commits per task):
- `start_requested`: executions INSERTed as `requested` become `running`.
- `complete`: finished task attempts are fenced and their workflows advanced.

Workflows are processed in id order (a global lock order, so two workers advancing
overlapping batches queue instead of deadlocking), each inside a savepoint: a
workflow whose advance hits a bug is failed with the error instead of blocking the
batch or looping forever.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psycopg

from attune_pg.engine.conductor import Conductor, error_of
from attune_pg.engine.state import Context
from attune_pg.spec.model import ActionSpec
from attune_pg.store import work
from attune_pg.store.catalog import DbKV

log = logging.getLogger("attune_pg.advance")


@dataclass
class AdvanceStats:
    started: int = 0
    advanced: int = 0
    stale: int = 0
    errors: int = 0


def _run(conn: psycopg.Connection, execution_id: int, conductor: Conductor) -> None:
    """Apply the conductor's commands until no with-items aggregation is pending."""
    while True:
        aggregates = work.apply(conn, execution_id, conductor.flush())
        if not aggregates:
            return
        for agg in aggregates:
            results, failed = work.item_results(conn, execution_id, agg.task_name, agg.iteration)
            conductor.items_aggregated(agg.task_name, agg.iteration, results, failed)


def _fail_on_bug(conn: psycopg.Connection, execution_id: int, exc: Exception) -> None:
    """Last resort: mark the execution failed so a bug cannot wedge it silently."""
    log.exception("advancing execution %s failed", execution_id)
    try:
        with conn.transaction():
            conn.execute(
                "UPDATE attune.workflow_execution SET status = 'failed', error = %s"
                " WHERE id = %s AND status IN ('requested', 'running', 'pausing', 'paused', 'canceling')",
                (
                    psycopg.types.json.Jsonb(
                        error_of("InternalError", f"{type(exc).__name__}: {exc}"[:1000])
                    ),
                    execution_id,
                ),
            )
    except psycopg.Error:
        log.exception("could not mark execution %s failed", execution_id)


def start_requested(
    conn: psycopg.Connection, actions: Mapping[str, ActionSpec], limit: int
) -> AdvanceStats:
    stats = AdvanceStats()
    with conn.transaction():
        for execution_id in work.lock_requested(conn, limit):
            try:
                with conn.transaction():
                    locked = work.lock_execution(conn, execution_id)
                    if locked is None:
                        continue
                    execution, now = locked
                    conductor = Conductor(execution, {}, Context(now, actions, DbKV(conn)))
                    conductor.start()
                    _run(conn, execution_id, conductor)
                    stats.started += 1
            except (work.StaleWrite, psycopg.errors.SerializationFailure):
                stats.stale += 1
            except Exception as exc:  # a bug must not wedge the queue
                stats.errors += 1
                _fail_on_bug(conn, execution_id, exc)
    return stats


def complete(
    conn: psycopg.Connection,
    me: str,
    finished: Sequence[work.Finished],
    actions: Mapping[str, ActionSpec],
) -> AdvanceStats:
    stats = AdvanceStats()
    by_execution: dict[int, list[work.Finished]] = defaultdict(list)
    for item in finished:
        by_execution[item.task.workflow_execution_id].append(item)
    with conn.transaction():
        for execution_id in sorted(by_execution):
            group = by_execution[execution_id]
            try:
                with conn.transaction():
                    locked = work.lock_execution(conn, execution_id)
                    if locked is None:
                        continue
                    execution, now = locked
                    attempts = work.finish_attempts(conn, me, group)
                    stats.stale += len(group) - len(attempts)
                    if not attempts:
                        continue
                    latest = work.latest_states(conn, execution_id)
                    conductor = Conductor(execution, latest, Context(now, actions, DbKV(conn)))
                    missing = {
                        (a.task_name, a.iteration)
                        for a in attempts
                        if latest.get(a.task_name) is None
                        or latest[a.task_name].iteration != a.iteration
                    }
                    for state in work.states_of(conn, execution_id, missing):
                        conductor.add_state(state)
                    for attempt in attempts:
                        conductor.attempt_finished(attempt)
                    _run(conn, execution_id, conductor)
                    stats.advanced += len(attempts)
            except work.StaleWrite as exc:
                stats.stale += len(group)
                log.info("stale advance of execution %s: %s", execution_id, exc)
            except Exception as exc:
                stats.errors += 1
                _fail_on_bug(conn, execution_id, exc)
    return stats
