"""Routing: what happens when a task occurrence ends, and how the next ones start (pure).

Transitions (`next`: when, publish, do), joins counted per route and per distinct
predecessor, dispatch (when, inputs, with-items lists, new task rows), retries,
parallel blocks (a block ends with its last sub-task) and the workflow's completion.
Every function takes the `Run` it changes (run.py); conductor.py, fanout.py and
requests.py import this module, and it imports none of them, so the engine has no
import cycle and no call-backs.
"""

from __future__ import annotations

import zlib
from dataclasses import replace
from typing import Any

from attune_pg import template
from attune_pg.engine import render
from attune_pg.engine.run import Run, error_of
from attune_pg.engine.state import Attempt, HoldScheduled, NewTaskRows, Publish, TaskState
from attune_pg.errors import ParameterError, TemplateError
from attune_pg.machine import (
    TASK_FAILED,
    TASK_STATE_FAILED,
    WORKFLOW_FINISHABLE,
    TaskStateStatus,
    WorkflowStatus,
)
from attune_pg.spec.model import TaskSpec

Json = Any
S, W = TaskStateStatus, WorkflowStatus
TIMEOUT_ERROR = "WorkflowTimedOut"


# ----------------------------------------------------------------- finishing a task


def task_done(run: Run, state: TaskState, status: str, result: Json, error: Json) -> None:
    """The occurrence `state` ended with `status`: follow its transitions (unless it was
    canceled) and count it in its parallel block."""
    if state.status == S.RUNNING:
        run.active -= 1
    state = state.ended(S(status), result, error)
    run.put(state)
    if status != S.CANCELED:
        _route(run, state)
    sub_task_done(run, state)


def _route(run: Run, state: TaskState) -> None:
    spec = run.spec.task(state.name)
    current = template.CurrentTask(state.status, state.result, state.error)
    handled = False
    joined: set[str] = set()
    # A decision routes a result: a task that did not succeed takes no branch (its
    # failure is reported as itself, not as an error in a branch's expression), and
    # of its branches only the first that matches fires.
    branches = spec.decision_flags()
    decided = False
    for number, transition in enumerate(spec.next):
        if branches[number] and (decided or state.status != S.SUCCEEDED):
            continue
        where = f"task {spec.name!r} next[{number}]"
        try:
            if transition.when is not None and not template.truthy(
                template.render(transition.when, run.scope(current), where=f"{where}.when")
            ):
                continue
            handled = True
            if transition.publish:
                published: dict[str, Json] = {}
                for name, value in transition.publish:
                    published[name] = template.render(
                        value, run.scope(current), where=f"{where}.publish.{name}"
                    )
                    run.vars[name] = published[name]
                run.emit(Publish(spec.name, published))
                too_big = run.context_problem(spec.name)
                if too_big is not None:
                    run.fail_workflow(too_big)
                    return
        except TemplateError as exc:
            run.fail_workflow(error_of("TemplateError", str(exc), task=spec.name))
            return
        for target in transition.do:
            if run.spec.task(target).join is not None:
                # One occurrence arrives at a join once, however many of its
                # transitions lead there.
                if target in joined:
                    continue
                joined.add(target)
            trigger(run, target, state, number)
        decided = decided or branches[number]
    if state.status in TASK_STATE_FAILED and not handled and run.spec.block_of(spec.name) is None:
        # A sub-task's failure is its block's to report; anything else is unhandled,
        # and retry_execution will re-run it.
        run.put(replace(state, unhandled=True))
        message = (state.error or {}).get("message", "") if isinstance(state.error, dict) else ""
        run.fail_workflow(
            error_of(
                "TaskFailed",
                f"task {spec.name!r} {state.status.replace('_', ' ')}"
                + (f": {message}" if message else ""),
                task=spec.name,
            )
        )


