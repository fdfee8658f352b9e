"""Write the conductor's commands: one statement per kind of write for a whole batch.

Guarded writes compare the rows they changed with the rows they meant to change and
raise StaleWrite on any difference, so the caller's transaction rolls back whole.
`AggregateItems` is answered with an `ItemsAggregated` event (the items' final
results, read after this round's writes), for the conductor's next round.
Nothing here commits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from attune_pg.engine.state import (
    AggregateItems,
    CancelLive,
    CancelPendingItems,
    Command,
    HoldScheduled,
    ItemsAggregated,
    NewTaskRows,
    ParkTask,
    Publish,
    ReleaseItems,
    TaskState,
    WriteExecution,
    WriteTaskState,
)
from attune_pg.errors import StaleWrite
from attune_pg.machine import WORKFLOW_TERMINAL, TaskStatus, WorkflowStatus
from attune_pg.store import load
from attune_pg.store.claims import ClaimedTask, Slots
from attune_pg.store.queries import Q, fetch


@dataclass
class Applied:
    """What one round of writes answered: the items aggregated (the conductors' next
    events), the task rows created already claimed with the worker's slots, and how
    many rows it made claimable for anyone (scheduled, now or later)."""

    events: list[tuple[int, ItemsAggregated]] = field(default_factory=list)
    claimed: list[ClaimedTask] = field(default_factory=list)
    queued: int = 0


def apply_batch(
    conn: psycopg.Connection,
    batch: Sequence[tuple[int, Sequence[Command]]],
    roots: Mapping[int, int] | None = None,
    slots: Slots | None = None,
) -> Applied:
    """Write the commands of many executions with one statement per kind of write.

    The statement count per advance is constant, whatever the batch size: that is
    where the throughput comes from (DESIGN §3.3). Guarded writes compare the rows
    they changed with the rows they meant to change and raise StaleWrite on any
    difference, so the caller's transaction rolls back whole. With `slots`, new task
    rows due now are created claimed by that worker (up to its free slots).
    """
    out = Applied()
    state_inserts: list[tuple[int, TaskState]] = []
    state_updates: list[tuple[int, TaskState, str]] = []
    new_rows: list[tuple[int, NewTaskRows]] = []
    releases: dict[tuple[int, str, int, bool], int] = {}
    cancel_live: dict[bool, list[int]] = {}
    holds: list[int] = []
    cancels: list[tuple[int, CancelPendingItems]] = []
    publishes: list[tuple[int, Publish]] = []
    executions: list[tuple[int, WriteExecution]] = []
    aggregates: list[tuple[int, AggregateItems]] = []
    parks: list[tuple[int, ParkTask]] = []
    for execution_id, commands in batch:
        for command in commands:
            if isinstance(command, ParkTask):
                parks.append((execution_id, command))
            elif isinstance(command, WriteTaskState):
                if command.before is None:
                    state_inserts.append((execution_id, command.state))
                else:
                    state_updates.append((execution_id, command.state, command.before))
            elif isinstance(command, NewTaskRows):
                new_rows.append((execution_id, command))
            elif isinstance(command, ReleaseItems):
                key = (execution_id, command.task_name, command.iteration, command.held)
                releases[key] = releases.get(key, 0) + command.count
            elif isinstance(command, CancelLive):
                cancel_live.setdefault(command.cancel_running, []).append(execution_id)
            elif isinstance(command, HoldScheduled):
                holds.append(execution_id)
            elif isinstance(command, CancelPendingItems):
                cancels.append((execution_id, command))
            elif isinstance(command, Publish):
                publishes.append((execution_id, command))
            elif isinstance(command, AggregateItems):
                aggregates.append((execution_id, command))
            elif isinstance(command, WriteExecution):
                executions.append((execution_id, command))
    if parks:
        _park(conn, parks)
    if state_inserts:
        _insert_states(conn, state_inserts)
    if state_updates:
        _update_states(conn, state_updates)
    if new_rows:
        out.claimed, out.queued = _insert_tasks(conn, new_rows, roots or {}, slots)
    for (execution_id, task_name, iteration, held), count in releases.items():
        out.queued += 0 if held else count
        # Released while pausing: the rows stay pending, marked held, until resume.
        conn.execute(
            Q.task_release_held if held else Q.task_release,
            {"id": execution_id, "task": task_name, "iteration": iteration, "n": count},
        )
    for cancel_running, ids in cancel_live.items():
        _cancel_live(conn, ids, cancel_running)
    if holds:
        _hold_scheduled(conn, holds)
    for execution_id, cancel in cancels:
        conn.execute(
            Q.task_cancel_pending_items,
            {"id": execution_id, "task": cancel.task_name, "iteration": cancel.iteration},
        )
    if publishes:
        conn.execute(
            Q.publish_record,
            {
                "ids": [e for e, _ in publishes],
                "task_names": [p.task_name for _, p in publishes],
                "data": [Jsonb(p.values) for _, p in publishes],
            },
        )
    # Task rows each execution created (its own budget use, on its own row).
    created: dict[int, int] = {}
    for execution_id, c in new_rows:
        created[execution_id] = created.get(execution_id, 0) + len(c.items)
    if executions:
        _update_executions(conn, executions, created)
    if created:
        conn.execute(
            Q.execution_count_rows,
            {"ids": list(created), "counts": list(created.values())},
        )
    for execution_id, agg in aggregates:
        results, failed = load.item_results(conn, execution_id, agg.task_name, agg.iteration)
        out.events.append(
            (execution_id, ItemsAggregated(agg.task_name, agg.iteration, results, failed))
        )
    return out


def _state_values(s: TaskState) -> tuple[Any, ...]:
    return (
        s.status,
        s.join_required,
        s.join_arrivals,
        s.items_total,
        s.items_released,
        s.items_done,
        s.items_failed,
        None if s.result is None else Jsonb(s.result),
        None if s.error is None else Jsonb(s.error),
        s.unhandled,
        s.route,
        list(s.join_from),
    )


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [[row[i] for row in rows] for i in range(width)]


def _joined(columns: list[list[Any]]) -> list[list[Any]]:
    """The last column (join_from, a list per row) as one text per row: unnest cannot
    take an array of arrays of different lengths. Task names are identifiers, so the
    unit separator never occurs in them; an empty list becomes NULL, i.e. '{}'."""
    columns[-1] = [chr(31).join(names) if names else "" for names in columns[-1]]
    return columns


_STATE_COLUMNS = ("status", "jr", "ja", "t", "r", "d", "f", "result", "error", "unhandled",
                  "route", "jf")  # fmt: skip


def _insert_states(conn: psycopg.Connection, inserts: Sequence[tuple[int, TaskState]]) -> None:
    rows = [(e, s.name, s.iteration, *_state_values(s)) for e, s in inserts]
    names = ("e", "n", "i", *_STATE_COLUMNS)
    conn.execute(Q.state_insert, dict(zip(names, _joined(_columns(rows, 15)), strict=True)))


def _update_states(conn: psycopg.Connection, updates: Sequence[tuple[int, TaskState, str]]) -> None:
    rows = [(e, s.name, s.iteration, before, *_state_values(s)) for e, s, before in updates]
    names = ("e", "n", "i", "before", *_STATE_COLUMNS)
    cur = conn.execute(Q.state_update, dict(zip(names, _joined(_columns(rows, 16)), strict=True)))
    if cur.rowcount != len(rows):
        raise StaleWrite(f"{len(rows) - cur.rowcount} task_state rows changed under us")


def _insert_tasks(
    conn: psycopg.Connection,
    commands: Sequence[tuple[int, NewTaskRows]],
    roots: Mapping[int, int],
    slots: Slots | None,
) -> tuple[list[ClaimedTask], int]:
    """Insert the rows; those created claimed, and how many went in scheduled."""
    names = (
        "e", "task_name", "iteration", "item_index", "attempt", "action_ref", "status",
        "input", "delay", "timeout", "held", "rank",
    )  # fmt: skip
    rows = []
    ranks: dict[int, int] = {}
    for execution_id, c in commands:
        root = roots.get(execution_id, execution_id)
        for i, (index, value) in enumerate(c.items):
            released = i < c.release
            ranks[root] = rank = ranks.get(root, 0) + 1
            rows.append(
                (
                    execution_id,
                    c.task_name,
                    c.iteration,
                    index,
                    c.attempt,
                    c.action_ref,
                    TaskStatus.SCHEDULED if released and not c.held else TaskStatus.PENDING,
                    Jsonb(value),
                    c.delay,
                    c.timeout,
                    released and c.held,
                    rank,
                )
            )
    params: dict[str, Any] = dict(zip(names, _columns(rows, len(names)), strict=True))
    params.update(
        me=slots.me if slots else None,
        lease=slots.lease if slots else 0.0,
        slots=slots.free if slots else 0,
    )
    claimed = fetch(conn, Q.task_insert, params, class_row(ClaimedTask))
    scheduled = sum(1 for row in rows if row[6] == TaskStatus.SCHEDULED)
    return claimed, scheduled - len(claimed)


def _update_executions(
    conn: psycopg.Connection,
    writes: Sequence[tuple[int, WriteExecution]],
    created: dict[int, int],
) -> None:
    # An execution that ends inside the transaction that starts it (every task
    # skipped, an empty with-items) still passes through `running`, as the state
    # machine says and the audit log should show.
    W = WorkflowStatus
    jumps = [
        i for i, w in writes if w.before == W.REQUESTED and w.status not in (W.RUNNING, W.FAILED)
    ]
    if jumps:
        jumped = {i: w for i, w in writes if i in jumps}
        conn.execute(
            Q.execution_start_jump,
            {
                "ids": list(jumped),
                "parameters": [
                    None if w.parameters is None else Jsonb(w.parameters) for w in jumped.values()
                ],
            },
        )
        writes = [
            (i, replace(w, before=W.RUNNING, parameters=None) if i in jumps else w)
            for i, w in writes
        ]
    rows = [
        (
            execution_id,
            w.before,
            w.status,
            None if w.parameters is None else Jsonb(w.parameters),
            None if w.vars is None else Jsonb(w.vars),
            w.active_tasks,
            None if w.error is None else Jsonb(w.error),
            None if w.output is None else Jsonb(w.output),
            w.timeout_at,
            created.pop(execution_id, 0),
        )
        for execution_id, w in writes
    ]
    names = (
        "id", "before", "status", "parameters", "vars", "active_tasks", "error", "output",
        "timeout_at", "task_rows",
    )  # fmt: skip
    cur = conn.execute(Q.execution_write, dict(zip(names, _columns(rows, 10), strict=True)))
    if cur.rowcount != len(rows):
        raise StaleWrite(f"{len(rows) - cur.rowcount} workflow_execution rows changed under us")
    ended = [i for i, w in writes if w.status in WORKFLOW_TERMINAL]
    if ended:
        conn.execute(Q.state_cancel_pending, {"ids": ended})


def _cancel_live(
    conn: psycopg.Connection, execution_ids: Sequence[int], cancel_running: bool
) -> None:
    """Cancel the executions' live work: queued rows, open inquiries, child executions;
    with `cancel_running`, ask the workers running their rows to kill them."""
    ids = {"ids": list(execution_ids)}
    conn.execute(Q.task_cancel_queued, ids)
    if cancel_running and conn.execute(Q.task_request_cancel, ids).rowcount:
        conn.execute(Q.control_notify)
    conn.execute(Q.inquiry_cancel_open, ids)
    conn.execute(Q.child_cancel, ids)
    conn.execute(Q.task_cancel_waiting, ids)
    conn.execute(Q.control_notify)


def _hold_scheduled(conn: psycopg.Connection, execution_ids: Sequence[int]) -> None:
    """Pause: scheduled rows go back to pending (held) and child executions pause."""
    ids = {"ids": list(execution_ids)}
    conn.execute(Q.task_hold, ids)
    conn.execute(Q.child_pause, ids)
    conn.execute(Q.control_notify)


def _park(conn: psycopg.Connection, parks: Sequence[tuple[int, ParkTask]]) -> None:
    """Create the inquiry or the child execution a waiting task waits for."""
    for execution_id, park in parks:
        if park.kind == "inquiry":
            assigned = park.input.get("assigned_to")
            if isinstance(assigned, list):
                assigned = ",".join(str(a) for a in assigned)
            conn.execute(
                Q.inquiry_create,
                {
                    "task": park.task_execution_id,
                    "execution": execution_id,
                    "prompt": str(park.input.get("prompt") or ""),
                    "schema": Jsonb(park.input.get("schema") or {}),
                    "assigned_to": assigned,
                    "timeout": park.input.get("timeout"),
                },
            )
        else:
            conn.execute(
                Q.child_create,
                {
                    "ref": park.action_ref,
                    "parameters": Jsonb(park.input),
                    "task": park.task_execution_id,
                    "execution": execution_id,
                },
            )
