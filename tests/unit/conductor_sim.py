"""An in-memory stand-in for the store and the workers, to drive the pure conductor.

Only tests use it. `Sim` keeps the rows the store keeps in PostgreSQL
(`workflow_execution`, `task_state`, `task_execution`) as dicts, applies the
conductor's commands the way `store.apply.apply_batch` does (same grouping and order:
state inserts, state updates, new rows, releases, cancels, publishes, execution)
and checks, on every write, what SQL's guards and triggers would check:

- a guarded update finds the row in its `before` status (else `StaleWrite`);
- every status change is a legal move of `attune_pg.machine`, every INSERT uses
  one of `machine.INITIAL` (the `attune.guard_status` trigger);
- `(task, iteration, item_index, attempt)` is unique among task_execution rows;
- at most one write per task_state row per flush.

Each event runs the same steps as `advance.py` with only load and apply faked:
`engine.plan.needs` says what to load, `load` reads it from the rows as
`store.load.snapshots` does (the latest iteration of each task in each route, the
older iterations the attempts belong to, what a control request needs), and
`Conductor.of(snapshot)` conducts. `AggregateItems` is answered like
`store.load.item_results` (final attempt of each item, in item order, canceled
items as null) with an `ItemsAggregated` event, which may cascade into more flushes.

Workers are simulated by `claim` (scheduled -> running) and `finish` /
`finish_many` (running -> succeeded | failed | timed_out | canceled, then advance).
`run` drives a whole execution with a `Chooser` deciding the order and outcomes.

Control (schema/0004_control.sql, store/requests.py, advance.request_pass):
`pause`, `resume`, `cancel` and `retry` do what the SQL functions of the same name
do to the rows (record the request on the execution, `ControlRefused` where SQL
raises); `control_pass` is the worker's pass over a pending request: the same
needs/load/conduct as above, then `Conductor.control`. `CancelLive` and
`HoldScheduled` are applied like store/apply.py's cancel and hold writes.
Inquiries and child workflows (`waiting` rows) are not simulated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from attune_pg import machine
from attune_pg.engine import plan
from attune_pg.engine.conductor import Conductor
from attune_pg.engine.state import (
    AggregateItems,
    Attempt,
    CancelLive,
    CancelPendingItems,
    Command,
    Context,
    Execution,
    HoldScheduled,
    ItemsAggregated,
    LiveRows,
    NewTaskRows,
    Publish,
    ReleaseItems,
    Snapshot,
    TaskState,
    WriteExecution,
    WriteTaskState,
)
from attune_pg.spec.model import DEFAULT_ITERATION_CAP, ActionSpec, WorkflowSpec

Json = Any
C = TypeVar("C")

EMPTY_SCHEMA: dict[str, Json] = {"type": "object", "properties": {}, "additionalProperties": False}
ECHO_SCHEMA: dict[str, Json] = {
    "type": "object",
    "properties": {"message": {"type": "string"}},
    "required": ["message"],
    "additionalProperties": False,
}
ANY_SCHEMA: dict[str, Json] = {"type": "object", "properties": {}}

ACTIONS: dict[str, ActionSpec] = {
    "core.noop": ActionSpec(ref="core.noop", runner="builtin", entry_point="noop",
                            parameters=EMPTY_SCHEMA),
    "core.echo": ActionSpec(ref="core.echo", runner="builtin", entry_point="echo",
                            parameters=ECHO_SCHEMA),
    "core.any": ActionSpec(ref="core.any", runner="builtin", entry_point="any",
                           parameters=ANY_SCHEMA),
    "core.slow": ActionSpec(ref="core.slow", runner="builtin", entry_point="noop",
                            parameters=EMPTY_SCHEMA, timeout=30.0),
}  # fmt: skip

ROW_ACTIVE = frozenset({"pending", "scheduled", "running", "waiting"})
ROW_IN_FLIGHT = frozenset({"scheduled", "running", "waiting"})


CANCEL_POLICIES = ("allow_finish", "cancel_running")


class SimViolation(AssertionError):
    """A command the real store (its guards, triggers or constraints) would refuse."""


class ControlRefused(Exception):
    """A control function refused the request and changed nothing (SQL raises
    object_not_in_prerequisite_state or invalid_parameter_value)."""


@dataclass
class Row:
    """One `task_execution` row."""

    id: int
    task_name: str
    iteration: int
    item_index: int | None
    attempt: int
    action_ref: str
    input: dict[str, Json]
    status: str
    delay: float = 0.0
    timeout: float | None = None
    result: Json = None
    error: dict[str, Json] | None = None
    held: bool = False  # released while the execution was pausing: waits for resume
    cancel_requested: bool = False  # cancel_running: the worker kills it, reports canceled

    @property
    def in_flight(self) -> bool:
        """Released work: claimable, running, or held by a pause until resume."""
        return self.status in ROW_IN_FLIGHT or (self.status == "pending" and self.held)

    @property
    def key(self) -> tuple[str, int, int | None, int]:
        return (self.task_name, self.iteration, self.item_index, self.attempt)


@dataclass
class ExecutionRow:
    """The mutable `workflow_execution` row."""

    id: int
    spec: WorkflowSpec
    status: str
    parameters: dict[str, Json]
    vars: dict[str, Json] = field(default_factory=dict)
    active_tasks: int = 0
    error: dict[str, Json] | None = None
    output: Json = None
    timeout_at: float | None = None
    started_at: float | None = None
    cancel_policy: str | None = None
    control_requested: bool = False  # control_requested_at IS NOT NULL

    def snapshot(
        self, running_rows: int | None = None, scheduled_rows: tuple[int, ...] = ()
    ) -> Execution:
        return Execution(
            id=self.id,
            ref=self.spec.ref,
            status=self.status,
            spec=self.spec,
            parameters=dict(self.parameters),
            vars=dict(self.vars),
            active_tasks=self.active_tasks,
            error=self.error,
            output=self.output,
            login="tester",
            started_at=self.started_at,
            cancel_policy=self.cancel_policy,
            running_rows=running_rows,
            scheduled_rows=scheduled_rows,
        )


@dataclass(frozen=True)
class Outcome:
    status: str  # succeeded | failed | timed_out | canceled
    result: Json = None
    error: dict[str, Json] | None = None


def default_result(row: Row) -> Json:
    return {"task": row.task_name, "item": row.item_index, "attempt": row.attempt, **row.input}


def outcome_for(row: Row, status: str) -> Outcome:
    if status == "succeeded":
        return Outcome("succeeded", default_result(row))
    if status == "canceled":  # actions.outcome.canceled: the worker killed the action
        return Outcome("canceled", None, {"type": "Canceled", "message": "action was canceled"})
    return Outcome(status, None, {"type": "ActionFailed", "message": f"{row.task_name} {status}"})


class Sim:
    def __init__(
        self,
        spec: WorkflowSpec,
        parameters: Mapping[str, Json] | None = None,
        *,
        actions: Mapping[str, ActionSpec] = ACTIONS,
        iteration_cap: int = DEFAULT_ITERATION_CAP,
        execution_id: int = 1,
        now: float = 1_000_000.0,
    ) -> None:
        self.spec = spec
        self.actions = dict(actions)
        self.iteration_cap = iteration_cap
        self.now = now
        self.execution = ExecutionRow(
            id=execution_id, spec=spec, status="requested", parameters=dict(parameters or {})
        )
        self.states: dict[tuple[str, int], TaskState] = {}
        self.rows: dict[int, Row] = {}
        self._row_keys: set[tuple[str, int, int | None, int]] = set()
        self._next_id = 1
        # Every flush, in order: what a replay must reproduce exactly.
        self.log: list[list[Command]] = []
        self.publishes: list[Publish] = []
        self.aggregated: list[tuple[str, int, list[Json], list[int]]] = []
        # (entity, key, before, after) for every status write, INSERTs with before None.
        self.changes: list[tuple[str, object, str | None, str]] = []
        # What happened, for coverage statistics of property tests.
        self.stats: Counter[str] = Counter()
        # Largest number of items seen in flight at once, per (task, iteration).
        self.max_in_flight: dict[tuple[str, int], int] = {}

    # ------------------------------------------------------------ queries

    @property
    def status(self) -> str:
        return self.execution.status

    @property
    def terminal(self) -> bool:
        return self.execution.status in machine.WORKFLOW_TERMINAL

    def rows_where(
        self, *, status: str | Iterable[str] | None = None, task: str | None = None,
        iteration: int | None = None,
    ) -> list[Row]:  # fmt: skip
        wanted = {status} if isinstance(status, str) else None if status is None else set(status)
        return [
            r
            for r in sorted(self.rows.values(), key=lambda r: r.id)
            if (wanted is None or r.status in wanted)
            and (task is None or r.task_name == task)
            and (iteration is None or r.iteration == iteration)
        ]

    def scheduled(self) -> list[Row]:
        return self.rows_where(status="scheduled")

    def running(self) -> list[Row]:
        return self.rows_where(status="running")

    def held(self) -> list[Row]:
        return [r for r in self.rows_where() if r.held]

    def open_states(self) -> list[TaskState]:
        """`state_open` (store/load.py): every task state still pending or running."""
        return [s for s in self.states.values() if s.status in ("pending", "running")]

    def unhandled_states(self) -> list[TaskState]:
        """`state_unhandled` (store/load.py): every task state whose failure nobody handled."""
        return [s for s in self.states.values() if s.unhandled]

    def live_rows(self) -> dict[tuple[str, int], LiveRows]:
        """`task_live_rows` (store/load.py): per task state, the rows a cancel leaves alive
        and the ids of its queued rows."""
        running: Counter[tuple[str, int]] = Counter(
            (r.task_name, r.iteration) for r in self.running()
        )
        queued: dict[tuple[str, int], list[int]] = {}
        for row in self.rows_where(status=("pending", "scheduled")):
            queued.setdefault((row.task_name, row.iteration), []).append(row.id)
        if self.rows_where(status="waiting"):  # pragma: no cover - not simulated
            raise SimViolation("waiting rows (inquiries, child workflows) are not simulated")
        return {
            key: LiveRows(running=running[key], queued=tuple(sorted(queued.get(key, ()))))
            for key in sorted(set(running) | set(queued))
        }

    def latest(self) -> dict[str, TaskState]:
        out: dict[str, TaskState] = {}
        for state in self.states.values():
            if state.name not in out or out[state.name].iteration < state.iteration:
                out[state.name] = state
        return out

    def route_latest(self) -> list[TaskState]:
        """What `state_latest` (store/load.py) loads: the latest iteration of each task in
        each route."""
        out: dict[tuple[str, str], TaskState] = {}
        for state in self.states.values():
            key = (state.name, state.route)
            if key not in out or out[key].iteration < state.iteration:
                out[key] = state
        return sorted(out.values(), key=lambda s: (s.name, s.route))

    def state(self, name: str, iteration: int | None = None) -> TaskState:
        if iteration is None:
            return self.latest()[name]
        return self.states[(name, iteration)]

    def iterations(self, name: str) -> list[TaskState]:
        found = [s for s in self.states.values() if s.name == name]
        return sorted(found, key=lambda s: s.iteration)

    def commands(self, kind: type[C]) -> list[C]:
        """Every command of one kind the conductor emitted, in order."""
        return [c for batch in self.log for c in batch if isinstance(c, kind)]

    # ------------------------------------------------------------ events

    def start(self) -> None:
        if self.execution.status != "requested":
            raise SimViolation(f"start of an execution in status {self.execution.status!r}")
        conductor = Conductor.of(Snapshot(self.execution.snapshot()), self._ctx(), **self._cap())
        conductor.start()
        self._write(conductor)

    def claim(self, row_id: int) -> Row:
        row = self.rows[row_id]
        self._move_row(row, "running")
        return row

    def finish(self, row_id: int, outcome: Outcome | str) -> None:
        self.finish_many([(row_id, outcome)])

    def finish_many(self, finished: Sequence[tuple[int, Outcome | str]]) -> None:
        """Several attempts of this execution finished; one advance, like `advance._complete`."""
        self._conduct(self._finished(finished), requested=False)

    def control_pass_with(self, finished: Sequence[tuple[int, Outcome | str]]) -> None:
        """A control pass that also ends waiting tasks (an answer, a child that ended), as
        `advance._control` does: their outcomes first, then the pending request."""
        self.execution.control_requested = False  # control.take_requests
        self._conduct(self._finished(finished), requested=True)

    def _finished(self, finished: Sequence[tuple[int, Outcome | str]]) -> list[Attempt]:
        attempts: list[Attempt] = []
        for row_id, outcome in finished:
            row = self.rows[row_id]
            if row.status != "running":  # the fence of store.fence.finish_attempts
                raise SimViolation(f"finishing row {row_id} in status {row.status!r}")
            if isinstance(outcome, str):
                outcome = outcome_for(row, outcome)
            self._move_row(row, outcome.status)
            row.result, row.error = outcome.result, outcome.error
            attempts.append(
                Attempt(
                    task_execution_id=row.id,
                    execution_id=self.execution.id,
                    task_name=row.task_name,
                    iteration=row.iteration,
                    item_index=row.item_index,
                    attempt=row.attempt,
                    action_ref=row.action_ref,
                    input=dict(row.input),
                    status=row.status,
                    result=row.result,
                    error=row.error,
                )
            )
        attempts.sort(key=lambda a: a.task_execution_id)
        if len(attempts) > 1:
            self.stats["batched advance"] += 1
        return attempts

    # ------------------------------------------------------------ control (SQL functions)

    def _request(self, status: str) -> None:
        """Guarded status change of a control function, then `attune.request_control`."""
        self._set_status(status)
        self.execution.control_requested = True

    def _set_status(self, status: str) -> None:
        ex = self.execution
        self._check_move("workflow", ex.id, ex.status, status)
        ex.status = status

    def pause(self) -> str:
        """`attune.pause_execution`."""
        if self.status != "running":
            raise ControlRefused(f"execution is {self.status}: only a running one can be paused")
        self._request("pausing")
        self.stats["pause"] += 1
        return "pausing"

    def resume(self) -> str:
        """`attune.resume_execution`: running again, held rows scheduled. A request still
        pending (the pause's, or a retry's from before it) is left for the control pass."""
        if self.status not in ("pausing", "paused"):
            raise ControlRefused(f"execution is {self.status}: only a paused one can be resumed")
        self._set_status("running")
        for row in self.held():
            self._move_row(row, "scheduled")
            row.held = False
        self.stats["resume"] += 1
        self._track_in_flight()
        return "running"

    def cancel(self, policy: str | None = None) -> str:
        """`attune.cancel_execution`."""
        ex = self.execution
        if policy is not None and policy not in CANCEL_POLICIES:
            raise ControlRefused(f"cancellation policy must be one of {CANCEL_POLICIES}")
        if self.terminal:
            raise ControlRefused(f"execution is already {ex.status}: there is nothing to cancel")
        if ex.status == "requested":
            self._set_status("canceled")
            return "canceled"
        chosen = policy or self.spec.cancellation_policy or "allow_finish"
        if ex.status == "canceling":
            if chosen == "cancel_running" and ex.cancel_policy != "cancel_running":
                ex.cancel_policy = "cancel_running"
                ex.control_requested = True
                self.stats["cancel escalated"] += 1
                return "canceling"
            raise ControlRefused("execution is already canceling")
        self.stats[f"cancel {chosen} while {ex.status}"] += 1
        self._request("canceling")
        ex.cancel_policy = chosen
        return "canceling"

    def retry(self) -> str:
        """`attune.retry_execution`: failed -> running when a task failure was unhandled."""
        ex = self.execution
        if ex.status != "failed":
            raise ControlRefused(f"execution is {ex.status}: only a failed one can be retried")
        if not any(s.unhandled for s in self.states.values()):
            raise ControlRefused("execution has no failed task to re-run")
        self._request("running")
        ex.error = None
        ex.output = None
        self.stats["retry"] += 1
        return "running"

    def control_pass(self) -> bool:
        """`advance.request_pass` for this execution; False if no request was pending."""
        if not self.execution.control_requested:
            return False
        self.execution.control_requested = False  # control.take_requests
        self._conduct([], requested=True)
        return True

    def _conduct(self, attempts: Sequence[Attempt], *, requested: bool) -> None:
        """`advance._advance` for one execution: needs, load, conduct (attempts first,
        then a control request); `_write` applies."""
        ex = self.execution
        need = plan.needs(ex.snapshot(), attempts, requested)
        snapshot = self.load(need)
        keys = {s.key for s in self.route_latest()}
        self.stats["older iteration finished"] += sum(
            (a.task_name, a.iteration) not in keys for a in attempts
        )
        conductor = Conductor.of(snapshot, self._ctx(), **self._cap())
        for attempt in attempts:
            conductor.attempt_finished(attempt)
        if requested:
            self.stats[f"control pass while {conductor.status}"] += 1
            conductor.control()
        self._write(conductor)

    def load(self, need: plan.Needs) -> Snapshot:
        """`store.load.snapshots` for one execution, from the rows."""
        states = self.route_latest()
        keys = {s.key for s in states}
        states += [self.states[k] for k in need.occurrences if k not in keys]
        if need.open_states:
            states += self.open_states()
        if need.unhandled:
            states += self.unhandled_states()
        running = len(self.running()) if need.running_rows else None
        scheduled = tuple(r.id for r in self.scheduled()) if need.running_rows else ()
        live = self.live_rows() if need.live_rows else {}
        return Snapshot(self.execution.snapshot(running, scheduled), tuple(states), live)

    # ------------------------------------------------------------ applying

    def _cap(self) -> dict[str, int]:
        return {"iteration_cap": self.iteration_cap}

    def _ctx(self) -> Context:
        self.now += 1.0
        return Context(now=self.now, actions=self.actions)

    def _write(self, conductor: Conductor) -> None:
        """`advance._Batch.write`: flush, apply, answer aggregations, until quiet."""
        while True:
            commands = conductor.flush()
            self.log.append(list(commands))
            aggregates = self.apply(commands)
            if not aggregates:
                return
            for agg in aggregates:
                self.stats["items aggregated"] += 1
                results, failed = self.item_results(agg.task_name, agg.iteration)
                event = ItemsAggregated(agg.task_name, agg.iteration, results, failed)
                self.aggregated.append((agg.task_name, agg.iteration, results, failed))
                conductor.items_aggregated(
                    event.task_name, event.iteration, event.results, event.failed_items
                )

    def item_results(self, task: str, iteration: int) -> tuple[list[Json], list[int]]:
        """`store.load.item_results`: the final attempt of every item, in item order."""
        final: dict[int, Row] = {}
        for row in self.rows_where(task=task, iteration=iteration):
            if row.item_index is None:
                continue
            if row.item_index not in final or final[row.item_index].attempt < row.attempt:
                final[row.item_index] = row
        results: list[Json] = []
        failed: list[int] = []
        for index in sorted(final):
            row = final[index]
            if row.status in ROW_ACTIVE:
                raise SimViolation(
                    f"aggregating {task}#{iteration} while item {index} is {row.status}"
                )
            # Canceled items (never run, or killed) stay as null, so positions match indices.
            results.append(None if row.status == "canceled" else row.result)
            if row.status not in ("succeeded", "canceled"):
                failed.append(index)
        return results, failed

    def apply(self, commands: Sequence[Command]) -> list[AggregateItems]:
        """`store.apply.apply_batch` for one execution: grouped by kind, in the store's order."""
        inserts: list[TaskState] = []
        updates: list[tuple[TaskState, str]] = []
        new_rows: list[NewTaskRows] = []
        releases: dict[tuple[str, int, bool], int] = {}
        cancel_live: list[CancelLive] = []
        holds: list[HoldScheduled] = []
        cancels: list[CancelPendingItems] = []
        executions: list[WriteExecution] = []
        aggregates: list[AggregateItems] = []
        seen: set[tuple[str, int]] = set()
        for command in commands:
            if isinstance(command, WriteTaskState):
                if command.state.key in seen:
                    raise SimViolation(f"two writes of task_state {command.state.key} in one flush")
                seen.add(command.state.key)
                if command.before is None:
                    inserts.append(command.state)
                else:
                    updates.append((command.state, command.before))
            elif isinstance(command, NewTaskRows):
                new_rows.append(command)
            elif isinstance(command, ReleaseItems):
                key = (command.task_name, command.iteration, _held(command))
                releases[key] = releases.get(key, 0) + command.count
            elif isinstance(command, CancelLive):
                cancel_live.append(command)
            elif isinstance(command, HoldScheduled):
                holds.append(command)
            elif isinstance(command, CancelPendingItems):
                cancels.append(command)
            elif isinstance(command, Publish):
                self.publishes.append(command)
            elif isinstance(command, AggregateItems):
                aggregates.append(command)
            elif isinstance(command, WriteExecution):
                executions.append(command)
            else:  # pragma: no cover - a new command kind the store would not know
                raise SimViolation(f"unknown command {command!r}")
        for state in inserts:
            self._insert_state(state)
        for state, before in updates:
            self._update_state(state, before)
        for new in new_rows:
            self._insert_rows(new)
        if cancels:
            self.stats["pending items canceled"] += 1
        for (task, iteration, held), count in releases.items():
            pending = sorted(
                (
                    r
                    for r in self.rows_where(status="pending", task=task, iteration=iteration)
                    if not r.held
                ),
                key=lambda r: (r.item_index is None, r.item_index or 0, r.id),
            )
            if len(pending) < count:
                raise SimViolation(
                    f"ReleaseItems {task}#{iteration} x{count}: only {len(pending)} pending"
                )
            for row in pending[:count]:
                if held:
                    row.held = True
                else:
                    self._move_row(row, "scheduled")
        for live in cancel_live:
            self._cancel_live(live)
        if holds:
            self._hold_scheduled(holds)
        for cancel in cancels:
            for row in self.rows_where(
                status="pending", task=cancel.task_name, iteration=cancel.iteration
            ):
                self._move_row(row, "canceled")
        if len(executions) > 1:
            raise SimViolation("two WriteExecution commands in one flush")
        for write in executions:
            self._write_execution(write)
        self._track_in_flight()
        return aggregates

    def _cancel_live(self, live: CancelLive) -> None:
        """`apply._cancel_live`: the queued rows the cancel counted are canceled (held
        cleared); with cancel_running, running rows are marked for their worker to kill.
        A queued row the command does not name stays queued: a bug the drains then show."""
        self.stats["cancel_live" + (" cancel_running" if live.cancel_running else "")] += 1
        for row_id in live.rows:
            row = self.rows[row_id]
            if row.status in ("pending", "scheduled"):
                self._move_row(row, "canceled")
                row.held = False
        if live.cancel_running:
            for row in self.running():
                row.cancel_requested = True

    def _hold_scheduled(self, holds: Sequence[HoldScheduled]) -> None:
        """`apply._hold_scheduled`: the scheduled rows the pause counted go back to
        pending, held; a scheduled row no command names stays scheduled."""
        self.stats["hold_scheduled"] += 1
        for row_id in sorted({i for hold in holds for i in hold.rows}):
            row = self.rows[row_id]
            if row.status == "scheduled":
                self._move_row(row, "pending")
                row.held = True

    def _insert_state(self, state: TaskState) -> None:
        if state.key in self.states:
            raise SimViolation(f"task_state {state.key} inserted twice (primary key)")
        if state.status not in machine.INITIAL["task_state"]:
            raise SimViolation(
                f"task_state {state.key} cannot be created with status {state.status!r}"
                f" (machine.INITIAL: {machine.INITIAL['task_state']})"
            )
        self.states[state.key] = state
        self.changes.append(("task_state", state.key, None, state.status))

    def _update_state(self, state: TaskState, before: str) -> None:
        current = self.states.get(state.key)
        if current is None or current.status != before:
            found = None if current is None else current.status
            raise SimViolation(
                f"StaleWrite: task_state {state.key} expected {before!r}, found {found!r}"
            )
        self._check_move("task_state", state.key, before, state.status)
        self.states[state.key] = state

    def _insert_rows(self, new: NewTaskRows) -> None:
        state = self.states.get((new.task_name, new.iteration))
        if state is None or state.status != "running":
            shown = None if state is None else state.status
            raise SimViolation(
                f"task rows for {new.task_name}#{new.iteration} whose task_state is {shown!r}"
            )
        held = _held(new)
        for i, (index, value) in enumerate(new.items):
            released = i < new.release
            status = "scheduled" if released and not held else "pending"
            if status not in machine.INITIAL["task"]:
                raise SimViolation(f"task row cannot be created {status!r}")
            row = Row(
                id=self._next_id,
                task_name=new.task_name,
                iteration=new.iteration,
                item_index=index,
                attempt=new.attempt,
                action_ref=new.action_ref,
                input=dict(value),
                status=status,
                delay=new.delay,
                timeout=new.timeout,
                held=released and held,
            )
            if row.key in self._row_keys:
                raise SimViolation(f"duplicate task_execution {row.key}")
            self._row_keys.add(row.key)
            self._next_id += 1
            self.rows[row.id] = row
            self.changes.append(("task", row.id, None, status))

    def _move_row(self, row: Row, status: str) -> None:
        self._check_move("task", row.id, row.status, status)
        row.status = status

    def _write_execution(self, write: WriteExecution) -> None:
        row = self.execution
        if row.status != write.before:
            raise SimViolation(
                f"StaleWrite: workflow_execution expected {write.before!r}, found {row.status!r}"
            )
        if write.before == "requested" and write.status not in ("running", "failed"):
            # As store/apply.py does: an execution that ends in its start transaction
            # passes through running (two legal moves, both audited).
            self._check_move("workflow", row.id, row.status, "running")
            row.status = "running"
        self._check_move("workflow", row.id, row.status, write.status)
        if write.before == "requested":
            row.started_at = self.now
        row.status = write.status
        # None means unchanged, as store/apply.py's coalesce() does.
        if write.parameters is not None:
            row.parameters = dict(write.parameters)
        if write.vars is not None:
            row.vars = dict(write.vars)
        row.active_tasks = write.active_tasks
        if write.error is not None:
            row.error = write.error
        if write.output is not None:
            row.output = write.output
        if write.timeout_at is not None:
            row.timeout_at = write.timeout_at
        if write.status in machine.WORKFLOW_TERMINAL:
            # As store/apply.py does: an ended execution closes its pending states.
            for key, state in list(self.states.items()):
                if state.status == "pending":
                    self._check_move("task_state", key, "pending", "canceled")
                    self.states[key] = replace(state, status="canceled")

    def _check_move(self, entity: machine.Entity, key: object, before: str, after: str) -> None:
        if before != after and (before, after) not in machine.moves(entity):
            raise SimViolation(f"illegal {entity} move {before!r} -> {after!r} for {key}")
        if before != after:
            self.changes.append((entity, key, before, after))

    def _track_in_flight(self) -> None:
        for state in self.states.values():
            if state.items_total is None or self.spec.task(state.name).kind == "parallel":
                continue
            rows = self.rows_where(task=state.name, iteration=state.iteration)
            n = sum(1 for r in rows if r.in_flight)
            if n > self.max_in_flight.get(state.key, 0):
                self.max_in_flight[state.key] = n

    # ------------------------------------------------------------ invariants

    def check(self) -> None:
        """What must hold between any two transactions."""
        ex = self.execution
        running_states = [s for s in self.states.values() if s.status == "running"]
        assert ex.active_tasks == len(running_states), (
            f"active_tasks={ex.active_tasks} but running task_states="
            f"{[s.key for s in running_states]}"
        )
        active_rows = self.rows_where(status=ROW_ACTIVE)
        if self.terminal:
            assert ex.active_tasks == 0
            assert not active_rows, f"{ex.status} with active rows {active_rows}"
            pending = [s.key for s in self.states.values() if s.status == "pending"]
            assert not pending, f"{ex.status} with pending task_states {pending}"
        elif ex.status == "running" and not ex.control_requested:
            # (retry_execution sets running and leaves the re-dispatch to the control pass)
            assert ex.active_tasks > 0, "running with nothing active: it can never finish"
        for state in self.states.values():
            rows = self.rows_where(task=state.name, iteration=state.iteration)
            live = [r for r in rows if r.status in ROW_ACTIVE]
            spec = self.spec.task(state.name)
            if state.status == "running" and spec.kind == "parallel":
                subs = {t.name for t in spec.tasks}
                busy = [s for s in self.states.values() if s.name in subs and s.status == "running"]
                assert busy, f"parallel block {state.key} running with no sub-task running: stuck"
            elif state.status == "running":
                flying = [r for r in live if r.in_flight]
                assert flying, f"task_state {state.key} running with nothing in flight: stuck"
            else:
                assert not live, f"task_state {state.key} is {state.status} with live rows {live}"
            if state.items_total is not None and spec.kind != "parallel":
                window = spec.concurrency or state.items_total
                flying_n = sum(1 for r in rows if r.in_flight)
                assert flying_n <= window, f"{state.key}: {flying_n} items in flight > {window}"
            elif state.status in ("running", "succeeded", "failed", "timed_out"):
                # One logical occurrence runs one attempt at a time.
                assert len(live) <= 1, f"{state.key}: several live attempts {live}"
        for key, n in self.max_in_flight.items():
            spec = self.spec.task(key[0])
            if spec.concurrency:
                assert n <= spec.concurrency, f"{key}: {n} items in flight > {spec.concurrency}"