def sub_task_done(run: Run, sub: TaskState) -> None:
    """A sub-task of a `type: parallel` block ended: the block ends with its last one."""
    block = run.spec.block_of(sub.name)
    if block is None:
        return
    state = run.latest.get(block.name)
    if state is None or state.status != S.RUNNING:
        return
    entry = {"task": sub.name, "status": sub.status, "result": sub.result, "error": sub.error}
    state = replace(
        state,
        items_done=state.items_done + 1,
        items_failed=state.items_failed + (1 if sub.status in TASK_STATE_FAILED else 0),
        result=[*(state.result or []), entry],
    )
    run.put(state)
    if state.items_done < (state.items_total or 0):
        return
    order = {t.name: i for i, t in enumerate(block.tasks)}
    outcomes = sorted(state.result, key=lambda e: order.get(e["task"], 0))
    failed = [e["task"] for e in outcomes if e["status"] in TASK_STATE_FAILED]
    if failed:
        error = error_of(
            "ParallelFailed",
            f"{len(failed)} of {len(outcomes)} sub-tasks failed: {', '.join(failed)}",
        )
        task_done(run, state, S.FAILED, outcomes, error)
    elif any(e["status"] == S.CANCELED for e in outcomes):
        task_done(run, state, S.CANCELED, outcomes, None)
    else:
        task_done(run, state, S.SUCCEEDED, outcomes, None)


# ----------------------------------------------------------------- triggering


def _route_of(run: Run, name: str, source: TaskState | None, transition: int) -> str:
    """The route an arrival at `name` runs in: the source's, extended with the
    transition when `name` is a split task (Orquesta's `_evaluate_route`)."""
    if source is None:
        return ""
    if not run.spec.is_split(name):
        return source.route
    step = f"{source.name}__t{transition}"
    parts = source.route.split("/") if source.route else []
    return source.route if step in parts else "/".join([*parts, step])


def trigger(run: Run, name: str, source: TaskState | None = None, transition: int = 0) -> None:
    """A transition of `source` (None: the workflow's start) arrives at `name`."""
    deferring = run.deferring()
    if not run.dispatching() and not deferring:
        return
    spec = run.spec.task(name)
    route = _route_of(run, name, source, transition)
    latest = run.route_latest.get((name, route))
    if spec.join is None:
        if deferring:
            # Each deferred trigger is counted (join_arrivals), so a retry
            # replays every one of them.
            if latest is not None and latest.status == S.PENDING:
                run.put(replace(latest, join_arrivals=latest.join_arrivals + 1))
            else:
                run.put(
                    TaskState(
                        spec.name, run.next_number(name), S.PENDING, join_arrivals=1,
                        route=route,
                    )
                )  # fmt: skip
            return
        new_iteration(run, spec, route)
        return
    _join_arrival(run, spec, route, latest, source.name if source else "", deferring)


def _join_arrival(
    run: Run, spec: TaskSpec, route: str, latest: TaskState | None, origin: str, deferring: bool
) -> None:
    """Count an arrival at a join, per route and per distinct predecessor.

    The round open in this route (the latest occurrence) collects distinct
    predecessors: a repeat arrival from one already counted changes nothing while
    the round waits. Once the round has fired (`join: N` below all), arrivals from
    the predecessors still missing are absorbed into it; anything else opens a new
    round. The required count comes from the spec (the execution's snapshot)."""
    required = run.spec.join_required(spec.name) or 1
    total = len(run.spec.predecessors(spec.name))
    if latest is not None and latest.join_required is not None:
        seen = latest.join_from
        if latest.status == S.PENDING:
            if origin in seen:
                return
            latest = replace(
                latest,
                join_from=(*seen, origin),
                join_arrivals=latest.join_arrivals + 1,
                join_required=required,
            )
            if latest.join_arrivals >= required and not deferring:
                dispatch(run, spec, latest)
            else:
                run.put(latest)
            return
        if origin not in seen and latest.join_arrivals < total:
            arrivals = latest.join_arrivals + 1
            run.put(replace(latest, join_from=(*seen, origin), join_arrivals=arrivals))
            return
    iteration = _next_iteration(run, spec)
    if iteration is None:
        return
    state = TaskState(
        spec.name, iteration, S.PENDING, join_required=required, join_arrivals=1,
        route=route, join_from=(origin,),
    )  # fmt: skip
    if required <= 1 and not deferring:
        dispatch(run, spec, state)
    else:
        run.put(state)


