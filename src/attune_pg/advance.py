"""THE transaction: lock -> load -> conduct -> apply, for a whole batch of executions.

Three entry points, each one transaction for a batch:
- `start_requested`: executions INSERTed as `requested` become `running`.
- `complete`: finished task attempts are fenced and their workflows advanced.
- `request_pass`: control requests (cancel, pause, retry) are carried out, and waiting
  tasks whose inquiry or child ended are finished and advanced.

Each is the same four steps: lock the workflow rows in id order (store/lock.py; the
fence of the attempts rides on it, store/fence.py), load what the conductor needs
(engine/plan.py says what, store/load.py reads it), conduct (the pure conductor turns
the snapshot and the events into commands), apply (store/apply.py, one statement per
kind of write, whose answers to `AggregateItems` are the next round's events). A batch
costs a fixed number of statements however many executions it holds (DESIGN §3.3).
This module and batch.py (the rounds of one transaction) decide nothing themselves.

A Python error while conducting one execution fails that execution with the error (it
must not wedge the queue or loop forever); a stale guarded write rolls the batch back
and it is retried one execution at a time. No poison pills: any other error of a batch
(a row the database refuses, a value that cannot be encoded) is retried one execution
at a time too, and an execution that fails alone is quarantined (failed with an error
naming the cause, its open rows closed), so one bad row never stops the others.
Outages (connection lost, deadlocks) are not ours to judge: they propagate to the
worker loop, which retries. A kv key that a template computes (so it could not be
loaded beforehand) reruns the transaction with that key loaded.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial

import psycopg

from attune_pg.batch import AdvanceStats, Batch, Env, ExecutionChange, advance, transaction
from attune_pg.engine import plan
from attune_pg.engine.conductor import Conductor, error_of
from attune_pg.engine.state import (
    Execution,
    ParkTask,
    Snapshot,
)
from attune_pg.errors import StaleWrite
from attune_pg.machine import TaskStatus
from attune_pg.spec.model import ActionSpec
from attune_pg.store import fence, load, lock, requests
from attune_pg.store.fence import Finished
from attune_pg.store.queries import Q

log = logging.getLogger("attune_pg.advance")

Json = object

__all__ = ["AdvanceStats", "Env", "ExecutionChange", "complete", "request_pass", "start_requested"]


def _is_outage(exc: BaseException) -> bool:
    """Errors the worker loop handles (reconnect and retry), not a bad row."""
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def _quarantine_error(execution_id: int, what: str, exc: BaseException) -> dict[str, Json]:
    text = str(exc).strip().splitlines()
    return error_of(
        "Quarantined",
        f"execution {execution_id} could not be {what} and was failed:"
        f" {type(exc).__name__}: {(text[0] if text else '')[:500]}",
    )


# ----------------------------------------------------------------- start


def start_requested(
    conn: psycopg.Connection,
    actions: Mapping[str, ActionSpec],
    limit: int,
    env: Env | None = None,
) -> AdvanceStats:
    env = env or Env.load(conn)
    stats = AdvanceStats()
    try:
        transaction(conn, stats, partial(_start, conn, actions, env, requested=limit))
        return stats
    except Exception as exc:
        if _is_outage(exc):
            raise
        log.warning("start batch failed (%s); starting one execution at a time", exc)
    stats = AdvanceStats()
    ids = [row[0] for row in conn.execute(Q.execution_requested_ids, {"n": limit})]
    for execution_id in ids:
        try:
            transaction(conn, stats, partial(_start, conn, actions, env, one=execution_id))
        except Exception as exc:
            if _is_outage(exc):
                raise
            _quarantine(conn, [(execution_id, _quarantine_error(execution_id, "started", exc))])
            stats.quarantined += 1
    return stats


def _start(
    conn: psycopg.Connection,
    actions: Mapping[str, ActionSpec],
    env: Env,
    stats: AdvanceStats,
    hints: set[str],
    *,
    requested: int = 0,
    one: int | None = None,
) -> None:
    executions, now = lock.lock_executions(
        conn, requested=requested, one=one, settings=env.settings
    )
    if not executions:
        return
    batch = Batch(conn, stats, env, hints, now, executions)
    stashed = {e.id: plan.stashed_secret_keys(e) for e in executions}
    secrets = load.secret_values(conn, (k for keys in stashed.values() for k in keys.values()))
    snapshots = [Snapshot(e) for e in executions]
    ctx = batch.context(snapshots, actions)
    for snapshot in snapshots:
        execution = snapshot.execution
        try:
            refused = plan.refuse_secret_parameters(execution, secrets)
        except Exception as exc:
            batch.bug(execution.id, exc)
            continue
        if refused is not None:
            batch.failures.append((execution.id, refused))
            continue
        before = stats.errors
        batch.conduct(snapshot, ctx, Conductor.start)
        if stats.errors == before:
            stats.started += 1
    batch.write()
    lock.charge_budgets(conn, executions)


def _quarantine(conn: psycopg.Connection, failures: list[tuple[int, dict[str, Json]]]) -> None:
    with conn.transaction():
        lock.quarantine(conn, failures)


# ----------------------------------------------------------------- complete


def complete(
    conn: psycopg.Connection,
    me: str,
    finished: Sequence[Finished],
    actions: Mapping[str, ActionSpec],
    env: Env | None = None,
) -> AdvanceStats:
    env = env or Env.load(conn)
    stats = AdvanceStats()
    try:
        transaction(conn, stats, partial(_complete, conn, me, finished, actions, env))
        return stats
    except StaleWrite as exc:
        log.info("batch advance hit a stale write (%s); retrying one execution at a time", exc)
    except Exception as exc:
        if _is_outage(exc):
            raise
        log.warning("batch advance failed (%s); retrying one execution at a time", exc)
    stats = AdvanceStats()
    groups: dict[int, list[Finished]] = defaultdict(list)
    for item in finished:
        groups[item.task.workflow_execution_id].append(item)
    for execution_id, group in sorted(groups.items()):
        try:
            transaction(conn, stats, partial(_complete, conn, me, group, actions, env))
        except StaleWrite as exc:
            stats.stale += len(group)
            log.warning("stale advance of execution %s dropped: %s", execution_id, exc)
        except Exception as exc:
            if _is_outage(exc):
                raise
            error = _quarantine_error(execution_id, "advanced", exc)
            with conn.transaction():
                # The attempts end (fenced: only rows still ours), then the execution.
                failed = [
                    replace(f, status=TaskStatus.FAILED, error=error, park=None) for f in group
                ]
                fence.finish_attempts(conn, me, failed)
                lock.quarantine(conn, [(execution_id, error)])
            stats.quarantined += 1
    return stats


def _complete(
    conn: psycopg.Connection,
    me: str,
    finished: Sequence[Finished],
    actions: Mapping[str, ActionSpec],
    env: Env,
    stats: AdvanceStats,
    hints: set[str],
) -> None:
    ids = sorted({f.task.workflow_execution_id for f in finished})
    executions, now = lock.lock_executions(conn, ids, settings=env.settings)
    finished = _judge_parks(conn, finished, executions, env)
    attempts = fence.finish_attempts(conn, me, finished)
    stats.stale += len(finished) - len(attempts)
    stats.attempts.extend(attempts)
    batch = Batch(conn, stats, env, hints, now, executions)
    parks = {f.task.id: f for f in finished if f.park}
    for attempt in attempts:
        if attempt.task_execution_id in parks:
            f = parks[attempt.task_execution_id]
            park = ParkTask(f.task.id, f.park or "", f.task.action_ref, f.task.input)
            batch.first.append((attempt.execution_id, park))
    attempts = [a for a in attempts if a.task_execution_id not in parks]
    if attempts:
        advance(batch, executions, attempts, set(), actions)
    else:
        batch.write()
    lock.charge_budgets(conn, executions)


def _judge_parks(
    conn: psycopg.Connection,
    finished: Sequence[Finished],
    executions: Sequence[Execution],
    env: Env,
) -> list[Finished]:
    """The parks that may not wait end failed or canceled instead (plan.judge_parks)."""
    if not any(f.park for f in finished):
        return list(finished)
    parks = [
        plan.ParkRequest(
            f.task.id, f.task.workflow_execution_id, f.park, f.task.action_ref, f.task.input
        )
        for f in finished
        if f.park
    ]
    runnable = load.runnable_workflows(conn, [p.action_ref for p in parks if p.kind == "workflow"])
    verdicts = plan.judge_parks(parks, {e.id: e for e in executions}, runnable, env.park_limits())
    out = []
    for f in finished:
        verdict = verdicts.get(f.task.id)
        if verdict is None:
            out.append(f)
        else:
            status, error = verdict
            out.append(replace(f, status=status, error=error, park=None))
    return out


# ----------------------------------------------------------------- requests


def request_pass(
    conn: psycopg.Connection,
    actions: Mapping[str, ActionSpec],
    limit: int = 100,
    env: Env | None = None,
) -> AdvanceStats:
    """Carry out control requests and resume waiting tasks whose inquiry or child ended."""
    env = env or Env.load(conn)
    stats = AdvanceStats()
    ids = requests.candidates(conn, limit)
    if not ids:
        return stats
    try:
        transaction(conn, stats, partial(_requests, conn, ids, actions, env))
        return stats
    except Exception as exc:
        if _is_outage(exc):
            raise
        log.warning("request pass failed (%s); retrying one execution at a time", exc)
    stats = AdvanceStats()
    for execution_id in ids:
        try:
            transaction(conn, stats, partial(_requests, conn, [execution_id], actions, env))
        except Exception as exc:
            if _is_outage(exc):
                raise
            _quarantine(conn, [(execution_id, _quarantine_error(execution_id, "controlled", exc))])
            stats.quarantined += 1
    return stats


def _requests(
    conn: psycopg.Connection,
    ids: Sequence[int],
    actions: Mapping[str, ActionSpec],
    env: Env,
    stats: AdvanceStats,
    hints: set[str],
) -> None:
    executions, now = lock.lock_executions(conn, ids, settings=env.settings)
    if not executions:
        return
    locked = [e.id for e in executions]
    requested = requests.take_requests(conn, locked)
    resumed = fence.finish_waiting(conn, locked)
    stats.attempts.extend(resumed)
    advance(Batch(conn, stats, env, hints, now, executions), executions, resumed, requested,
             actions)  # fmt: skip
    lock.charge_budgets(conn, executions)
    stats.started += len(requested)
