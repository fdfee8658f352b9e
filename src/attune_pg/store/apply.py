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
from attune_pg.machine import TaskStatus, WorkflowStatus
from attune_pg.store import load
from attune_pg.store.claims import ClaimedTask, Slots
from attune_pg.store.queries import Q, fetch


@dataclass(frozen=True)
class ExecutionWrite:
    """An execution's write (None: only its task rows), with the task rows it created in
    the same round (its budget use); may be deferred to ride on a later round's
    statement (apply_batch)."""

    execution_id: int
    write: WriteExecution | None
    task_rows: int = 0


@dataclass
class Deferred:
    """Writes a round held back to ride on a later round's statements (apply_batch): a
    turn's advance hands its task-state updates and execution writes to its start, so one
    statement of each kind writes both parts."""

    executions: list[ExecutionWrite] = field(default_factory=list)
    states: list[tuple[int, TaskState, str]] = field(default_factory=list)  # (id, state, before)

    def __bool__(self) -> bool:
        return bool(self.executions or self.states)

    def take(self) -> Deferred:
        """What is held, which is then empty (in place: the one who handed it over sees
        that it was taken)."""
        out = Deferred(self.executions, self.states)
        self.executions, self.states = [], []
        return out


@dataclass
class Applied:
    """What one round of writes answered: the items aggregated (the conductors' next
    events), the task rows created already claimed with the worker's slots, how many
    rows it made claimable for anyone (scheduled, now or later), and what it held back
    (`defer`)."""

    events: list[tuple[int, ItemsAggregated]] = field(default_factory=list)
    claimed: list[ClaimedTask] = field(default_factory=list)
    queued: int = 0
    deferred: Deferred = field(default_factory=Deferred)


def apply_batch(
    conn: psycopg.Connection,
    batch: Sequence[tuple[int, Sequence[Command]]],
    roots: Mapping[int, int] | None = None,
    slots: Slots | None = None,
    carry: Deferred | None = None,
    defer: bool = False,
) -> Applied:
    """Write the commands of many executions with one statement per kind of write.

    The statement count per advance is constant, whatever the batch size: that is
    where the throughput comes from (DESIGN §3.3). Guarded writes compare the rows
    they changed with the rows they meant to change and raise StaleWrite on any
    difference, so the caller's transaction rolls back whole. With `slots`, new task
    rows due now are created claimed by that worker (up to its free slots).

    `carry`: writes an earlier round deferred, written with this round's.
    `defer`: this round's execution writes, and its task-state updates unless it also
    creates states, are returned (`Applied.deferred`) instead of written, unless the
    round aggregates items (its events read what it wrote): a turn's advance hands them
    to its start, so one statement of each kind writes both parts (advance._turn). The
    caller writes whatever is left (`write_deferred`).
    """
    out = Applied()
    state_inserts: list[tuple[int, TaskState]] = []
    state_updates: list[tuple[int, TaskState, str]] = []
    new_rows: list[tuple[int, NewTaskRows]] = []
    releases: dict[tuple[int, str, int, bool], int] = {}
    cancel_live: dict[bool, list[tuple[int, CancelLive]]] = {}
    holds: list[tuple[int, HoldScheduled]] = []
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
                cancel_live.setdefault(command.cancel_running, []).append((execution_id, command))
            elif isinstance(command, HoldScheduled):
                holds.append((execution_id, command))
            elif isinstance(command, CancelPendingItems):
                cancels.append((execution_id, command))
            elif isinstance(command, Publish):
                publishes.append((execution_id, command))
            elif isinstance(command, AggregateItems):
                aggregates.append((execution_id, command))
            elif isinstance(command, WriteExecution):
                executions.append((execution_id, command))
    carried = carry.take() if carry else Deferred()
    state_updates = [*carried.states, *state_updates]
    deferring = defer and not aggregates
    # A round with new states of its own writes its updates with them: deferred, they
    # would cost a statement whenever no later round takes them.
    states_deferred = deferring and not state_inserts
    if parks:
        _park(conn, parks)
    if state_inserts or (state_updates and not states_deferred):
        _write_states(conn, state_inserts, state_updates)
    if new_rows:
        out.claimed, out.queued = _insert_tasks(conn, new_rows, roots or {}, slots)
    for (execution_id, task_name, iteration, held), count in releases.items():
        out.queued += 0 if held else count
        # Released while pausing: the rows stay pending, marked held, until resume.
        conn.execute(
            Q.task_release_held if held else Q.task_release,
            {"id": execution_id, "task": task_name, "iteration": iteration, "n": count},
        )
    for cancel_running, lives in cancel_live.items():
        _cancel_live(conn, lives, cancel_running)
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
    writes = [*carried.executions]
    writes += (ExecutionWrite(i, w, created.pop(i, 0)) for i, w in executions)
    writes += (ExecutionWrite(i, None, n) for i, n in created.items())
    if deferring:
        out.deferred = Deferred(writes, state_updates if states_deferred else [])
    elif writes:
        write_executions(conn, writes)
    for execution_id, agg in aggregates:
        results, failed = load.item_results(conn, execution_id, agg.task_name, agg.iteration)
        out.events.append(
            (execution_id, ItemsAggregated(agg.task_name, agg.iteration, results, failed))
        )
    return out


