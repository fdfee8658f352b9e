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
from dataclasses import dataclass, field, replace
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
from attune_pg.store import apply, claims, fence, load, lock, requests
from attune_pg.store.claims import Slots
from attune_pg.store.fence import Finished
from attune_pg.store.queries import Q

log = logging.getLogger("attune_pg.advance")

Json = object

__all__ = [
    "AdvanceStats",
    "Env",
    "ExecutionChange",
    "Turn",
    "complete",
    "request_pass",
    "start_requested",
    "turn",
]


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
    slots: Slots | None = None,
    cursor: lock.StartCursor | None = None,
) -> AdvanceStats:
    """Start up to `limit` requested executions; with `slots`, the task rows they create
    due now are created claimed by that worker (stats.claimed: run them); with `cursor`,
    the claim resumes after what this worker started before."""
    env = env or Env.load(conn)
    stats = AdvanceStats()
    try:
        body = partial(_start, conn, actions, env, slots, requested=limit, cursor=cursor)
        transaction(conn, stats, body)
        if cursor is not None:
            cursor.committed()
        return stats
    except Exception as exc:
        if cursor is not None:
            cursor.rolled_back()
        if _is_outage(exc):
            raise
        log.warning("start batch failed (%s); starting one execution at a time", exc)
    stats = AdvanceStats()
    ids = [row[0] for row in conn.execute(Q.execution_requested_ids, {"n": limit})]
    for execution_id in ids:
        try:
            free = slots.less(len(stats.claimed)) if slots else None
            transaction(conn, stats, partial(_start, conn, actions, env, free, one=execution_id))
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
    slots: Slots | None,
    stats: AdvanceStats,
    hints: set[str],
    *,
    requested: int = 0,
    one: int | None = None,
    cursor: lock.StartCursor | None = None,
) -> None:
    started = _start_part(
        conn, actions, env, slots, stats, hints, requested=requested, one=one, cursor=cursor
    )
    lock.charge_budgets(conn, started)


def _start_part(
    conn: psycopg.Connection,
    actions: Mapping[str, ActionSpec],
    env: Env,
    slots: Slots | None,
    stats: AdvanceStats,
    hints: set[str],
    *,
    requested: int = 0,
    one: int | None = None,
    cursor: lock.StartCursor | None = None,
    carry: apply.Deferred | None = None,
) -> list[Execution]:
    """The start, its budgets not charged yet (the caller charges them last). `carry`:
    writes an earlier part deferred, written with the start's own (taken in place; the
    caller writes them if the start writes nothing)."""
    executions, now = lock.lock_executions(
        conn, requested=requested, one=one, settings=env.settings, cursor=cursor
    )
    if not executions:
        return []
    batch = Batch(conn, stats, env, hints, now, executions, slots)
    if carry is not None:
        batch.carry = carry
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
    return executions


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
    slots: Slots | None = None,
) -> AdvanceStats:
    """Fence and advance what finished; with `slots`, the successors due now are created
    claimed by that worker (stats.claimed: run them)."""
    env = env or Env.load(conn)
    stats = AdvanceStats()
    try:
        transaction(conn, stats, partial(_complete, conn, me, finished, actions, env, slots))
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
            free = slots.less(len(stats.claimed)) if slots else None
            transaction(conn, stats, partial(_complete, conn, me, group, actions, env, free))
        except StaleWrite as exc:
            stats.stale += len(group)
            log.warning("stale advance of execution %s dropped: %s", execution_id, exc)
        except Exception as exc:
            if _is_outage(exc):
                raise
            error = _quarantine_error(execution_id, "advanced", exc)
            with conn.transaction():
                # The attempts end (fenced: only rows still ours), then the execution;
                # the execution row is locked first, as every advance locks it.
                lock.lock_ids(conn, [execution_id])
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
    slots: Slots | None,
    stats: AdvanceStats,
    hints: set[str],
) -> None:
    executions, _ = _complete_part(conn, me, finished, actions, env, slots, stats, hints)
    lock.charge_budgets(conn, executions)


def _complete_part(
    conn: psycopg.Connection,
    me: str,
    finished: Sequence[Finished],
    actions: Mapping[str, ActionSpec],
    env: Env,
    slots: Slots | None,
    stats: AdvanceStats,
    hints: set[str],
    defer: bool = False,
) -> tuple[list[Execution], apply.Deferred]:
    """The advance of what finished, its budgets not charged yet. With `defer`, its
    task-state updates and execution writes are returned, not written
    (apply.apply_batch), for the caller to write with the next part's."""
    ids = sorted({f.task.workflow_execution_id for f in finished})
    executions, now = lock.lock_executions(conn, ids, settings=env.settings)
    finished = _judge_parks(conn, finished, executions, env)
    attempts = fence.finish_attempts(conn, me, finished)
    stats.stale += len(finished) - len(attempts)
    stats.attempts.extend(attempts)
    batch = Batch(conn, stats, env, hints, now, executions, slots)
    batch.defer = defer
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
    return executions, batch.deferred


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


