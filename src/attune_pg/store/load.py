"""Load what the conductor needs (engine/plan.py says what), before it runs.

`snapshots` reads the task states of many locked executions at once (the latest of
each task in each route, the older iterations asked for, and what a control request
needs); `kv_entries`, `secret_values`, `runnable_workflows` and `item_results` are
the other reads of an advance. The conductor then runs on these values alone.
Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import psycopg
from psycopg.rows import kwargs_row

from attune_pg.engine.plan import KVEntry, Needs
from attune_pg.engine.state import Execution, LiveRows, Snapshot, TaskState
from attune_pg.machine import TaskStateStatus, TaskStatus
from attune_pg.store.queries import Q, fetch

Json = Any


def _state(
    execution_id: int, join_from: list[str] | None, status: str, **columns: Any
) -> tuple[int, TaskState]:
    """A task_state row (by column name) as (execution id, TaskState)."""
    return execution_id, TaskState(
        status=TaskStateStatus(status), join_from=tuple(join_from or ()), **columns
    )


_STATE = kwargs_row(_state)


def snapshots(
    conn: psycopg.Connection, executions: Sequence[Execution], needs: Mapping[int, Needs]
) -> dict[int, Snapshot]:
    """The snapshot of each execution in `needs` (in id order)."""
    live = [e for e in executions if e.id in needs]
    if not live:
        return {}
    ids = [e.id for e in live]
    states: dict[int, list[TaskState]] = {i: [] for i in ids}
    for execution_id, state in fetch(conn, Q.state_latest, {"ids": ids}, _STATE):
        states[execution_id].append(state)
    loaded = {(i, s.name, s.iteration) for i, found in states.items() for s in found}
    older = [
        (n.execution_id, name, iteration)
        for n in needs.values()
        for name, iteration in n.occurrences
        if (n.execution_id, name, iteration) not in loaded
    ]
    if older:
        params = {
            "ids": [k[0] for k in older],
            "names": [k[1] for k in older],
            "iterations": [k[2] for k in older],
        }
        for execution_id, state in fetch(conn, Q.state_get_many, params, _STATE):
            states[execution_id].append(state)
    running = _running_rows(conn, [i for i in ids if needs[i].running_rows])
    out: dict[int, Snapshot] = {}
    for execution in live:
        need = needs[execution.id]
        found = states[execution.id]
        rows: dict[tuple[str, int], LiveRows] = {}
        if need.open_states:
            found += [s for _, s in fetch(conn, Q.state_open, {"id": execution.id}, _STATE)]
        if need.live_rows:
            rows = _live_rows(conn, execution.id)
        if need.unhandled:
            found += [s for _, s in fetch(conn, Q.state_unhandled, {"id": execution.id}, _STATE)]
        if execution.id in running:
            n, scheduled = running[execution.id]
            execution = replace(execution, running_rows=n, scheduled_rows=scheduled)
        out[execution.id] = Snapshot(execution, tuple(found), rows)
    return out


def _running_rows(
    conn: psycopg.Connection, ids: Sequence[int]
) -> dict[int, tuple[int, tuple[int, ...]]]:
    """Per pausing execution: its rows that will still report, and its scheduled rows'
    ids (locked: what a hold holds)."""
    if not ids:
        return {}
    counts: dict[int, tuple[int, tuple[int, ...]]] = {i: (0, ()) for i in ids}
    for execution_id, n, scheduled in conn.execute(Q.task_count_running, {"ids": list(ids)}):
        counts[int(execution_id)] = (int(n), tuple(scheduled))
    return counts


def _live_rows(conn: psycopg.Connection, execution_id: int) -> dict[tuple[str, int], LiveRows]:
    rows = conn.execute(Q.task_live_rows, {"id": execution_id}).fetchall()
    return {(name, it): LiveRows(int(r), int(w), tuple(q)) for name, it, r, w, q in rows}


def kv_entries(conn: psycopg.Connection, keys: Iterable[str]) -> dict[str, KVEntry | None]:
    """The kv keys templates may read (None: not set); a secret's value is not read."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    out: dict[str, KVEntry | None] = dict.fromkeys(wanted)
    for key, value, secret in conn.execute(Q.kv_snapshot, {"keys": wanted}):
        out[key] = KVEntry(value, bool(secret))
    return out


def secret_values(conn: psycopg.Connection, keys: Iterable[str]) -> dict[str, Json]:
    """The values of these keys that are set and secret."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    return dict(conn.execute(Q.kv_secret_values, {"keys": wanted}).fetchall())


def runnable_workflows(conn: psycopg.Connection, refs: Iterable[str]) -> set[str]:
    wanted = sorted(set(refs))
    if not wanted:
        return set()
    return {row[0] for row in conn.execute(Q.workflow_runnable, {"refs": wanted})}


def item_results(
    conn: psycopg.Connection, execution_id: int, task_name: str, iteration: int
) -> tuple[list[Json], list[int]]:
    """Final attempt of every item, in item order: (results, indices that failed)."""
    rows = conn.execute(
        Q.task_item_results, {"id": execution_id, "task": task_name, "iteration": iteration}
    ).fetchall()
    results: list[Json] = []
    failed: list[int] = []
    for index, status, result in rows:
        # Canceled items (never run) stay as null, so positions match item indices.
        results.append(None if status == TaskStatus.CANCELED else result)
        if status not in (TaskStatus.SUCCEEDED, TaskStatus.CANCELED):
            failed.append(index)
    return results, failed
