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
This module decides nothing itself.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

import psycopg

from attune_pg.engine import plan
from attune_pg.engine.conductor import Conductor, error_of
from attune_pg.engine.state import (
    Attempt,
    Command,
    Context,
    Execution,
    ParkTask,
    Snapshot,
    WriteExecution,
)
from attune_pg.errors import DatabaseUnavailable, StaleWrite
from attune_pg.machine import TaskStatus, WorkflowStatus
from attune_pg.settings import Settings
from attune_pg.spec.model import ActionSpec
from attune_pg.store import apply, fence, load, lock, migrate, requests
from attune_pg.store import settings as settings_store
from attune_pg.store.fence import Finished
from attune_pg.store.queries import Q

log = logging.getLogger("attune_pg.advance")

Json = object
# How often one transaction may be rerun for kv keys its templates computed.
_KV_RERUNS = 8


@dataclass
class AdvanceStats:
    started: int = 0
    advanced: int = 0
    stale: int = 0
    errors: int = 0
    quarantined: int = 0
    # What the committed transaction changed, for the worker's logs and metrics (no SQL
    # of their own): attempts that reached a final status or `waiting`, and execution
    # status changes.
    attempts: list[Attempt] = field(default_factory=list)
    executions: list[ExecutionChange] = field(default_factory=list)

    def add(self, other: AdvanceStats) -> None:
        self.started += other.started
        self.advanced += other.advanced
        self.stale += other.stale
        self.errors += other.errors
        self.quarantined += other.quarantined
        self.attempts.extend(other.attempts)
        self.executions.extend(other.executions)


@dataclass(frozen=True)
class ExecutionChange:
    """A status change of an execution written by this transaction (for logs, metrics)."""

    id: int
    workflow: str
    before: str | None
    status: str
    error_type: str | None
    seconds: float | None  # since it started, when it has
    trace_id: str | None


@dataclass(frozen=True)
class Env:
    """What a worker reads once (and refreshes now and then): the owner's limits and the
    key secret tokens are signed with."""

    settings: Settings
    signing_key: bytes

    @classmethod
    def load(cls, conn: psycopg.Connection) -> Env:
        try:
            return cls(settings_store.load(conn), lock.signing_key(conn))
        except psycopg.errors.UndefinedTable as exc:
            # Treated as an outage: one log line, then wait until `attune-pg init` ran.
            raise DatabaseUnavailable(
                f"the schema is older than this worker needs (version"
                f" {migrate.REQUIRED_SCHEMA}): run attune-pg init as the owner ({exc})"
            ) from exc

    def limits(self) -> dict[str, int]:
        """The conductor's share of the owner's limits."""
        s = self.settings
        return {
            "iteration_cap": s.max_iterations,
            "max_items": s.max_items,
            "max_context_bytes": s.max_context_bytes,
        }

    def park_limits(self) -> plan.ParkLimits:
        s = self.settings
        return plan.ParkLimits(s.max_depth, s.json_max_depth, s.json_max_bytes)


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


class _KVMissed(Exception):
    """Templates read kv keys the snapshot did not hold: rerun with them loaded."""

    def __init__(self, keys: set[str]) -> None:
        super().__init__(f"kv keys computed by templates: {sorted(keys)[:5]}")
        self.keys = keys


def _transaction(
    conn: psycopg.Connection, stats: AdvanceStats, body: Callable[[AdvanceStats, set[str]], None]
) -> None:
    """Run `body` in one transaction; rerun it (from the lock on) when its templates
    computed kv keys the snapshot did not hold. Counts into `stats` once it commits."""
    hints: set[str] = set()
    for _ in range(_KV_RERUNS):
        mine = AdvanceStats()
        try:
            with conn.transaction():
                body(mine, hints)
        except _KVMissed as missed:
            hints |= missed.keys
            continue
        stats.add(mine)
        return
    raise RuntimeError(f"templates kept computing new kv keys after {_KV_RERUNS} runs")


