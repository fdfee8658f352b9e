"""Write the conductor's commands: one statement per kind of write for a whole batch.

Guarded writes compare the rows they changed with the rows they meant to change and
raise StaleWrite on any difference, so the caller's transaction rolls back whole.
Nothing here commits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from attune_pg.engine.state import (
    AggregateItems,
    CancelLive,
    CancelPendingItems,
    Command,
    HoldScheduled,
    NewTaskRows,
    Publish,
    ReleaseItems,
    TaskState,
    WriteExecution,
    WriteTaskState,
)
from attune_pg.machine import WORKFLOW_TERMINAL
from attune_pg.store import control
from attune_pg.store.queries import Q
from attune_pg.store.work import StaleWrite


def apply_batch(
    conn: psycopg.Connection,
    batch: Sequence[tuple[int, Sequence[Command]]],
    roots: Mapping[int, int] | None = None,
) -> list[tuple[int, AggregateItems]]:
    """Write the commands of many executions with one statement per kind of write.

    The statement count per advance is constant, whatever the batch size: that is
    where the throughput comes from (DESIGN §3.3). Guarded writes compare the rows
    they changed with the rows they meant to change and raise StaleWrite on any
    difference, so the caller's transaction rolls back whole.
    """
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
    for execution_id, commands in batch:
        for command in commands:
            if isinstance(command, WriteTaskState):
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
    if state_inserts:
        _insert_states(conn, state_inserts)
    if state_updates:
        _update_states(conn, state_updates)
    if new_rows:
        _insert_tasks(conn, new_rows, roots or {})
    for (execution_id, task_name, iteration, held), count in releases.items():
        # Released while pausing: the rows stay pending, marked held, until resume.
        change = "held = true" if held else "status = 'scheduled', run_at = now()"
        conn.execute(
            f"UPDATE attune.task_execution SET {change}"
            " WHERE id IN (SELECT id FROM attune.task_execution"
            "   WHERE workflow_execution_id = %s AND task_name = %s AND iteration = %s"
            "   AND status = 'pending' AND NOT held ORDER BY item_index LIMIT %s)",
            (execution_id, task_name, iteration, count),
        )
    for cancel_running, ids in cancel_live.items():
        control.cancel_live(conn, ids, cancel_running)
    if holds:
        control.hold_scheduled(conn, holds)
    for execution_id, cancel in cancels:
        conn.execute(
            "UPDATE attune.task_execution SET status = 'canceled'"
            " WHERE workflow_execution_id = %s AND task_name = %s AND iteration = %s"
            " AND status = 'pending'",
            (execution_id, cancel.task_name, cancel.iteration),
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
    return aggregates


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


def _insert_states(conn: psycopg.Connection, inserts: Sequence[tuple[int, TaskState]]) -> None:
    rows = [(e, s.name, s.iteration, *_state_values(s)) for e, s in inserts]
    conn.execute(
        "INSERT INTO attune.task_state (workflow_execution_id, task_name, iteration, status,"
        " join_required, join_arrivals, items_total, items_released, items_done, items_failed,"
        " result, error, unhandled, route, join_from)"
        " SELECT v.e, v.n, v.i, v.status, v.jr, v.ja, v.t, v.r, v.d, v.f, v.result,"
        " v.error, v.unhandled, v.route, string_to_array(v.jf, chr(31))"
        " FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::text[], %s::int[],"
        " %s::int[], %s::int[], %s::int[], %s::int[], %s::int[], %s::jsonb[], %s::jsonb[],"
        " %s::bool[], %s::text[], %s::text[])"
        " AS v(e, n, i, status, jr, ja, t, r, d, f, result, error, unhandled, route, jf)",
        _joined(_columns(rows, 15)),
    )


def _update_states(conn: psycopg.Connection, updates: Sequence[tuple[int, TaskState, str]]) -> None:
    rows = [(e, s.name, s.iteration, before, *_state_values(s)) for e, s, before in updates]
    cur = conn.execute(
        "UPDATE attune.task_state t SET status = v.status, join_required = v.join_required,"
        " join_arrivals = v.join_arrivals, items_total = v.items_total,"
        " items_released = v.items_released, items_done = v.items_done,"
        " items_failed = v.items_failed, result = v.result, error = v.error,"
        " unhandled = v.unhandled, join_from = string_to_array(v.join_from, chr(31))"
        " FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::text[], %s::text[], %s::int[],"
        " %s::int[], %s::int[], %s::int[], %s::int[], %s::int[], %s::jsonb[], %s::jsonb[],"
        " %s::bool[], %s::text[], %s::text[])"
        " AS v(execution_id, task_name, iteration, before, status, join_required, join_arrivals,"
        " items_total, items_released, items_done, items_failed, result, error, unhandled,"
        " route, join_from)"
        " WHERE t.workflow_execution_id = v.execution_id AND t.task_name = v.task_name"
        " AND t.iteration = v.iteration AND t.status = v.before",
        _joined(_columns(rows, 16)),
    )
    if cur.rowcount != len(rows):
        raise StaleWrite(f"{len(rows) - cur.rowcount} task_state rows changed under us")


def _insert_tasks(
    conn: psycopg.Connection,
    commands: Sequence[tuple[int, NewTaskRows]],
    roots: Mapping[int, int],
) -> None:
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
                    "scheduled" if released and not c.held else "pending",
                    Jsonb(value),
                    c.delay,
                    c.timeout,
                    released and c.held,
                    rank,
                )
            )
    conn.execute(Q.task_insert, dict(zip(names, _columns(rows, len(names)), strict=True)))


def _update_executions(
    conn: psycopg.Connection,
    writes: Sequence[tuple[int, WriteExecution]],
    created: dict[int, int],
) -> None:
    # An execution that ends inside the transaction that starts it (every task
    # skipped, an empty with-items) still passes through `running`, as the state
    # machine says and the audit log should show.
    jumps = [
        i for i, w in writes if w.before == "requested" and w.status not in ("running", "failed")
    ]
    if jumps:
        # Parameters (defaults applied) are written by this first move: they freeze once
        # the execution is no longer requested (schema 0006).
        jumped = {i: w for i, w in writes if i in jumps}
        conn.execute(
            "UPDATE attune.workflow_execution e SET status = 'running', started_at = now(),"
            " parameters = coalesce(v.parameters, e.parameters)"
            " FROM unnest(%s::bigint[], %s::jsonb[]) AS v(id, parameters)"
            " WHERE e.id = v.id AND e.status = 'requested'",
            (
                list(jumped),
                [None if w.parameters is None else Jsonb(w.parameters) for w in jumped.values()],
            ),
        )
        writes = [
            (i, replace(w, before="running", parameters=None) if i in jumps else w)
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
        # An ended execution waits for nothing: close any task state still pending (a
        # join short of arrivals, a trigger recorded while a failure drained), including
        # iterations this transaction did not load.
        conn.execute(
            "UPDATE attune.task_state SET status = 'canceled'"
            " WHERE workflow_execution_id = ANY(%s) AND status = 'pending'",
            (ended,),
        )
