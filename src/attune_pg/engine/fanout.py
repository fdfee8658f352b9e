"""Fan-out bookkeeping of the conductor: with-items windows and parallel blocks.

Both keep counters on the task state (released, done, failed), changed once per
item or sub-task, never recounted; the task ends with its last item or sub-task.
Kept apart from conductor.py so each file has one job (see control.py for the same
pattern).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from attune_pg.engine.state import (
    AggregateItems,
    Attempt,
    CancelPendingItems,
    ReleaseItems,
    TaskState,
)
from attune_pg.spec.model import TaskSpec

if TYPE_CHECKING:
    from attune_pg.engine.conductor import Conductor

Json = Any
FAILED = frozenset({"failed", "timed_out"})


def _error(kind: str, message: str) -> dict[str, Json]:
    return {"type": kind, "message": message}


def item_done(conductor: Conductor, spec: TaskSpec, state: TaskState, attempt: Attempt) -> None:
    """One item's last attempt ended: release the next one (window), or aggregate."""
    failed = attempt.status != "succeeded"
    state = replace(
        state,
        items_done=state.items_done + 1,
        items_failed=state.items_failed + (1 if failed else 0),
    )
    total = state.items_total or 0
    keep_going = conductor.dispatching() and state.items_failed == 0
    if keep_going and state.items_released < total:
        conductor.emit(ReleaseItems(spec.name, state.iteration, 1, conductor.held()))
        state = replace(state, items_released=state.items_released + 1)
    conductor.put(state)
    if state.items_done < state.items_released:
        return  # items still in flight
    if state.items_released < total and keep_going:
        return
    if state.items_released < total:
        conductor.emit(CancelPendingItems(spec.name, state.iteration))
    conductor.emit(AggregateItems(spec.name, state.iteration))


def items_finished(
    conductor: Conductor, state: TaskState, results: list[Json], failed_items: list[int]
) -> None:
    """End a with-items task from its items' final results (in item order)."""
    total = state.items_total or 0
    result = {"results": results, "failed_items": failed_items, "total_count": total}
    if failed_items:
        shown = ", ".join(str(i) for i in failed_items[:10])
        more = "" if len(failed_items) <= 10 else f" and {len(failed_items) - 10} more"
        error = _error(
            "ItemsFailed", f"{len(failed_items)} of {total} items failed (indices {shown}{more})"
        )
        conductor.task_done(state, "failed", result, error)
    elif state.items_done < total or state.items_failed:
        # items_failed without failed_items: items canceled (cancel_running) or
        # never released; the task did not complete.
        conductor.task_done(state, "canceled", result, None)
    else:
        conductor.task_done(state, "succeeded", result, None)


def sub_task_done(conductor: Conductor, sub: TaskState) -> None:
    """A sub-task of a `type: parallel` block ended: the block ends with its last one."""
    block = conductor.spec.block_of(sub.name)
    if block is None:
        return
    state = conductor.latest.get(block.name)
    if state is None or state.status != "running":
        return
    entry = {"task": sub.name, "status": sub.status, "result": sub.result, "error": sub.error}
    state = replace(
        state,
        items_done=state.items_done + 1,
        items_failed=state.items_failed + (1 if sub.status in FAILED else 0),
        result=[*(state.result or []), entry],
    )
    conductor.put(state)
    if state.items_done < (state.items_total or 0):
        return
    order = {t.name: i for i, t in enumerate(block.tasks)}
    outcomes = sorted(state.result, key=lambda e: order.get(e["task"], 0))
    failed = [e["task"] for e in outcomes if e["status"] in FAILED]
    if failed:
        error = _error(
            "ParallelFailed",
            f"{len(failed)} of {len(outcomes)} sub-tasks failed: {', '.join(failed)}",
        )
        conductor.task_done(state, "failed", outcomes, error)
    elif any(e["status"] == "canceled" for e in outcomes):
        conductor.task_done(state, "canceled", outcomes, None)
    else:
        conductor.task_done(state, "succeeded", outcomes, None)