# ----------------------------------------------------------------- one loop turn


@dataclass
class Turn:
    """What one loop turn did: the stats of its writes (stats.claimed: the rows this
    worker now runs, created claimed or claimed from the queue), how many executions it
    could start (0: no slot was free) and for how many free slots it claimed from the
    queue (0: it did not claim), and how many that claim got."""

    stats: AdvanceStats = field(default_factory=AdvanceStats)
    start_limit: int = 0
    claim_limit: int = 0
    from_queue: int = 0


def turn(
    conn: psycopg.Connection,
    finished: Sequence[Finished],
    actions: Mapping[str, ActionSpec],
    env: Env,
    slots: Slots,
    start: int,
    claim: bool,
    cursor: lock.StartCursor | None = None,
) -> Turn:
    """One worker loop turn in ONE transaction (docs/scaling.md, lever 3): advance what
    finished, start up to `start` requested executions (no more than the slots the
    advance left free: their first tasks are created claimed), and with `claim`, claim
    due rows from the queue for the slots still free. One commit where there were
    three. If it fails, each part runs again on its own, with its own fallback (one
    execution at a time), as if there were no turn."""
    if not finished and (not start or slots.free <= 0):
        # Nothing to advance, and nothing to start or no slot to start it in (a full
        # worker woken by another's notification): no transaction, just the claim if any.
        # The caller sees start_limit 0 and defers the start (Worker._started).
        out = Turn(claim_limit=slots.free if claim else 0)
        if out.claim_limit:
            out.stats.claimed = claims.claim_tasks(conn, slots.me, slots.free, slots.lease)
            out.from_queue = len(out.stats.claimed)
        return out
    out = Turn()
    try:
        transaction(conn, out.stats, partial(_turn, conn, finished, actions, env, slots, start,
                                             claim, cursor, out))  # fmt: skip
    except Exception as exc:
        if cursor is not None:
            cursor.rolled_back()
        if _is_outage(exc):
            raise
        log.info("one-transaction turn failed (%s); advancing and starting apart", exc)
    else:
        if cursor is not None:
            cursor.committed()
        if out.start_limit < 0:  # the advance charged a tree's budget: start apart
            out.start_limit = _start_limit(slots, out.stats, start)
            if out.start_limit:
                free = slots.less(len(out.stats.claimed))
                started = start_requested(conn, actions, out.start_limit, env, free, cursor)
                out.stats.add(started)
        return out
    out = Turn()
    if finished:
        out.stats = complete(conn, slots.me, finished, actions, env, slots)
    out.start_limit = _start_limit(slots, out.stats, start)
    if out.start_limit:
        free = slots.less(len(out.stats.claimed))
        out.stats.add(start_requested(conn, actions, out.start_limit, env, free, cursor))
    out.claim_limit = slots.free - len(out.stats.claimed) if claim else 0
    if out.claim_limit > 0:
        got = claims.claim_tasks(conn, slots.me, out.claim_limit, slots.lease)
        out.stats.claimed.extend(got)
        out.from_queue = len(got)
    return out


def _start_limit(slots: Slots, stats: AdvanceStats, start: int) -> int:
    return max(min(start, slots.free - len(stats.claimed)), 0)


def _turn(
    conn: psycopg.Connection,
    finished: Sequence[Finished],
    actions: Mapping[str, ActionSpec],
    env: Env,
    slots: Slots,
    start: int,
    claim: bool,
    cursor: lock.StartCursor | None,
    out: Turn,
    stats: AdvanceStats,
    hints: set[str],
) -> None:
    out.start_limit = out.claim_limit = out.from_queue = 0  # a kv rerun starts over
    executions: list[Execution] = []
    # The advance's task-state updates and execution writes ride on the start's
    # statements: one UPDATE of workflow_execution a turn, not two, and one of task_state.
    carry = apply.Deferred()
    if finished:
        executions, carry = _complete_part(
            conn, slots.me, finished, actions, env, slots, stats, hints, defer=True
        )
    if any(e.budget and (e.budget.rows_taken or e.budget.executions_taken) for e in executions):
        # A tree's budget is charged last and held to commit, one tree order per
        # transaction: a start here could take a second tree order (deadlock). Apart.
        apply.write_deferred(conn, carry)
        lock.charge_budgets(conn, executions)
        out.start_limit = -1 if start else 0
        return
    out.start_limit = _start_limit(slots, stats, start)
    if out.start_limit:
        free = slots.less(len(stats.claimed))
        executions += _start_part(conn, actions, env, free, stats, hints,
                                  requested=out.start_limit, cursor=cursor,
                                  carry=carry)  # fmt: skip
    apply.write_deferred(conn, carry)  # if nothing started, or the start wrote nothing
    out.claim_limit = slots.free - len(stats.claimed) if claim else 0
    if out.claim_limit > 0:
        got = claims.claim_tasks(conn, slots.me, out.claim_limit, slots.lease)
        stats.claimed.extend(got)
        out.from_queue = len(got)
    lock.charge_budgets(conn, executions)


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
