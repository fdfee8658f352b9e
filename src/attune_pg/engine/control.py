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
        rows = live.get(state.key, LiveRows())
        if state.items_total is not None:
            # Released items that were only scheduled are canceled now and will never
            # report: the window closes on what is really running.
            state = replace(state, items_released=state.items_done + rows.running)
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
    iteration, and reopen the joins that the failure closed. Completed tasks,
    published variables and results are kept."""
    # Every unhandled failure, older iterations included (the store loads them all).
    for state in sorted(conductor.unhandled_states(), key=lambda s: s.key):
        spec = conductor.spec.task(state.name)
        conductor.put(replace(state, unhandled=False))
        if state.join_required is not None:
            # Re-run the same round of a join: keep its arrivals, so a late arrival of
            # that round is absorbed instead of opening a new one.
            rerun = TaskState(
                state.name,
                conductor.latest[state.name].iteration + 1,
                "pending",
                join_required=state.join_required,
                join_arrivals=state.join_arrivals,
            )
            conductor.dispatch(spec, rerun)
        else:
            conductor.new_iteration(spec, conductor.latest[state.name])
    # What the failure stopped: transitions recorded while it drained (canceled at the
    # end), joins it closed, with-items it stopped releasing. Replay them.
    for name, state in sorted(dict(conductor.latest).items()):
        if state.status != "canceled":
            continue
        spec = conductor.spec.task(name)
        if conductor.spec.block_of(name) is not None:
            continue  # sub-tasks run again with their block
        if state.join_required is not None:
            reopened = TaskState(
                name,
                state.iteration + 1,
                "pending",
                join_required=state.join_required,
                join_arrivals=state.join_arrivals,
            )
            if reopened.join_arrivals >= (reopened.join_required or 0):
                conductor.dispatch(spec, reopened)
            else:
                conductor.put(reopened)
        else:
            conductor.new_iteration(spec, state)
    conductor.check_complete()
