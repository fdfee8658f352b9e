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

No poison pills: any other error of a batch (a row the database refuses, a value
that cannot be encoded) is retried one execution at a time too, and an execution
that fails alone is quarantined (failed with an error naming the cause, its open
rows closed), so one bad row never stops the others. Outages (connection lost,
deadlocks) are not ours to judge: they propagate to the worker loop, which retries.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import psycopg

from attune_pg import jsonbounds
from attune_pg.engine.conductor import Conductor, error_of
from attune_pg.engine.state import Attempt, Context, Execution, TaskState
from attune_pg.errors import DatabaseUnavailable, ParameterError
from attune_pg.redact import redact
from attune_pg.secrets import secret_parameter_key, secret_token
from attune_pg.settings import Settings
from attune_pg.spec.model import DEFAULT_DEPTH_LIMIT, ActionSpec
from attune_pg.spec.params import secret_parameters, validate_parameters
from attune_pg.store import apply, control, kv, migrate, work
from attune_pg.store import settings as settings_store
from attune_pg.store.catalog import DbKV
from attune_pg.store.queries import Q

log = logging.getLogger("attune_pg.advance")

Json = object


@dataclass
class AdvanceStats:
    started: int = 0
    advanced: int = 0
    stale: int = 0
    errors: int = 0
    quarantined: int = 0


@dataclass(frozen=True)
class Env:
    """What a worker reads once (and refreshes now and then): the owner's limits and the
    key secret tokens are signed with."""

    settings: Settings
    signing_key: bytes

    @classmethod
    def load(cls, conn: psycopg.Connection) -> Env:
        try:
            return cls(settings_store.load(conn), work.signing_key(conn))
        except psycopg.errors.UndefinedTable as exc:
            # Treated as an outage: one log line, then wait until `attune-pg init` ran.
            raise DatabaseUnavailable(
                f"the schema is older than this worker needs (version"
                f" {migrate.REQUIRED_SCHEMA}): run attune-pg init as the owner ({exc})"
            ) from exc


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


class _Batch:
    """Conductors of one transaction, and the executions that hit a bug."""

    def __init__(self, conn: psycopg.Connection, stats: AdvanceStats) -> None:
        self.conn = conn
        self.stats = stats
        self.conductors: dict[int, Conductor] = {}
        self.failures: list[tuple[int, dict[str, Json]]] = []
        self.roots: dict[int, int] = {}

    def add(self, execution: Execution, conductor: Conductor) -> None:
        self.conductors[execution.id] = conductor
        self.roots[execution.id] = execution.root_id

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
                self.conn, [(eid, c.flush()) for eid, c in sorted(pending.items())], self.roots
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
    conn: psycopg.Connection,
    actions: Mapping[str, ActionSpec],
    limit: int,
    env: Env | None = None,
) -> AdvanceStats:
    env = env or Env.load(conn)
    stats = AdvanceStats()
    try:
        with conn.transaction():
            _start(conn, actions, env, stats, requested=limit)
        return stats
    except Exception as exc:
        if _is_outage(exc):
            raise
        log.warning("start batch failed (%s); starting one execution at a time", exc)
    stats = AdvanceStats()
    ids = [row[0] for row in conn.execute(Q.execution_requested_ids, {"n": limit})]
    for execution_id in ids:
        try:
            with conn.transaction():
                _start(conn, actions, env, stats, one=execution_id)
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
    *,
    requested: int = 0,
    one: int | None = None,
) -> None:
    executions, now = work.lock_executions(
        conn, requested=requested, one=one, settings=env.settings
    )
    if not executions:
        return
    batch = _Batch(conn, stats)
    ctx = Context(now, actions, DbKV(conn), env.signing_key)
    for execution in executions:
        try:
            refused = _check_secret_parameters(conn, execution)
            if refused is not None:
                batch.failures.append((execution.id, refused))
                continue
            conductor = Conductor(execution, {}, ctx)
            conductor.start()
            batch.add(execution, conductor)
            stats.started += 1
        except Exception as exc:
            batch.bug(execution.id, exc)
    batch.write()
    work.charge_budgets(conn, executions)


def _quarantine(conn: psycopg.Connection, failures: list[tuple[int, dict[str, Json]]]) -> None:
    with conn.transaction():
        work.quarantine(conn, failures)


def _check_secret_parameters(
    conn: psycopg.Connection, execution: Execution
) -> dict[str, Json] | None:
    """Validate the real values of `secret: true` parameters, which the INSERT already
    moved to kv (schema 0006), so the row only holds references. The error, if any,
    never shows a value."""
    names = secret_parameters(execution.spec.parameters)
    keys = {
        n: secret_parameter_key(execution.id, n)
        for n in names
        if execution.parameters.get(n) == secret_token(secret_parameter_key(execution.id, n))
    }
    if not keys:
        return None
    lookup = kv.secret_lookup(conn)
    real = dict(execution.parameters)
    for name, key in keys.items():
        try:
            real[name] = lookup(key)
        except KeyError:
            return error_of("ParameterError", f"secret parameter {name!r} is missing from kv")
    try:
        validate_parameters(
            execution.spec.parameters, real, where=f"workflow {execution.spec.ref!r}"
        )
    except ParameterError as exc:
        values = [v for n, v in real.items() if n in keys and isinstance(v, str) and v]
        return error_of("ParameterError", redact(str(exc), values))
    return None