def _next_iteration(run: Run, spec: TaskSpec) -> int | None:
    iteration = run.next_number(spec.name)
    if iteration > run.iteration_cap:
        run.fail_workflow(
            error_of(
                "IterationCap",
                f"task {spec.name!r} was triggered more than {run.iteration_cap} times"
                " (setting max_iterations)",
                task=spec.name,
            )
        )
        return None
    return iteration


def new_iteration(run: Run, spec: TaskSpec, route: str) -> bool:
    """Dispatch a new occurrence of `spec` in `route`; False past the iteration cap."""
    iteration = _next_iteration(run, spec)
    if iteration is None:
        return False
    dispatch(run, spec, TaskState(spec.name, iteration, S.PENDING, route=route))
    return True


# ----------------------------------------------------------------- dispatching


def _timeout(run: Run, spec: TaskSpec) -> float | None:
    action = run.ctx.actions.get(spec.action or "")
    limits = [t for t in (spec.timeout, action.timeout if action else None) if t]
    return min(limits) if limits else None


def dispatch(run: Run, spec: TaskSpec, state: TaskState) -> None:
    """Run the task occurrence `state` (new, or a pending join now satisfied)."""
    where = f"task {spec.name!r}"
    try:
        if spec.when is not None and not template.truthy(
            template.render(spec.when, run.scope(), where=f"{where} when")
        ):
            skipped = state.to(S.SKIPPED)
            run.put(skipped)
            sub_task_done(run, skipped)
            return
    except TemplateError as exc:
        fail_before_run(run, state, error_of("TemplateError", str(exc)))
        return
    running = state.to(S.RUNNING)
    run.active += 1
    if spec.kind == "parallel":
        run.put(replace(running, items_total=len(spec.tasks), items_released=len(spec.tasks)))
        for sub_task in spec.tasks:
            if not new_iteration(run, sub_task, state.route):
                # Could not start (iteration cap): counts as a failed sub-task.
                never = TaskState(sub_task.name, 0, S.FAILED, error=run.error)
                sub_task_done(run, never)
        return
    action = run.ctx.actions.get(spec.action or "")
    if action is None:
        run.put(running)
        task_done(
            run,
            running,
            S.FAILED,
            None,
            error_of("UnknownAction", f"action {spec.action!r} is not registered"),
        )
        return

    def scope_for(**names: Json) -> dict[str, Json]:
        return run.scope(task=spec.name, **names)

    try:
        items = render.items(spec, scope_for, run.max_items)
        inputs = render.inputs(spec, items, action.parameters, scope_for)
    except (TemplateError, ParameterError) as exc:
        run.put(running)
        task_done(run, running, S.FAILED, None, error_of(type(exc).__name__, str(exc)))
        return
    problem = run.spend(len(inputs), spec.name)
    if problem is not None:
        run.fail_workflow(problem)
        run.put(running)
        task_done(run, running, S.FAILED, None, problem)
        return
    if items is None:
        run.put(running)
        run.emit(
            NewTaskRows(
                task_name=spec.name,
                iteration=state.iteration,
                action_ref=action.ref,
                attempt=1,
                items=((None, inputs[0]),),
                release=1,
                delay=spec.delay or 0.0,
                timeout=_timeout(run, spec),
                held=run.held(),
            )
        )
        return
    total = len(inputs)
    release = min(spec.concurrency or total, total)
    running = replace(running, items_total=total, items_released=release)
    run.put(running)
    if total == 0:
        result = {"results": [], "failed_items": [], "total_count": 0}
        task_done(run, running, S.SUCCEEDED, result, None)
        return
    run.emit(
        NewTaskRows(
            task_name=spec.name,
            iteration=state.iteration,
            action_ref=action.ref,
            attempt=1,
            items=tuple(enumerate(inputs)),
            release=release,
            delay=spec.delay or 0.0,
            timeout=_timeout(run, spec),
            held=run.held(),
        )
    )