def _state_record(e: int, s: TaskState) -> dict[str, Any]:
    return {
        "status": s.status,
        "jr": s.join_required,
        "ja": s.join_arrivals,
        "t": s.items_total,
        "r": s.items_released,
        "d": s.items_done,
        "f": s.items_failed,
        "result": s.result,  # None: SQL NULL (no result yet)
        "error": s.error,
        "unhandled": s.unhandled,
        "route": s.route,
        "jf": list(s.join_from),
        "e": e,
        "n": s.name,
        "i": s.iteration,
    }


def _write_states(
    conn: psycopg.Connection,
    inserts: Sequence[tuple[int, TaskState]],
    updates: Sequence[tuple[int, TaskState, str]],
) -> None:
    """New task states and guarded updates of others, in one statement (state_write)."""
    rows = _state_updates(updates)
    params = {"new": Jsonb([_state_record(e, s) for e, s in inserts]), "rows": Jsonb(rows)}
    row = conn.execute(Q.state_write, params).fetchone()
    _check_states(len(rows), row[0] if row else 0)


def _check_states(meant: int, updated: int) -> None:
    if updated != meant:
        raise StaleWrite(f"{meant - updated} task_state rows changed under us")


def write_deferred(conn: psycopg.Connection, deferred: Deferred) -> None:
    """Write what a round held back and no later round took (apply_batch's `defer`)."""
    if not deferred:
        return
    held = deferred.take()
    if held.states:
        _write_states(conn, (), held.states)
    if held.executions:
        write_executions(conn, held.executions)


def _state_updates(updates: Sequence[tuple[int, TaskState, str]]) -> list[dict[str, Any]]:
    rows = []
    for e, s, before in updates:
        r = _state_record(e, s)
        rows.append(
            {
                "execution_id": e,
                "task_name": s.name,
                "iteration": s.iteration,
                "before": before,
                "status": s.status,
                "join_required": r["jr"],
                "join_arrivals": r["ja"],
                "items_total": r["t"],
                "items_released": r["r"],
                "items_done": r["d"],
                "items_failed": r["f"],
                "result": s.result,
                "error": s.error,
                "unhandled": s.unhandled,
                "route": s.route,
                "join_from": r["jf"],
            }
        )
    return rows


