"""One advance transaction's machinery: load -> conduct -> apply, in rounds.

`Batch` holds the conductors of one transaction: `context` loads the actions and kv keys
their templates may use, `conduct` runs one execution's events on its snapshot (a Python
error fails that execution, not the batch), `write` applies every conductor's commands
with one statement per kind and feeds the items aggregated back until nothing is left.
`advance` is the load-conduct-apply of locked executions; `transaction` reruns a
transaction whose templates computed kv keys its snapshot did not hold. advance.py
chooses what to lock and owns the retries; neither decides anything about a workflow.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import psycopg

from attune_pg.engine import plan
from attune_pg.engine.conductor import Conductor, error_of
from attune_pg.engine.state import (
    Attempt,
    Command,
    Context,
    Execution,
    Snapshot,
    WriteExecution,
)
from attune_pg.errors import DatabaseUnavailable
from attune_pg.machine import WorkflowStatus
from attune_pg.settings import Settings
from attune_pg.spec.model import ActionSpec
from attune_pg.store import apply, load, lock, migrate
from attune_pg.store import settings as settings_store
from attune_pg.store.claims import ClaimedTask, Slots

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
    # Task rows created already claimed with the worker's slots: the worker runs them
    # once the transaction committed. queued: rows made claimable for any worker.
    claimed: list[ClaimedTask] = field(default_factory=list)
    queued: int = 0

    def add(self, other: AdvanceStats) -> None:
        self.started += other.started
        self.advanced += other.advanced
        self.stale += other.stale
        self.errors += other.errors
        self.quarantined += other.quarantined
        self.attempts.extend(other.attempts)
        self.executions.extend(other.executions)
        self.claimed.extend(other.claimed)
        self.queued += other.queued


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


class _KVMissed(Exception):
    """Templates read kv keys the snapshot did not hold: rerun with them loaded."""

    def __init__(self, keys: set[str]) -> None:
        super().__init__(f"kv keys computed by templates: {sorted(keys)[:5]}")
        self.keys = keys


def transaction(
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


class Batch:
    """The conductors of one transaction, and the executions that hit a bug."""

    def __init__(
        self,
        conn: psycopg.Connection,
        stats: AdvanceStats,
        env: Env,
        hints: set[str],
        now: float = 0.0,
        executions: Sequence[Execution] = (),
        slots: Slots | None = None,
    ) -> None:
        self.conn = conn
        self.slots = slots  # the worker's free slots: new rows due now may be claimed
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
        # Writes an earlier batch of this transaction deferred, written with this one's
        # first round (taken in place: the one who handed them over sees it); and, with
        # `defer`, what this batch's last round held back, left to the caller
        # (apply.apply_batch: one statement of each kind writes a turn's two parts).
        self.carry = apply.Deferred()
        self.defer = False
        self.deferred = apply.Deferred()

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
            slots = self.slots.less(len(self.stats.claimed)) if self.slots else None
            applied = apply.apply_batch(self.conn, batch, self.roots, slots, self.carry, self.defer)
            self.deferred = applied.deferred
            self.stats.claimed.extend(applied.claimed)
            self.stats.queued += applied.queued
            pending = {}
            for execution_id, event in applied.events:
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


def advance(
    batch: Batch,
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
