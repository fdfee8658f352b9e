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
from dataclasses import dataclass, replace

import psycopg

from attune_pg.engine.conductor import Conductor, error_of
from attune_pg.engine.state import Attempt, Context, Execution, TaskState
from attune_pg.errors import ParameterError
from attune_pg.spec.model import DEFAULT_DEPTH_LIMIT, ActionSpec
from attune_pg.spec.params import secret_parameters, validate_parameters
from attune_pg.store import apply, control, kv, work
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
            aggregates = apply.apply_batch(
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
                execution = _stash_secret_parameters(conn, execution)
                conductor = Conductor(execution, {}, ctx)
                conductor.start()
                batch.conductors[execution.id] = conductor
                stats.started += 1
            except Exception as exc:
                batch.bug(execution.id, exc)
        batch.write()
    return stats


def _stash_secret_parameters(conn: psycopg.Connection, execution: Execution) -> Execution:
    """Move `secret: true` string parameters into kv, leaving tokens (only valid ones:
    an invalid set is left for the conductor to refuse, with the value redacted)."""
    names = secret_parameters(execution.spec.parameters)
    values = {
        n: v for n, v in execution.parameters.items() if n in names and isinstance(v, str)
    }
    if not values:
        return execution
    try:
        validate_parameters(execution.spec.parameters, execution.parameters, where="")
    except ParameterError:
        return execution
    tokens = kv.stash_secret_parameters(conn, execution.id, values)
    return replace(execution, parameters={**execution.parameters, **tokens})


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
    by_id = {e.id: e for e in executions}
    finished = _check_parks(conn, finished, by_id)
    attempts = work.finish_attempts(conn, me, finished)
    stats.stale += len(finished) - len(attempts)
    parks = {f.task.id: f for f in finished if f.park}
    for attempt in attempts:
        if attempt.task_execution_id in parks:
            f = parks[attempt.task_execution_id]
            park = control.Park(f.task.id, f.park or "", f.task.action_ref, f.task.input)
            control.park(conn, by_id[attempt.execution_id], [park])
    attempts = [a for a in attempts if a.task_execution_id not in parks]
    if attempts:
        _conduct(conn, executions, attempts, set(), now, actions, stats)


def _check_parks(
    conn: psycopg.Connection, finished: Sequence[work.Finished], by_id: Mapping[int, Execution]
) -> list[work.Finished]:
    """A nested workflow that cannot start fails its task instead of waiting forever."""
    children = [f for f in finished if f.park == "workflow"]
    if not children:
        return list(finished)
    runnable = control.runnable_workflows(conn, [f.task.action_ref for f in children])
    out = []
    for f in finished:
        execution = by_id.get(f.task.workflow_execution_id)
        problem = None
        if f.park == "workflow" and execution is not None:
            if f.task.action_ref not in runnable:
                problem = error_of(
                    "UnknownWorkflow",
                    f"workflow {f.task.action_ref!r} is not registered or disabled",
                )
            elif execution.depth + 1 > DEFAULT_DEPTH_LIMIT:
                problem = error_of(
                    "DepthLimit",
                    f"nested workflows may be {DEFAULT_DEPTH_LIMIT} deep;"
                    f" {f.task.action_ref!r} would be level {execution.depth + 1}",
                )
        out.append(replace(f, status="failed", error=problem, park=None) if problem else f)
    return out


def _conduct(
    conn: psycopg.Connection,
    executions: Sequence[Execution],
    attempts: Sequence[Attempt],
    requested: set[int],
    now: float,
    actions: Mapping[str, ActionSpec],
    stats: AdvanceStats,
) -> None:
    """Run the conductor over locked executions: attempts first, then control requests."""
    by_execution: dict[int, list[Attempt]] = defaultdict(list)
    for attempt in attempts:
        by_execution[attempt.execution_id].append(attempt)
    live = [e for e in executions if e.id in by_execution or e.id in requested]
    if not live:
        return
    pausing = control.running_rows(conn, [e.id for e in live if e.status == "pausing"])
    latest = work.latest_states_many(conn, [e.id for e in live])
    loaded = {(eid, s.name, s.iteration) for eid, states in latest.items() for s in states}
    older = [
        (a.execution_id, a.task_name, a.iteration)
        for a in attempts
        if (a.execution_id, a.task_name, a.iteration) not in loaded
    ]
    extra: dict[int, list[TaskState]] = defaultdict(list)
    for execution_id, state in work.states_of(conn, older):
        extra[execution_id].append(state)
    batch = _Batch(conn, stats)
    ctx = Context(now, actions, DbKV(conn))
    for execution in live:
        if execution.id in pausing:
            execution = replace(execution, running_rows=pausing[execution.id])
        try:
            conductor = Conductor(execution, latest[execution.id], ctx)
            for state in extra.get(execution.id, ()):
                conductor.add_state(state)
            for attempt in by_execution.get(execution.id, ()):
                conductor.attempt_finished(attempt)
            if execution.id in requested:
                live_rows = {}
                if conductor.status == "canceling":
                    for state in control.open_states(conn, execution.id):
                        conductor.add_state(state)
                    live_rows = control.live_rows(conn, execution.id)
                else:  # a retry_execution (perhaps paused since) re-runs these
                    for state in control.unhandled_states(conn, execution.id):
                        conductor.add_state(state)
                conductor.control(live_rows)
            batch.conductors[execution.id] = conductor
            stats.advanced += len(by_execution.get(execution.id, ()))
        except Exception as exc:
            batch.bug(execution.id, exc)
    batch.write()


def control_pass(
    conn: psycopg.Connection, actions: Mapping[str, ActionSpec], limit: int = 100
) -> AdvanceStats:
    """Carry out control requests and resume waiting tasks whose inquiry or child ended."""
    stats = AdvanceStats()
    with conn.transaction():
        ids = control.candidates(conn, limit)
        if not ids:
            return stats
        executions, now = work.lock_executions(conn, ids)
        if not executions:
            return stats
        locked = [e.id for e in executions]
        requested = control.take_requests(conn, locked)
        resumed = control.finish_waiting(conn, locked)
        _conduct(conn, executions, resumed, requested, now, actions, stats)
        stats.started = len(requested)
    return stats