def _insert_tasks(
    conn: psycopg.Connection,
    commands: Sequence[tuple[int, NewTaskRows]],
    roots: Mapping[int, int],
    slots: Slots | None,
) -> tuple[list[ClaimedTask], int]:
    """Insert the rows; those created claimed, and how many went in scheduled."""
    rows: list[dict[str, Any]] = []
    ranks: dict[int, int] = {}
    for execution_id, c in commands:
        root = roots.get(execution_id, execution_id)
        for i, (index, value) in enumerate(c.items):
            released = i < c.release
            ranks[root] = rank = ranks.get(root, 0) + 1
            rows.append(
                {
                    "n": len(rows),
                    "e": execution_id,
                    "task_name": c.task_name,
                    "iteration": c.iteration,
                    "item_index": index,
                    "attempt": c.attempt,
                    "action_ref": c.action_ref,
                    "status": TaskStatus.SCHEDULED
                    if released and not c.held
                    else TaskStatus.PENDING,
                    "input": value,
                    "delay": c.delay,
                    "timeout": c.timeout,
                    "held": released and c.held,
                    "rank": rank,
                }
            )
    params: dict[str, Any] = {
        "rows": Jsonb(rows),
        "me": slots.me if slots else None,
        "lease": slots.lease if slots else 0.0,
        "slots": slots.free if slots else 0,
    }
    claimed = fetch(conn, Q.task_insert, params, class_row(ClaimedTask))
    scheduled = sum(1 for row in rows if row["status"] == TaskStatus.SCHEDULED)
    return claimed, scheduled - len(claimed)


def write_executions(conn: psycopg.Connection, writes: Sequence[ExecutionWrite]) -> None:
    """Write many executions in one guarded statement (execution_write)."""
    # An execution that ends inside the transaction that starts it (every task
    # skipped, an empty with-items) still passes through `running`, as the state
    # machine says and the audit log should show.
    W = WorkflowStatus
    jumped = {
        x.execution_id: x.write
        for x in writes
        if x.write is not None
        and x.write.before == W.REQUESTED
        and x.write.status not in (W.RUNNING, W.FAILED)
    }
    if jumped:
        conn.execute(
            Q.execution_start_jump,
            {
                "ids": list(jumped),
                "parameters": [
                    None if w.parameters is None else Jsonb(w.parameters) for w in jumped.values()
                ],
            },
        )
    rows: list[dict[str, Any]] = []
    for x in writes:
        w = x.write
        if w is None:
            rows.append({"id": x.execution_id, "task_rows": x.task_rows})
            continue
        if x.execution_id in jumped:
            w = replace(w, before=W.RUNNING, parameters=None)
        rows.append(
            {
                "id": x.execution_id,
                "before": w.before,
                "status": w.status,
                "parameters": w.parameters,  # None: not written (SQL NULL keeps the column)
                "vars": w.vars,
                "active_tasks": w.active_tasks,
                "error": w.error,
                "output": w.output,
                "timeout_at": w.timeout_at,
                "task_rows": x.task_rows,
            }
        )
    row = conn.execute(Q.execution_write, {"rows": Jsonb(rows)}).fetchone()
    written = row[0] if row else 0
    if written != len(rows):
        raise StaleWrite(f"{len(rows) - written} workflow_execution rows changed under us")


def _cancel_live(
    conn: psycopg.Connection, lives: Sequence[tuple[int, CancelLive]], cancel_running: bool
) -> None:
    """Cancel the executions' live work: the queued rows counted, open inquiries, child
    executions; with `cancel_running`, ask the workers running their rows to kill them."""
    ids = {"ids": [execution_id for execution_id, _ in lives]}
    rows = [row for _, live in lives for row in live.rows]
    if rows:
        conn.execute(Q.task_cancel_queued, {"rows": rows})
    if cancel_running and conn.execute(Q.task_request_cancel, ids).rowcount:
        conn.execute(Q.control_notify)
    conn.execute(Q.inquiry_cancel_open, ids)
    conn.execute(Q.child_cancel, ids)
    conn.execute(Q.task_cancel_waiting, ids)
    conn.execute(Q.control_notify)


def _hold_scheduled(conn: psycopg.Connection, holds: Sequence[tuple[int, HoldScheduled]]) -> None:
    """Pause: the scheduled rows counted go back to pending (held) and child executions
    pause."""
    rows = sorted({row for _, hold in holds for row in hold.rows})
    if rows:
        conn.execute(Q.task_hold, {"rows": rows})
    conn.execute(Q.child_pause, {"ids": sorted({execution_id for execution_id, _ in holds})})
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
