"""With-items windows (pure): release, count and aggregate the items of a task.

The counters live on the task state (released, done, failed), changed once per
item, never recounted; the task ends when its items' results are aggregated (the
store answers `AggregateItems` with an `ItemsAggregated` event). Parallel blocks,
which end inside routing, are in routing.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from attune_pg.engine import routing
from attune_pg.engine.run import Run, error_of
from attune_pg.engine.state import (
    AggregateItems,
    Attempt,
    CancelPendingItems,
    ReleaseItems,
    TaskState,
)
from attune_pg.machine import TaskStateStatus, TaskStatus
from attune_pg.spec.model import TaskSpec

Json = Any
S = TaskStateStatus


def item_done(run: Run, spec: TaskSpec, state: TaskState, attempt: Attempt) -> None:
    """One item's last attempt ended: release the next one (window), or aggregate."""
    failed = attempt.status != TaskStatus.SUCCEEDED
    state = replace(
        state,
        items_done=state.items_done + 1,
        items_failed=state.items_failed + (1 if failed else 0),
    )
    total = state.items_total or 0
    keep_going = run.dispatching() and state.items_failed == 0
    if keep_going and state.items_released < total:
        run.emit(ReleaseItems(spec.name, state.iteration, 1, run.held()))
        state = replace(state, items_released=state.items_released + 1)
    run.put(state)
    if state.items_done < state.items_released:
        return  # items still in flight
    if state.items_released < total and keep_going:
        return
    if state.items_released < total:
        run.emit(CancelPendingItems(spec.name, state.iteration))
    run.emit(AggregateItems(spec.name, state.iteration))


def items_finished(
    run: Run, state: TaskState, results: list[Json], failed_items: list[int]
) -> None:
    """End a with-items task from its items' final results (in item order)."""
    total = state.items_total or 0
    result = {"results": results, "failed_items": failed_items, "total_count": total}
    if failed_items:
        shown = ", ".join(str(i) for i in failed_items[:10])
        more = "" if len(failed_items) <= 10 else f" and {len(failed_items) - 10} more"
        error = error_of(
            "ItemsFailed", f"{len(failed_items)} of {total} items failed (indices {shown}{more})"
        )
        routing.task_done(run, state, S.FAILED, result, error)
    elif state.items_done < total or state.items_failed:
        # items_failed without failed_items: items canceled (cancel_running) or
        # never released; the task did not complete.
        routing.task_done(run, state, S.CANCELED, result, None)
    else:
        routing.task_done(run, state, S.SUCCEEDED, result, None)
