"""What a control request means for an execution (pure): cancel, pause, retry (redrive).

The SQL control functions (schema/0004_control.sql) only record the request on the
execution row; a worker's request pass (advance.request_pass) loads the execution and
calls `Conductor.control()`, which lands here.
"""

from __future__ import annotations

from dataclasses import replace

from attune_pg.engine import routing
from attune_pg.engine.run import Run
from attune_pg.engine.state import CancelLive, HoldScheduled, LiveRows, TaskState
from attune_pg.machine import TaskStateStatus

S = TaskStateStatus


def cancel(run: Run) -> None:
    """Cancel everything not running; what runs finishes (or is killed) and reports back."""
    queued = sorted(i for rows in run.live.values() for i in rows.queued)
    run.emit(CancelLive(run.execution.cancel_policy == "cancel_running", tuple(queued)))
    for state in run.open_states():
        if state.status == S.PENDING:  # a join still collecting arrivals
            run.put(replace(state, status=S.CANCELED))
            continue
        if run.spec.task(state.name).kind == "parallel":
            continue  # a block ends when its sub-tasks do
        if run.aggregating(state):
            continue  # this pass ended its last item: its items' results end it
        rows = run.live.get(state.key, LiveRows())
        if state.items_total is not None:
            # Released items that were only scheduled are canceled now and will never
            # report: the window closes on what still will, the items running and those
            # waiting on a child execution (the child is canceled and reports back).
            state = replace(state, items_released=state.items_done + rows.total)
            run.put(state)
        if rows.total == 0:
            routing.task_done(run, state, S.CANCELED, state.result, None)
    routing.check_complete(run)


def pause(run: Run) -> None:
    """Hold everything scheduled; the execution is paused once nothing runs."""
    run.emit(HoldScheduled(run.execution.scheduled_rows))
    routing.check_complete(run)


def redrive(run: Run) -> None:
    """retry_execution: re-run each task whose failure nobody handled, as a new
    iteration, and replay what the failure stopped (transitions recorded while it
    drained, joins it closed, with-items it stopped). Completed tasks, published
    variables and results are kept."""
    # What to replay is decided before anything re-runs: re-runs change `latest`.
    # Per route: a failure can stop the same task in several branches.
    replays = [
        (name, state)
        for (name, _route), state in sorted(run.route_latest.items())
        if state.status == S.CANCELED and run.spec.block_of(name) is None
    ]
    # Every unhandled failure, older iterations included (the store loads them all).
    for state in sorted(run.unhandled_states(), key=lambda s: s.key):
        spec = run.spec.task(state.name)
        run.put(replace(state, unhandled=False))
        if state.join_required is not None:
            # Re-run the same round of a join: keep its arrivals, so a late arrival of
            # that round is absorbed instead of opening a new one.
            routing.dispatch(run, spec, _reopen(run, state))
        else:
            routing.new_iteration(run, spec, state.route)
    for name, state in replays:
        if run.error is not None:
            # A re-run failed at once: the workflow is failing again. What is left to
            # replay stays canceled, for the next retry_execution to replay.
            break
        spec = run.spec.task(name)
        if state.join_required is not None:
            reopened = _reopen(run, state)
            if reopened.join_arrivals >= (run.spec.join_required(name) or 0):
                routing.dispatch(run, spec, reopened)
            else:
                run.put(reopened)
            continue
        # A deferred trigger counts its arrivals; a stopped with-items counts none.
        for _ in range(max(1, state.join_arrivals)):
            # Numbered from the current latest: an earlier replay may have run it.
            routing.new_iteration(run, spec, state.route)
    routing.check_complete(run)


def _reopen(run: Run, state: TaskState) -> TaskState:
    return TaskState(
        state.name,
        run.next_number(state.name),
        S.PENDING,
        join_required=state.join_required,
        join_arrivals=state.join_arrivals,
        route=state.route,
        join_from=state.join_from,
    )
