"""One execution's in-transaction state, as the conductor changes it (pure).

`Run` holds the locked execution's copies (status, variables, counters, the task
states this transaction knows) and the commands gathered so far; `flush()` turns
what changed into commands, at most one write per row. It decides nothing: the
decisions are in routing.py (transitions, joins, dispatch, retries, parallel blocks,
completion), fanout.py (with-items windows) and requests.py (cancel, pause, retry),
which all take a `Run`; conductor.py feeds events in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from attune_pg import template
from attune_pg.engine import render
from attune_pg.engine.state import (
    AggregateItems,
    Command,
    Context,
    Execution,
    LiveRows,
    TaskState,
    WriteExecution,
    WriteTaskState,
)
from attune_pg.machine import (
    TASK_STATE_OPEN,
    WORKFLOW_DISPATCHING,
    TaskStateStatus,
    WorkflowStatus,
)
from attune_pg.secrets import Binding, secret_parameter_key, secret_token, signed_token
from attune_pg.spec.model import DEFAULT_ITERATION_CAP
from attune_pg.spec.params import secret_parameters, with_unset

Json = Any


def error_of(kind: str, message: str, **extra: Json) -> dict[str, Json]:
    return {"type": kind, "message": message, **extra}


class _Written(NamedTuple):
    """The execution row's values the conductor may change, as last loaded or written:
    a flush writes what differs. (A tuple: built once a flush, and a copy of the whole
    `Execution` cost a worker 3 % of its CPU.)"""

    status: WorkflowStatus
    parameters: Mapping[str, Json]
    vars: Mapping[str, Json]
    active_tasks: int
    error: Json
    output: Json


class Run:
    def __init__(
        self,
        execution: Execution,
        tasks: Mapping[str, TaskState] | Iterable[TaskState],
        ctx: Context,
        *,
        iteration_cap: int = DEFAULT_ITERATION_CAP,
        max_items: int | None = None,
        max_context_bytes: int | None = None,
        live: Mapping[tuple[str, int], LiveRows] | None = None,
    ) -> None:
        self.spec = execution.spec
        self.ctx = ctx
        # The owner's limits (attune.setting max_iterations, max_items, max_context_bytes).
        self.iteration_cap = iteration_cap
        self.max_items = max_items
        self.max_context_bytes = max_context_bytes
        self._before = _Written(
            execution.status,
            execution.parameters,
            execution.vars,
            execution.active_tasks,
            execution.error,
            execution.output,
        )
        self.status = WorkflowStatus(execution.status)
        self.vars = dict(execution.vars)
        self.parameters = dict(execution.parameters)
        self.active = execution.active_tasks
        self.error = execution.error
        self.output: Json = execution.output
        self.timeout_at: float | None = None
        self.execution = execution
        # Per task state: the rows a cancel leaves alive (loaded for a canceling pass).
        self.live: Mapping[tuple[str, int], LiveRows] = live or {}
        loaded = list(tasks.values() if isinstance(tasks, Mapping) else tasks)
        # Latest iteration of each task (what templates see as task.<name>), and of
        # each task in each route (what joins and deferred triggers count on).
        self.latest: dict[str, TaskState] = {}
        self.route_latest: dict[tuple[str, str], TaskState] = {}
        # Every state touched in this transaction, with its status when loaded.
        self._states: dict[tuple[str, int], TaskState] = {}
        self._loaded: dict[tuple[str, int], TaskStateStatus | None] = {}
        for state in loaded:
            self.add_state(state)
        self._dirty: list[tuple[str, int]] = []
        self._commands: list[Command] = []
        # uuid() in templates: deterministic ids for this transaction (render.py).
        self._uuids = render.uuid_source(execution.id, ctx.now)
        # The attempt number templates see as system.attempt: that of the attempt
        # whose end is being routed, or 1 for a task being dispatched.
        self.attempt = 1

    # ------------------------------------------------------------ the states

    def add_state(self, state: TaskState) -> None:
        """Make a (possibly older) iteration known before an attempt of it finishes."""
        if state.key in self._states:
            return
        self._states[state.key] = state
        self._loaded[state.key] = state.status
        self._note_latest(state)

    def put(self, state: TaskState) -> None:
        """Change a task state (written by the next flush)."""
        if state.key not in self._dirty:
            self._dirty.append(state.key)
        self._states[state.key] = state
        self._note_latest(state)

    def state(self, name: str, iteration: int) -> TaskState:
        return self._states[(name, iteration)]

    def states(self) -> list[TaskState]:
        return list(self._states.values())

    def open_states(self) -> list[TaskState]:
        return [s for s in self._states.values() if s.status in TASK_STATE_OPEN]

    def pending_states(self) -> list[TaskState]:
        return [s for s in self._states.values() if s.status == TaskStateStatus.PENDING]

    def unhandled_states(self) -> list[TaskState]:
        return [s for s in self._states.values() if s.unhandled]

    def next_number(self, name: str) -> int:
        latest = self.latest.get(name)
        return latest.iteration + 1 if latest else 1

    def _note_latest(self, state: TaskState) -> None:
        latest = self.latest.get(state.name)
        if latest is None or latest.iteration <= state.iteration:
            self.latest[state.name] = state
        key = (state.name, state.route)
        in_route = self.route_latest.get(key)
        if in_route is None or in_route.iteration <= state.iteration:
            self.route_latest[key] = state

    # ------------------------------------------------------------ the workflow

    def emit(self, command: Command) -> None:
        self._commands.append(command)

    def dispatching(self) -> bool:
        """New tasks may be dispatched (held, while pausing)."""
        return self.status in WORKFLOW_DISPATCHING and self.error is None

    def deferring(self) -> bool:
        """Failing (an unhandled failure, running tasks draining): transitions are still
        recorded, as pending states that are never dispatched, so retry_execution can
        replay them; the end of the execution cancels them."""
        return self.status in WORKFLOW_DISPATCHING and self.error is not None

    def held(self) -> bool:
        """Pausing: what is dispatched now waits (held) until resume."""
        return self.status != WorkflowStatus.RUNNING

    def aggregating(self, state: TaskState) -> bool:
        """Its items are all done and their aggregation is among this run's commands: the
        aggregation ends the task, nothing else may."""
        return AggregateItems(state.name, state.iteration) in self._commands

    def fail_workflow(self, error: dict[str, Json]) -> None:
        """Record the first unhandled failure; nothing new is dispatched after it."""
        if self.error is None:
            self.error = error

    def spend(self, rows: int, task: str) -> dict[str, Json] | None:
        """Take `rows` new task rows from the tree's budget; the error if it is spent."""
        budget = self.execution.budget
        descendant = self.execution.root_id not in (0, self.execution.id)
        if budget is None or budget.take_rows(rows, descendant=descendant):
            return None
        return error_of(
            "SpawnBudget",
            f"task {task!r} needs {rows} more task rows, but the execution tree of root"
            f" {budget.root_id} has used its budget (setting max_task_rows)",
            task=task,
        )

    def context_problem(self, task: str) -> dict[str, Json] | None:
        """The variables after a publish, if they outgrow max_context_bytes."""
        if self.max_context_bytes is None:
            return None
        size = len(json.dumps(self.vars, ensure_ascii=False, default=str).encode())
        if size <= self.max_context_bytes:
            return None
        return error_of(
            "ContextLimit",
            f"task {task!r} published variables of {size:,} bytes of JSON in all, over the"
            f" limit of {self.max_context_bytes:,} bytes (setting max_context_bytes)",
            task=task,
        )

    def scope(
        self,
        current: template.CurrentTask | None = None,
        *,
        item: Json = template.MISSING,
        index: Json = template.MISSING,
        task: str | None = None,
    ) -> dict[str, Json]:
        """The template scope; with `task`, the scope of that task's input (and items):
        secrets render as tokens signed for that task only (secrets.py)."""
        attempt = self.attempt if current is not None else 1
        parameters: Mapping[str, Json] = self.parameters
        token = None
        if task is not None:
            binding = Binding(self.execution.id, task, self.ctx.signing_key)
            token = lambda key: signed_token(key, binding)  # noqa: E731
            secret = secret_parameters(self.spec.parameters)
            if secret:
                parameters = dict(parameters)
                for name in secret:
                    key = secret_parameter_key(self.execution.id, name)
                    if parameters.get(name) == secret_token(key):
                        parameters[name] = signed_token(key, binding)
        return template.build_scope(
            parameters=with_unset(self.spec.parameters, parameters),
            vars=self.vars,
            tasks=render.task_views(self.latest),
            pack_config=self.execution.pack_config,
            system=render.system_view(self.execution, self.ctx.now, attempt),
            kv=self.ctx.kv,
            current=current,
            item=item,
            index=index,
            token=token,
            now=self.ctx.now,
            uuids=self._uuids,
        )

    # ------------------------------------------------------------ output

    def flush(self) -> list[Command]:
        """The commands for everything that changed, then forget them."""
        commands: list[Command] = [
            WriteTaskState(self._states[key], self._loaded.get(key)) for key in self._dirty
        ]
        commands.extend(self._commands)
        for key in self._dirty:
            self._loaded[key] = self._states[key].status
        self._dirty = []
        self._commands = []
        before = self._before
        if (
            self.status != before.status
            or self.parameters != before.parameters
            or self.vars != before.vars
            or self.active != before.active_tasks
            or self.error != before.error
            or self.output != before.output
            or self.timeout_at is not None
        ):
            commands.append(
                WriteExecution(
                    before=before.status,
                    status=self.status,
                    active_tasks=self.active,
                    parameters=self.parameters if self.parameters != before.parameters else None,
                    vars=self.vars if self.vars != before.vars else None,
                    error=self.error if self.error != before.error else None,
                    output=self.output if self.output != before.output else None,
                    timeout_at=self.timeout_at,
                )
            )
            # What was written, as the next flush compares it: copies, since the run's
            # own dicts change in place.
            self._before = _Written(
                self.status,
                dict(self.parameters),
                dict(self.vars),
                self.active,
                self.error,
                self.output,
            )
            self.timeout_at = None
        return commands