def fail_before_run(run: Run, state: TaskState, error: dict[str, Json]) -> None:
    running = state.to(S.RUNNING)
    run.active += 1
    run.put(running)
    task_done(run, running, S.FAILED, None, error)


# ----------------------------------------------------------------- retries


def retry(run: Run, spec: TaskSpec, attempt: Attempt) -> bool:
    """A failed attempt is retried (a new attempt row) if its policy says so."""
    policy = spec.retry
    if (
        attempt.status not in TASK_FAILED
        or policy is None
        or attempt.attempt > policy.count
        or not run.dispatching()
    ):
        return False
    if policy.on_error:
        current = template.CurrentTask(attempt.status, attempt.result, attempt.error)
        where = f"task {spec.name!r} retry.on_error"
        try:
            if not template.truthy(
                template.render(policy.on_error, run.scope(current), where=where)
            ):
                return False
        except TemplateError as exc:
            run.fail_workflow(error_of("TemplateError", str(exc), task=spec.name))
            return False
    problem = run.spend(1, spec.name)
    if problem is not None:
        run.fail_workflow(problem)
        return False
    nxt = attempt.attempt + 1
    delay = policy.delay_before(nxt)
    if policy.jitter:
        seed = f"{run.execution.id}:{spec.name}:{attempt.iteration}:{attempt.item_index}:{nxt}"
        delay += delay * policy.jitter * (zlib.crc32(seed.encode()) / 0xFFFFFFFF)
    run.emit(
        NewTaskRows(
            task_name=spec.name,
            iteration=attempt.iteration,
            action_ref=attempt.action_ref,
            attempt=nxt,
            items=((attempt.item_index, attempt.input),),
            release=1,
            delay=delay,
            timeout=_timeout(run, spec),
            held=run.held(),
        )
    )
    return True


# ----------------------------------------------------------------- completion


def check_complete(run: Run) -> None:
    """Finish the workflow once nothing is active (or mark a drained pause paused)."""
    if run.active > 0 or run.status not in WORKFLOW_FINISHABLE:
        if run.status == W.PAUSING and run.execution.running_rows == 0:
            # Nothing runs any more. Hold what is scheduled here too: the control
            # pass that would have held it may not have run yet.
            run.emit(HoldScheduled(run.execution.scheduled_rows))
            run.status = W.PAUSED
        return
    # Every pending state known to this transaction, not only the latest ones: a
    # retry's replays can leave a deferred trigger behind a newer iteration.
    waiting = run.pending_states()
    if run.error is None and run.status != W.CANCELING:
        for state in (s for s in waiting if s.join_required is not None):
            run.fail_workflow(error_of("JoinNeverFired", _never_fired(run, state),
                                       task=state.name))  # fmt: skip
    for state in waiting:
        run.put(replace(state, status=S.CANCELED))
    if run.status == W.CANCELING:
        timed_out = isinstance(run.error, dict) and run.error.get("type") == TIMEOUT_ERROR
        run.status = W.TIMED_OUT if timed_out else W.CANCELED
    elif run.error is not None:
        run.status = W.FAILED
    else:
        run.output, error = render.output(run.spec, run.scope)
        if error is not None:
            run.error = error
            run.status = W.FAILED
        else:
            run.status = W.SUCCEEDED


def _never_fired(run: Run, state: TaskState) -> str:
    preds = run.spec.predecessors(state.name)
    arrived = [p for p in preds if p in state.join_from]
    missing = [p for p in preds if p not in state.join_from]
    branch = f" (branch {state.route})" if state.route else ""
    return (
        f"task {state.name!r}{branch} waits for {state.join_required} of its inbound "
        f"tasks ({', '.join(preds)}) but only {len(arrived)} arrived "
        f"({', '.join(arrived) or 'none'}; missing {', '.join(missing) or 'none'})"
    )