# ----------------------------------------------------------------- driving


def _held(command: NewTaskRows | ReleaseItems) -> bool:
    """`held` (rows released while pausing stay pending); absent in older commands."""
    return bool(getattr(command, "held", False))


class Chooser(Protocol):
    def choose(self, n: int, what: str) -> int:
        """An index in range(n)."""
        ...


@dataclass
class ListChooser:
    """Replays recorded choices (0 once they run out)."""

    choices: list[int]
    position: int = 0

    def choose(self, n: int, what: str) -> int:
        if self.position >= len(self.choices):
            return 0
        value = self.choices[self.position] % n
        self.position += 1
        return value


@dataclass
class FirstChooser:
    """Always the first option: claim everything in id order, then finish in id order."""

    def choose(self, n: int, what: str) -> int:
        return 0


OUTCOMES = ("succeeded", "failed", "timed_out")


def run(
    sim: Sim,
    chooser: Chooser,
    *,
    outcome: Callable[[Row, Chooser], Outcome | str] | None = None,
    max_batch: int = 1,
    max_steps: int = 10_000,
    after_each: Callable[[Sim], None] | None = None,
) -> None:
    """Start (if needed) and drive the execution until nothing is claimable or running.

    Each step either claims one scheduled row or finishes 1..max_batch running rows
    in one advance; the chooser decides which, and `outcome` how each attempt ends
    (default: the chooser picks among succeeded/failed/timed_out).
    """

    def pick_outcome(row: Row) -> Outcome | str:
        if outcome is not None:
            return outcome(row, chooser)
        return OUTCOMES[chooser.choose(len(OUTCOMES), "outcome")]

    if sim.status == "requested":
        sim.start()
        sim.check()
        if after_each:
            after_each(sim)
    for _ in range(max_steps):
        scheduled = sim.scheduled()
        running = sim.running()
        options = len(scheduled) + len(running)
        if options == 0:
            break
        choice = chooser.choose(options, "step")
        if choice < len(scheduled):
            sim.claim(scheduled[choice].id)
        else:
            first = choice - len(scheduled)
            batch = [running[first]]
            if max_batch > 1 and len(running) > 1:
                extra = chooser.choose(min(max_batch, len(running)), "batch")
                others = [r for r in running if r.id != running[first].id]
                batch += others[:extra]
            sim.finish_many([(r.id, pick_outcome(r)) for r in batch])
        sim.check()
        if after_each:
            after_each(sim)
    else:  # pragma: no cover
        raise AssertionError(f"no end after {max_steps} steps")


def succeed_all(row: Row, chooser: Chooser) -> Outcome | str:
    return "succeeded"


def drain(
    sim: Sim,
    outcomes: Mapping[str, str | Callable[[Row], Outcome | str]] | None = None,
    *,
    after_each: Callable[[Sim], None] | None = None,
) -> Sim:
    """Run to the end in id order; `outcomes[task]` says how that task's attempts end
    (a status, or a function of the row), default succeeded."""
    table = dict(outcomes or {})

    def decide(row: Row, chooser: Chooser) -> Outcome | str:
        rule = table.get(row.task_name, "succeeded")
        return rule(row) if callable(rule) else rule

    run(sim, FirstChooser(), outcome=decide, after_each=after_each)
    return sim
