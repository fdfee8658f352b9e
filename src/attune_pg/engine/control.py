"""What the conductor does for a control request: cancel, pause, and retry (redrive).

The SQL control functions (schema/0004_control.sql) only record the request on the
execution row; a worker's control pass builds a Conductor and calls `control()`,
which lands here. Kept apart from conductor.py so each file has one job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from attune_pg.engine.state import CancelLive, HoldScheduled, LiveRows, TaskState

if TYPE_CHECKING:
    from attune_pg.engine.conductor import Conductor


def cancel(conductor: Conductor, live: Mapping[tuple[str, int], LiveRows]) -> None:
    """Cancel everything not running; what runs finishes (or is killed) and reports back."""
    conductor.emit(CancelLive(conductor.execution.cancel_policy == "cancel_running"))
    for state in conductor.open_states():
        if state.status == "pending":  # a join still collecting arrivals
            conductor.put(replace(state, status="canceled"))
            continue
        if conductor.spec.task(state.name).kind == "parallel":
            continue  # a block ends when its sub-tasks do
        if conductor.aggregating(state):
            continue  # this pass ended its last item: its items' results end it
        rows = live.get(state.key, LiveRows())
        if state.items_total is not None:
            # Released items that were only scheduled are canceled now and will never
            # report: the window closes on what still will, the items running and those
            # waiting on a child execution (the child is canceled and reports back).
            state = replace(state, items_released=state.items_done + rows.total)
            conductor.put(state)
        if rows.total == 0:
            conductor.task_done(state, "canceled", state.result, None)
    conductor.check_complete()


def pause(conductor: Conductor) -> None:
    """Hold everything scheduled; the execution is paused once nothing runs."""
    conductor.emit(HoldScheduled())
    conductor.check_complete()


def redrive(conductor: Conductor) -> None:
    """retry_execution: re-run each task whose failure nobody handled, as a new
    iteration, and replay what the failure stopped (transitions recorded while it
    drained, joins it closed, with-items it stopped). Completed tasks, published
    variables and results are kept."""
    # What to replay is decided before anything re-runs: re-runs change `latest`.
    # Per route: a failure can stop the same task in several branches.
    replays = [
        (name, state)
        for (name, _route), state in sorted(conductor.route_latest.items())
        if state.status == "canceled" and conductor.spec.block_of(name) is None
    ]
    # Every unhandled failure, older iterations included (the store loads them all).
    for state in sorted(conductor.unhandled_states(), key=lambda s: s.key):
        spec = conductor.spec.task(state.name)
        conductor.put(replace(state, unhandled=False))
        if state.join_required is not None:
            # Re-run the same round of a join: keep its arrivals, so a late arrival of
            # that round is absorbed instead of opening a new one.
            conductor.dispatch(spec, _reopen(conductor, state))
        else:
            conductor.new_iteration(spec, state.route)
    for name, state in replays:
        if conductor.error is not None:
            # A re-run failed at once: the workflow is failing again. What is left to
            # replay stays canceled, for the next retry_execution to replay.
            break
        spec = conductor.spec.task(name)
        if state.join_required is not None:
            reopened = _reopen(conductor, state)
            if reopened.join_arrivals >= (conductor.spec.join_required(name) or 0):
                conductor.dispatch(spec, reopened)
            else:
                conductor.put(reopened)
            continue
        # A deferred trigger counts its arrivals; a stopped with-items counts none.
        for _ in range(max(1, state.join_arrivals)):
            # Numbered from the current latest: an earlier replay may have run it.
            conductor.new_iteration(spec, state.route)
    conductor.check_complete()


def _reopen(conductor: Conductor, state: TaskState) -> TaskState:
    return TaskState(
        state.name,
        conductor.next_number(state.name),
        "pending",
        join_required=state.join_required,
        join_arrivals=state.join_arrivals,
        route=state.route,
        join_from=state.join_from,
    )
