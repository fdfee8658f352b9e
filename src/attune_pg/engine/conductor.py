"""The pure conductor: (snapshot, event, context) -> commands.

One `Conductor` is built per advance transaction from the locked execution row
and the latest `task_state` of each task. Events are fed in (`start`,
`attempt_finished`, `items_aggregated`); the conductor updates its in-memory
copies and `flush()` returns the commands, with at most one write per row.

No I/O, no clock, no randomness: the same snapshot and events always give the
same commands (retry jitter is derived from a hash of the task occurrence).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from attune_pg import template
from attune_pg.engine import control, fanout, render
from attune_pg.engine.state import (
    AggregateItems,
    Attempt,
    Command,
    Context,
    Execution,
    HoldScheduled,
    LiveRows,
    NewTaskRows,
    Publish,
    TaskState,
    WriteExecution,
    WriteTaskState,
)
from attune_pg.errors import ParameterError, TemplateError
from attune_pg.redact import redact
from attune_pg.secrets import (
    Binding,
    secret_parameter_key,
    secret_token,
    signed_token,
    token_keys,
)
from attune_pg.spec.model import DEFAULT_ITERATION_CAP, TaskSpec
from attune_pg.spec.params import secret_parameters, validate_parameters, with_unset

Json = Any

FAILED = frozenset({"failed", "timed_out"})
DONE = frozenset({"succeeded", "failed", "timed_out", "canceled", "skipped"})
# Workflow statuses in which new tasks are dispatched (held, while pausing).
DISPATCHING = frozenset({"running", "pausing", "paused"})
# Statuses from which the workflow finishes once nothing is active.
FINISHABLE = frozenset({"running", "pausing", "paused", "canceling"})
TIMEOUT_ERROR = "WorkflowTimedOut"


def error_of(kind: str, message: str, **extra: Json) -> dict[str, Json]:
    return {"type": kind, "message": message, **extra}


class Conductor:
    def __init__(
        self,
        execution: Execution,
        tasks: Mapping[str, TaskState] | Iterable[TaskState],
        ctx: Context,
        *,
        iteration_cap: int = DEFAULT_ITERATION_CAP,
        max_items: int | None = None,
        max_context_bytes: int | None = None,
    ) -> None:
        self.spec = execution.spec
        self.ctx = ctx
        # The owner's limits (attune.setting max_iterations, max_items, max_context_bytes).
        self.iteration_cap = iteration_cap
        self.max_items = max_items
        self.max_context_bytes = max_context_bytes
        self._before = execution
        self.status = execution.status
        self.vars = dict(execution.vars)
        self.parameters = dict(execution.parameters)
        self.active = execution.active_tasks
        self.error = execution.error
        self.output: Json = execution.output
        self.timeout_at: float | None = None
        self.execution = execution
        # The store loads the latest iteration of each task in each route.
        loaded = list(tasks.values() if isinstance(tasks, Mapping) else tasks)
        # Latest iteration of each task (what templates see as task.<name>), and of
        # each task in each route (what joins and deferred triggers count on).
        self.latest: dict[str, TaskState] = {}
        self.route_latest: dict[tuple[str, str], TaskState] = {}
        # Every state touched in this transaction, with its status when loaded.
        self._states: dict[tuple[str, int], TaskState] = {}
        self._loaded: dict[tuple[str, int], str | None] = {}
        for state in loaded:
            self.add_state(state)
        self._dirty: list[tuple[str, int]] = []
        self._commands: list[Command] = []
        # uuid() in templates: deterministic ids for this transaction (render.py).
        self._uuids = render.uuid_source(execution.id, ctx.now)
        # The attempt number templates see as system.attempt: that of the attempt
        # whose end is being routed, or 1 for a task being dispatched.
        self._attempt = 1

    # ------------------------------------------------------------ events

    def start(self) -> None:
        """A requested execution begins: validate parameters, set vars, run start tasks."""
        self.status = "running"
        where = f"workflow {self.spec.ref!r}"
        secret = secret_parameters(self.spec.parameters)
        own = {secret_parameter_key(self.execution.id, n): n for n in secret}
        raw = self.execution.parameters
        try:
            if token_keys(raw) - own.keys():
                # Only kv.get_secret (and a secret parameter's own key) may produce a
                # token; a forged one could hand a secret to an action.
                raise ParameterError(f"{where}: parameters may not contain secret tokens")
            # Secret parameters already moved to kv were validated before the move
            # (advance.py); their tokens are only checked to be strings here.
            stashed = {own[k] for k in token_keys(raw) if k in own}
            schema = dict(self.spec.parameters)
            schema["properties"] = {
                name: {"type": "string"} if name in stashed else prop
                for name, prop in (schema.get("properties") or {}).items()
            }
            self.parameters = validate_parameters(schema, raw, where=where)
            rendered = template.render(self.spec.vars, self._scope(), where=f"{where} vars")
        except (ParameterError, TemplateError) as exc:
            # Bad input ends the execution before any task exists; a secret parameter's
            # value never reaches the error.
            values = [v for n, v in raw.items() if n in secret and isinstance(v, str) and v]
            self._fail_workflow(error_of(type(exc).__name__, redact(str(exc), values)))
            self._check_complete()
            return
        self.vars = dict(rendered) if isinstance(rendered, dict) else {}
        if self.spec.timeout:
            self.timeout_at = self.ctx.now + self.spec.timeout
        for task in self.spec.start_tasks():
            self._trigger(task.name)
        self._check_complete()

    def add_state(self, state: TaskState) -> None:
        """Make a (possibly older) iteration known before an attempt of it finishes."""
        if state.key in self._states:
            return
        self._states[state.key] = state
        self._loaded[state.key] = state.status
        self._note_latest(state)

    def attempt_finished(self, attempt: Attempt) -> None:
        spec = self.spec.task(attempt.task_name)
        state = self._states[(attempt.task_name, attempt.iteration)]
        self._attempt = attempt.attempt
        if attempt.status in FAILED and self._should_retry(spec, attempt):
            pass
        elif attempt.item_index is None:
            self._task_done(state, attempt.status, attempt.result, attempt.error)
        else:
            fanout.item_done(self, spec, state, attempt)
        # Once per event, never mid-routing: a task that ends while its siblings are
        # still being dispatched must not let the workflow finish under them.
        self._check_complete()
        self._attempt = 1

    def items_aggregated(
        self, task_name: str, iteration: int, results: list[Json], failed_items: list[int]
    ) -> None:
        """All released items of a with-items task finished; `results` is in item order."""
        fanout.items_finished(self, self._states[(task_name, iteration)], results, failed_items)
        self._check_complete()

    def control(self, live: Mapping[tuple[str, int], LiveRows]) -> None:
        """Carry out a control request recorded on the execution row (see control.py)."""
        if self.status not in FINISHABLE:
            return  # ended before its control pass ran: nothing left to do
        if self.status == "canceling":
            control.cancel(self, live)
            return
        if self.error is None and self.unhandled_states():
            # retry_execution cleared the error (a failing workflow keeps its error):
            # redrive, even if a pause arrived before this pass ran.
            control.redrive(self)
        if self.status == "pausing":
            control.pause(self)
        elif self.status == "running":
            self._check_complete()

    # The narrow interface control.py uses.
    def emit(self, command: Command) -> None:
        self._commands.append(command)

    def put(self, state: TaskState) -> None:
        self._put(state)

    def dispatching(self) -> bool:
        return self._dispatching()

    def held(self) -> bool:
        return self._held()

    def open_states(self) -> list[TaskState]:
        return [s for s in self._states.values() if s.status in ("pending", "running")]

    def task_done(self, state: TaskState, status: str, result: Json, error: Json) -> None:
        self._task_done(state, status, result, error)

    def aggregating(self, state: TaskState) -> bool:
        """Its items are all done and their aggregation is among this run's commands: the
        aggregation ends the task, nothing else may."""
        return AggregateItems(state.name, state.iteration) in self._commands

    def unhandled_states(self) -> list[TaskState]:
        return [s for s in self._states.values() if s.unhandled]

    def dispatch(self, spec: TaskSpec, state: TaskState) -> None:
        self._dispatch(spec, state)

    def new_iteration(self, spec: TaskSpec, route: str) -> bool:
        return self._new_iteration(spec, route)

    def next_number(self, name: str) -> int:
        latest = self.latest.get(name)
        return latest.iteration + 1 if latest else 1

    def check_complete(self) -> None:
        self._check_complete()

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
            self._before = replace(
                before,
                status=self.status,
                parameters=dict(self.parameters),
                vars=dict(self.vars),
                active_tasks=self.active,
                error=self.error,
                output=self.output,
            )
            self.timeout_at = None
        return commands

    # ------------------------------------------------------------ internals

    def _put(self, state: TaskState) -> None:
        if state.key not in self._dirty:
            self._dirty.append(state.key)
        self._states[state.key] = state
        self._note_latest(state)

    def _note_latest(self, state: TaskState) -> None:
        latest = self.latest.get(state.name)
        if latest is None or latest.iteration <= state.iteration:
            self.latest[state.name] = state
        key = (state.name, state.route)
        in_route = self.route_latest.get(key)
        if in_route is None or in_route.iteration <= state.iteration:
            self.route_latest[key] = state

    def _dispatching(self) -> bool:
        return self.status in DISPATCHING and self.error is None

    def _held(self) -> bool:
        """Pausing: what is dispatched now waits (held) until resume."""
        return self.status != "running"

    def _scope(
        self,
        current: template.CurrentTask | None = None,
        *,
        item: Json = template.MISSING,
        index: Json = template.MISSING,
        task: str | None = None,
    ) -> dict[str, Json]:
        """The template scope; with `task`, the scope of that task's input (and items):
        secrets render as tokens signed for that task only (secrets.py)."""
        attempt = self._attempt if current is not None else 1
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

    def _spend(self, rows: int, task: str) -> dict[str, Json] | None:
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

    def _context_problem(self, task: str) -> dict[str, Json] | None:
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

    def _fail_workflow(self, error: dict[str, Json]) -> None:
        """Record the first unhandled failure; nothing new is dispatched after it."""
        if self.error is None:
            self.error = error

    # -- retries

    def _should_retry(self, spec: TaskSpec, attempt: Attempt) -> bool:
        policy = spec.retry
        if policy is None or attempt.attempt > policy.count or not self._dispatching():
            return False
        if policy.on_error:
            current = template.CurrentTask(attempt.status, attempt.result, attempt.error)
            where = f"task {spec.name!r} retry.on_error"
            try:
                if not template.truthy(
                    template.render(policy.on_error, self._scope(current), where=where)
                ):
                    return False
            except TemplateError as exc:
                self._fail_workflow(error_of("TemplateError", str(exc), task=spec.name))
                return False
        problem = self._spend(1, spec.name)
        if problem is not None:
            self._fail_workflow(problem)
            return False
        nxt = attempt.attempt + 1
        delay = policy.delay_before(nxt)
        if policy.jitter:
            seed = f"{self.execution.id}:{spec.name}:{attempt.iteration}:{attempt.item_index}:{nxt}"
            delay += delay * policy.jitter * (zlib.crc32(seed.encode()) / 0xFFFFFFFF)
        self._commands.append(
            NewTaskRows(
                task_name=spec.name,
                iteration=attempt.iteration,
                action_ref=attempt.action_ref,
                attempt=nxt,
                items=((attempt.item_index, attempt.input),),
                release=1,
                delay=delay,
                timeout=self._timeout(spec),
                held=self._held(),
            )
        )
        return True

    # -- finishing a task and following its transitions

    def _task_done(self, state: TaskState, status: str, result: Json, error: Json) -> None:
        if state.status == "running":
            self.active -= 1
        state = replace(state, status=status, result=result, error=error)
        self._put(state)
        if status != "canceled":
            self._route(state)
        fanout.sub_task_done(self, state)

    def _route(self, state: TaskState) -> None:
        spec = self.spec.task(state.name)
        current = template.CurrentTask(state.status, state.result, state.error)
        handled = False
        joined: set[str] = set()
        # A decision routes a result: a task that did not succeed takes no branch (its
        # failure is reported as itself, not as an error in a branch's expression), and
        # of its branches only the first that matches fires.
        branches = spec.decision_flags()
        decided = False
        for number, transition in enumerate(spec.next):
            if branches[number] and (decided or state.status != "succeeded"):
                continue
            where = f"task {spec.name!r} next[{number}]"
            try:
                if transition.when is not None and not template.truthy(
                    template.render(transition.when, self._scope(current), where=f"{where}.when")
                ):
                    continue
                handled = True
                if transition.publish:
                    published: dict[str, Json] = {}
                    for name, value in transition.publish:
                        published[name] = template.render(
                            value, self._scope(current), where=f"{where}.publish.{name}"
                        )
                        self.vars[name] = published[name]
                    self._commands.append(Publish(spec.name, published))
                    too_big = self._context_problem(spec.name)
                    if too_big is not None:
                        self._fail_workflow(too_big)
                        return
            except TemplateError as exc:
                self._fail_workflow(error_of("TemplateError", str(exc), task=spec.name))
                return
            for target in transition.do:
                if self.spec.task(target).join is not None:
                    # One occurrence arrives at a join once, however many of its
                    # transitions lead there.
                    if target in joined:
                        continue
                    joined.add(target)
                self._trigger(target, state, number)
            decided = decided or branches[number]
        if state.status in FAILED and not handled and self.spec.block_of(spec.name) is None:
            # A sub-task's failure is its block's to report; anything else is unhandled,
            # and retry_execution will re-run it.
            self._put(replace(state, unhandled=True))
            message = (
                (state.error or {}).get("message", "") if isinstance(state.error, dict) else ""
            )
            self._fail_workflow(
                error_of(
                    "TaskFailed",
                    f"task {spec.name!r} {state.status.replace('_', ' ')}"
                    + (f": {message}" if message else ""),
                    task=spec.name,
                )
            )

    def _deferring(self) -> bool:
        """Failing (an unhandled failure, running tasks draining): transitions are still
        recorded, as pending states that are never dispatched, so retry_execution can
        replay them; the end of the execution cancels them."""
        return self.status in DISPATCHING and self.error is not None

    def _route_of(self, name: str, source: TaskState | None, transition: int) -> str:
        """The route an arrival at `name` runs in: the source's, extended with the
        transition when `name` is a split task (Orquesta's `_evaluate_route`)."""
        if source is None:
            return ""
        if not self.spec.is_split(name):
            return source.route
        step = f"{source.name}__t{transition}"
        parts = source.route.split("/") if source.route else []
        return source.route if step in parts else "/".join([*parts, step])

    def _trigger(self, name: str, source: TaskState | None = None, transition: int = 0) -> None:
        """A transition of `source` (None: the workflow's start) arrives at `name`."""
        deferring = self._deferring()
        if not self._dispatching() and not deferring:
            return
        spec = self.spec.task(name)
        route = self._route_of(name, source, transition)
        latest = self.route_latest.get((name, route))
        if spec.join is None:
            if deferring:
                # Each deferred trigger is counted (join_arrivals), so a retry
                # replays every one of them.
                if latest is not None and latest.status == "pending":
                    self._put(replace(latest, join_arrivals=latest.join_arrivals + 1))
                else:
                    self._put(
                        TaskState(
                            spec.name, self.next_number(name), "pending", join_arrivals=1,
                            route=route,
                        )
                    )  # fmt: skip
                return
            self._new_iteration(spec, route)
            return
        self._join_arrival(spec, route, latest, source.name if source else "", deferring)

    def _join_arrival(
        self, spec: TaskSpec, route: str, latest: TaskState | None, origin: str, deferring: bool
    ) -> None:
        """Count an arrival at a join, per route and per distinct predecessor.

        The round open in this route (the latest occurrence) collects distinct
        predecessors: a repeat arrival from one already counted changes nothing while
        the round waits. Once the round has fired (`join: N` below all), arrivals from
        the predecessors still missing are absorbed into it; anything else opens a new
        round. The required count comes from the spec (the execution's snapshot)."""
        required = self.spec.join_required(spec.name) or 1
        total = len(self.spec.predecessors(spec.name))
        if latest is not None and latest.join_required is not None:
            seen = latest.join_from
            if latest.status == "pending":
                if origin in seen:
                    return
                latest = replace(
                    latest,
                    join_from=(*seen, origin),
                    join_arrivals=latest.join_arrivals + 1,
                    join_required=required,
                )
                if latest.join_arrivals >= required and not deferring:
                    self._dispatch(spec, latest)
                else:
                    self._put(latest)
                return
            if origin not in seen and latest.join_arrivals < total:
                arrivals = latest.join_arrivals + 1
                self._put(replace(latest, join_from=(*seen, origin), join_arrivals=arrivals))
                return
        iteration = self._next_iteration(spec)
        if iteration is None:
            return
        state = TaskState(
            spec.name, iteration, "pending", join_required=required, join_arrivals=1,
            route=route, join_from=(origin,),
        )  # fmt: skip
        if required <= 1 and not deferring:
            self._dispatch(spec, state)
        else:
            self._put(state)

    def _next_iteration(self, spec: TaskSpec) -> int | None:
        iteration = self.next_number(spec.name)
        if iteration > self.iteration_cap:
            self._fail_workflow(
                error_of(
                    "IterationCap",
                    f"task {spec.name!r} was triggered more than {self.iteration_cap} times"
                    " (setting max_iterations)",
                    task=spec.name,
                )
            )
            return None
        return iteration

    def _new_iteration(self, spec: TaskSpec, route: str) -> bool:
        iteration = self._next_iteration(spec)
        if iteration is None:
            return False
        self._dispatch(spec, TaskState(spec.name, iteration, "pending", route=route))
        return True

    def _timeout(self, spec: TaskSpec) -> float | None:
        action = self.ctx.actions.get(spec.action or "")
        limits = [t for t in (spec.timeout, action.timeout if action else None) if t]
        return min(limits) if limits else None

    def _dispatch(self, spec: TaskSpec, state: TaskState) -> None:
        """Run the task occurrence `state` (new, or a pending join now satisfied)."""
        where = f"task {spec.name!r}"
        try:
            if spec.when is not None and not template.truthy(
                template.render(spec.when, self._scope(), where=f"{where} when")
            ):
                skipped = replace(state, status="skipped")
                self._put(skipped)
                fanout.sub_task_done(self, skipped)
                return
        except TemplateError as exc:
            self._fail_before_run(state, error_of("TemplateError", str(exc)))
            return
        running = replace(state, status="running")
        self.active += 1
        if spec.kind == "parallel":
            self._put(replace(running, items_total=len(spec.tasks), items_released=len(spec.tasks)))
            for sub_task in spec.tasks:
                if not self._new_iteration(sub_task, state.route):
                    # Could not start (iteration cap): counts as a failed sub-task.
                    never = TaskState(sub_task.name, 0, "failed", error=self.error)
                    fanout.sub_task_done(self, never)
            return
        action = self.ctx.actions.get(spec.action or "")
        if action is None:
            self._put(running)
            self._task_done(
                running,
                "failed",
                None,
                error_of("UnknownAction", f"action {spec.action!r} is not registered"),
            )
            return

        def scope_for(**names: Json) -> dict[str, Json]:
            return self._scope(task=spec.name, **names)

        try:
            items = render.items(spec, scope_for(), self.max_items)
            inputs = render.inputs(spec, items, action.parameters, scope_for)
        except (TemplateError, ParameterError) as exc:
            self._put(running)
            self._task_done(running, "failed", None, error_of(type(exc).__name__, str(exc)))
            return
        problem = self._spend(len(inputs), spec.name)
        if problem is not None:
            self._fail_workflow(problem)
            self._put(running)
            self._task_done(running, "failed", None, problem)
            return
        if items is None:
            self._put(running)
            self._commands.append(
                NewTaskRows(
                    task_name=spec.name,
                    iteration=state.iteration,
                    action_ref=action.ref,
                    attempt=1,
                    items=((None, inputs[0]),),
                    release=1,
                    delay=spec.delay or 0.0,
                    timeout=self._timeout(spec),
                    held=self._held(),
                )
            )
            return
        total = len(inputs)
        release = min(spec.concurrency or total, total)
        running = replace(running, items_total=total, items_released=release)
        self._put(running)
        if total == 0:
            result = {"results": [], "failed_items": [], "total_count": 0}
            self._task_done(running, "succeeded", result, None)
            return
        self._commands.append(
            NewTaskRows(
                task_name=spec.name,
                iteration=state.iteration,
                action_ref=action.ref,
                attempt=1,
                items=tuple(enumerate(inputs)),
                release=release,
                delay=spec.delay or 0.0,
                timeout=self._timeout(spec),
                held=self._held(),
            )
        )

    def _fail_before_run(self, state: TaskState, error: dict[str, Json]) -> None:
        running = replace(state, status="running")
        self.active += 1
        self._put(running)
        self._task_done(running, "failed", None, error)

    # -- completion

    def _check_complete(self) -> None:
        if self.active > 0 or self.status not in FINISHABLE:
            if self.status == "pausing" and self.execution.running_rows == 0:
                # Nothing runs any more. Hold what is scheduled here too: the control
                # pass that would have held it may not have run yet.
                self._commands.append(HoldScheduled())
                self.status = "paused"
            return
        # Every pending state known to this transaction, not only the latest ones: a
        # retry's replays can leave a deferred trigger behind a newer iteration.
        waiting = [s for s in self._states.values() if s.status == "pending"]
        if self.error is None and self.status != "canceling":
            for state in (s for s in waiting if s.join_required is not None):
                self._fail_workflow(error_of("JoinNeverFired", self._never_fired(state),
                                             task=state.name))  # fmt: skip
        for state in waiting:
            self._put(replace(state, status="canceled"))
        if self.status == "canceling":
            timed_out = isinstance(self.error, dict) and self.error.get("type") == TIMEOUT_ERROR
            self.status = "timed_out" if timed_out else "canceled"
        elif self.error is not None:
            self.status = "failed"
        else:
            self._finish_success()

    def _never_fired(self, state: TaskState) -> str:
        preds = self.spec.predecessors(state.name)
        arrived = [p for p in preds if p in state.join_from]
        missing = [p for p in preds if p not in state.join_from]
        branch = f" (branch {state.route})" if state.route else ""
        return (
            f"task {state.name!r}{branch} waits for {state.join_required} of its inbound "
            f"tasks ({', '.join(preds)}) but only {len(arrived)} arrived "
            f"({', '.join(arrived) or 'none'}; missing {', '.join(missing) or 'none'})"
        )

    def _finish_success(self) -> None:
        self.output, error = render.output(self.spec, self._scope())
        if error is not None:
            self.error = error
            self.status = "failed"
        else:
            self.status = "succeeded"