def _resolve(actions: Mapping[str, ActionSpec], refs: Iterable[str]) -> dict[str, ActionSpec]:
    """The actions among `refs`: from the worker's `store.catalog.ActionCatalog` (whose
    `resolve` refreshes once on a miss) or any Mapping (a test's dict)."""
    resolve = getattr(actions, "resolve", None)
    if resolve is not None:
        found: dict[str, ActionSpec] = resolve(refs)
        return found
    return {r: actions[r] for r in refs if r in actions}


# ----------------------------------------------------------------- conduct and apply


class _Batch:
    """The conductors of one transaction, and the executions that hit a bug."""

    def __init__(
        self,
        conn: psycopg.Connection,
        stats: AdvanceStats,
        env: Env,
        hints: set[str],
        now: float = 0.0,
        executions: Sequence[Execution] = (),
    ) -> None:
        self.conn = conn
        self.stats = stats
        self.env = env
        self.hints = hints
        self.now = now
        self.conductors: dict[int, Conductor] = {}
        self.failures: list[tuple[int, dict[str, Json]]] = []
        self.roots: dict[int, int] = {}
        self.executions = {e.id: e for e in executions}
        self.first: list[tuple[int, Command]] = []  # written in the first round (parks)
        self.kv = plan.SnapshotKV({})

    def context(self, snapshots: Iterable[Snapshot], actions: Mapping[str, ActionSpec]) -> Context:
        """Load the actions and kv keys these executions' templates may use."""
        specs = {id(s.execution.spec): s.execution.spec for s in snapshots}.values()
        refs = set().union(*(plan.action_refs(spec) for spec in specs))
        keys = set(self.hints).union(*(plan.kv_keys(spec) for spec in specs))
        self.kv = plan.SnapshotKV(load.kv_entries(self.conn, keys))
        return Context(self.now, _resolve(actions, refs), self.kv, self.env.signing_key)

    def conduct(
        self,
        snapshot: Snapshot,
        ctx: Context,
        step: Callable[[Conductor], None],
        advanced: int = 0,
    ) -> None:
        execution = snapshot.execution
        try:
            conductor = Conductor.of(snapshot, ctx, **self.env.limits())
            step(conductor)
        except Exception as exc:
            self.bug(execution.id, exc)
            return
        self.conductors[execution.id] = conductor
        self.roots[execution.id] = execution.root_id
        self.stats.advanced += advanced

    def bug(self, execution_id: int, exc: Exception) -> None:
        log.exception("advancing execution %s failed", execution_id)
        self.stats.errors += 1
        self.conductors.pop(execution_id, None)
        self.failures.append(
            (execution_id, error_of("InternalError", f"{type(exc).__name__}: {exc}"[:1000]))
        )

    def _missed(self) -> None:
        missed = self.kv.missed - self.hints
        if missed:
            raise _KVMissed(missed)

    def _note(self, flushed: Sequence[tuple[int, Sequence[Command]]]) -> None:
        """Record the execution status changes about to be written (stats.executions)."""
        for execution_id, commands in flushed:
            execution = self.conductors[execution_id].execution
            for command in commands:
                if isinstance(command, WriteExecution) and command.status != command.before:
                    self._changed(execution, command.before, command.status, command.error)

    def _changed(self, execution: Execution, before: str | None, status: str, error: Json) -> None:
        started = execution.started_at
        self.stats.executions.append(
            ExecutionChange(
                execution.id,
                execution.ref,
                before,
                status,
                str(error.get("type")) if isinstance(error, dict) else None,
                None if started is None or not self.now else max(self.now - started, 0.0),
                execution.trace_id,
            )
        )

    def write(self) -> None:
        """Apply every conductor's commands, then feed the items aggregated back (which
        may cascade), until nothing is left to write."""
        self._missed()
        first: dict[int, list[Command]] = defaultdict(list)
        for execution_id, command in self.first:
            first[execution_id].append(command)
        pending = dict(self.conductors)
        while pending or first:
            flushed = [(eid, c.flush()) for eid, c in sorted(pending.items())]
            self._note(flushed)
            batch = [(eid, [*first.pop(eid, ()), *cmds]) for eid, cmds in flushed]
            batch += sorted(first.items())
            first = {}
            events = apply.apply_batch(self.conn, batch, self.roots)
            pending = {}
            for execution_id, event in events:
                conductor = self.conductors.get(execution_id)
                if conductor is None:
                    continue
                try:
                    conductor.items_aggregated(
                        event.task_name, event.iteration, event.results, event.failed_items
                    )
                    pending[execution_id] = conductor
                except Exception as exc:
                    self.bug(execution_id, exc)
            self._missed()
        if self.failures:
            lock.fail_executions(self.conn, self.failures)
            for execution_id, error in self.failures:
                gone = self.executions.get(execution_id)
                if gone is not None:
                    self._changed(gone, gone.status, WorkflowStatus.FAILED, error)