def complete(
    conn: psycopg.Connection,
    me: str,
    finished: Sequence[work.Finished],
    actions: Mapping[str, ActionSpec],
    env: Env | None = None,
) -> AdvanceStats:
    env = env or Env.load(conn)
    stats = AdvanceStats()
    try:
        with conn.transaction():
            _complete(conn, me, finished, actions, stats, env)
        return stats
    except work.StaleWrite as exc:
        log.info("batch advance hit a stale write (%s); retrying one execution at a time", exc)
    except Exception as exc:
        if _is_outage(exc):
            raise
        log.warning("batch advance failed (%s); retrying one execution at a time", exc)
    stats = AdvanceStats()
    groups: dict[int, list[work.Finished]] = defaultdict(list)
    for item in finished:
        groups[item.task.workflow_execution_id].append(item)
    for execution_id, group in sorted(groups.items()):
        try:
            with conn.transaction():
                _complete(conn, me, group, actions, stats, env)
        except work.StaleWrite as exc:
            stats.stale += len(group)
            log.warning("stale advance of execution %s dropped: %s", execution_id, exc)
        except Exception as exc:
            if _is_outage(exc):
                raise
            error = _quarantine_error(execution_id, "advanced", exc)
            with conn.transaction():
                # The attempts end (fenced: only rows still ours), then the execution.
                work.finish_attempts(
                    conn, me, [replace(f, status="failed", error=error, park=None) for f in group]
                )
                work.quarantine(conn, [(execution_id, error)])
            stats.quarantined += 1
    return stats


def _complete(
    conn: psycopg.Connection,
    me: str,
    finished: Sequence[work.Finished],
    actions: Mapping[str, ActionSpec],
    stats: AdvanceStats,
    env: Env,
) -> None:
    ids = sorted({f.task.workflow_execution_id for f in finished})
    executions, now = work.lock_executions(conn, ids, settings=env.settings)
    by_id = {e.id: e for e in executions}
    finished = _check_parks(conn, finished, by_id, env.settings)
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
        _conduct(conn, executions, attempts, set(), now, actions, stats, env)
    work.charge_budgets(conn, executions)


def _check_parks(
    conn: psycopg.Connection,
    finished: Sequence[work.Finished],
    by_id: Mapping[int, Execution],
    settings: Settings,
) -> list[work.Finished]:
    """A nested workflow that cannot start fails its task instead of waiting forever;
    an execution that is canceling (its root was canceled) parks nothing."""
    if not any(f.park for f in finished):
        return list(finished)
    children = [f for f in finished if f.park == "workflow"]
    runnable = control.runnable_workflows(conn, [f.task.action_ref for f in children])
    out = []
    for f in finished:
        execution = by_id.get(f.task.workflow_execution_id)
        problem = None
        if f.park and execution is not None and execution.status == "canceling":
            out.append(replace(f, status="canceled", error=None, park=None))
            continue
        if f.park == "workflow" and execution is not None:
            bounds = jsonbounds.problem(
                f.task.input, settings.json_max_depth, settings.json_max_bytes
            )
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
            elif bounds is not None:
                problem = error_of(
                    "ParameterError", f"parameters of {f.task.action_ref!r}: {bounds}"
                )
            elif execution.budget is not None and not execution.budget.take_execution():
                problem = error_of(
                    "SpawnBudget",
                    f"the execution tree of root {execution.root_id} has created as many"
                    " nested executions as it may (setting max_descendants)",
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
    env: Env,
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
    ctx = Context(now, actions, DbKV(conn), env.signing_key)
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
            batch.add(execution, conductor)
            stats.advanced += len(by_execution.get(execution.id, ()))
        except Exception as exc:
            batch.bug(execution.id, exc)
    batch.write()


def control_pass(
    conn: psycopg.Connection,
    actions: Mapping[str, ActionSpec],
    limit: int = 100,
    env: Env | None = None,
) -> AdvanceStats:
    """Carry out control requests and resume waiting tasks whose inquiry or child ended."""
    env = env or Env.load(conn)
    stats = AdvanceStats()
    ids = control.candidates(conn, limit)
    if not ids:
        return stats
    try:
        with conn.transaction():
            _control(conn, ids, actions, stats, env)
        return stats
    except Exception as exc:
        if _is_outage(exc):
            raise
        log.warning("control pass failed (%s); retrying one execution at a time", exc)
    stats = AdvanceStats()
    for execution_id in ids:
        try:
            with conn.transaction():
                _control(conn, [execution_id], actions, stats, env)
        except Exception as exc:
            if _is_outage(exc):
                raise
            _quarantine(conn, [(execution_id, _quarantine_error(execution_id, "controlled", exc))])
            stats.quarantined += 1
    return stats


def _control(
    conn: psycopg.Connection,
    ids: Sequence[int],
    actions: Mapping[str, ActionSpec],
    stats: AdvanceStats,
    env: Env,
) -> None:
    executions, now = work.lock_executions(conn, ids, settings=env.settings)
    if not executions:
        return
    locked = [e.id for e in executions]
    requested = control.take_requests(conn, locked)
    resumed = control.finish_waiting(conn, locked)
    _conduct(conn, executions, resumed, requested, now, actions, stats, env)
    work.charge_budgets(conn, executions)
    stats.started += len(requested)