def _advance(
    batch: _Batch,
    executions: Sequence[Execution],
    attempts: Sequence[Attempt],
    requested: set[int],
    actions: Mapping[str, ActionSpec],
) -> None:
    """Load, conduct and apply for locked executions: attempts first, then requests."""
    by_execution: dict[int, list[Attempt]] = defaultdict(list)
    for attempt in attempts:
        by_execution[attempt.execution_id].append(attempt)
    needs = {
        e.id: plan.needs(e, by_execution.get(e.id, ()), e.id in requested)
        for e in executions
        if e.id in by_execution or e.id in requested
    }
    snapshots = load.snapshots(batch.conn, executions, needs)
    ctx = batch.context(snapshots.values(), actions)
    for execution_id, snapshot in snapshots.items():
        mine = by_execution.get(execution_id, [])

        def step(conductor: Conductor, mine: list[Attempt] = mine, eid: int = execution_id) -> None:
            for attempt in mine:
                conductor.attempt_finished(attempt)
            if eid in requested:
                conductor.control()

        batch.conduct(snapshot, ctx, step, advanced=len(mine))
    batch.write()


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
        _transaction(conn, stats, partial(_start, conn, actions, env, requested=limit))
        return stats
    except Exception as exc:
        if _is_outage(exc):
            raise
        log.warning("start batch failed (%s); starting one execution at a time", exc)
    stats = AdvanceStats()
    ids = [row[0] for row in conn.execute(Q.execution_requested_ids, {"n": limit})]
    for execution_id in ids:
        try:
            _transaction(conn, stats, partial(_start, conn, actions, env, one=execution_id))
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
    batch = _Batch(conn, stats, env, hints, now, executions)
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
        _transaction(conn, stats, partial(_complete, conn, me, finished, actions, env))
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
            _transaction(conn, stats, partial(_complete, conn, me, group, actions, env))
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
    batch = _Batch(conn, stats, env, hints, now, executions)
    parks = {f.task.id: f for f in finished if f.park}
    for attempt in attempts:
        if attempt.task_execution_id in parks:
            f = parks[attempt.task_execution_id]
            park = ParkTask(f.task.id, f.park or "", f.task.action_ref, f.task.input)
            batch.first.append((attempt.execution_id, park))
    attempts = [a for a in attempts if a.task_execution_id not in parks]
    if attempts:
        _advance(batch, executions, attempts, set(), actions)
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
        _transaction(conn, stats, partial(_requests, conn, ids, actions, env))
        return stats
    except Exception as exc:
        if _is_outage(exc):
            raise
        log.warning("request pass failed (%s); retrying one execution at a time", exc)
    stats = AdvanceStats()
    for execution_id in ids:
        try:
            _transaction(conn, stats, partial(_requests, conn, [execution_id], actions, env))
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
    _advance(_Batch(conn, stats, env, hints, now, executions), executions, resumed, requested,
             actions)  # fmt: skip
    lock.charge_budgets(conn, executions)
    stats.started += len(requested)
