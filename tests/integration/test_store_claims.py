"""The store's claim, fence and reap, called directly (no worker): what each one changes.

The worker loop is a thin caller of these; here each is driven step by step on a real
database, so a regression in a guard shows as the exact row that moved (or did not).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg

from attune_pg import advance
from attune_pg.machine import TaskStatus
from attune_pg.store import claims, fence, lock
from attune_pg.store.catalog import ActionCatalog
from attune_pg.store.fence import Finished
from tests.helpers import start


def _scheduled_step(conn: psycopg.Connection) -> tuple[int, ActionCatalog]:
    """One execution of examples.long_running started by the advance: step1 scheduled."""
    execution_id = start(conn, "examples.long_running", {"seconds": 1})
    actions = ActionCatalog(conn)
    assert advance.start_requested(conn, actions, 10).started == 1
    return execution_id, actions


def _status(conn: psycopg.Connection, task_id: int) -> tuple[str, str | None]:
    row = conn.execute(
        "SELECT status, lease_owner FROM attune.task_execution WHERE id = %s", (task_id,)
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_claim_fence_and_hand_back(
    conn: psycopg.Connection, register: Callable[[Path | str], None]
) -> None:
    register("examples")
    execution_id, actions = _scheduled_step(conn)
    (task,) = claims.claim_tasks(conn, "w1", 10, lease=60)
    assert (task.workflow_execution_id, task.task_name, task.attempt) == (execution_id, "step1", 1)
    assert _status(conn, task.id) == ("running", "w1")
    assert claims.claim_tasks(conn, "w2", 10, lease=60) == []  # nothing else is due

    # Another worker's outcome is fenced out: nothing changes, nothing advances.
    stale = advance.complete(conn, "w2", [Finished(task, TaskStatus.SUCCEEDED, {}, None)], actions)
    assert (stale.stale, stale.advanced) == (1, 0)
    assert _status(conn, task.id) == ("running", "w1")

    # The heartbeat renews only the owner's rows; a graceful stop hands them back.
    assert claims.heartbeat(conn, "w2", [task.id], 60, 0) == []
    assert claims.hand_back(conn, "w2", [task.id]) == 0
    assert claims.hand_back(conn, "w1", [task.id]) == 1
    assert _status(conn, task.id) == ("scheduled", None)


def test_reaped_rows_are_claimed_again_and_the_first_owner_is_fenced_out(
    conn: psycopg.Connection, register: Callable[[Path | str], None]
) -> None:
    register("examples")
    _, actions = _scheduled_step(conn)
    (first,) = claims.claim_tasks(conn, "w1", 10, lease=0)  # a lease that has run out
    assert claims.reap_expired(conn) == (1, 0)
    assert _status(conn, first.id) == ("scheduled", None)
    (second,) = claims.claim_tasks(conn, "w2", 10, lease=60)
    assert second.id == first.id

    # w1 comes back late: its result is dropped; w2's ends the attempt and advances.
    late = fence.finish_attempts(conn, "w1", [Finished(first, TaskStatus.SUCCEEDED, {}, None)])
    assert late == []
    stats = advance.complete(
        conn, "w2", [Finished(second, TaskStatus.SUCCEEDED, {"slept": 1}, None)], actions
    )
    assert (stats.stale, stats.advanced) == (0, 1)
    assert [a.status for a in stats.attempts] == [TaskStatus.SUCCEEDED]
    assert _status(conn, first.id) == ("succeeded", None)
    (step2,) = claims.claim_tasks(conn, "w2", 10, lease=60)
    assert step2.task_name == "step2"  # the transition fired once


def _audit(conn: psycopg.Connection, task_id: int) -> list[tuple[str | None, str]]:
    rows = conn.execute(
        "SELECT from_status, to_status FROM attune.execution_event"
        " WHERE task_execution_id = %s ORDER BY id",
        (task_id,),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def test_rows_due_now_are_created_claimed_with_the_workers_free_slots(
    conn: psycopg.Connection, register: Callable[[Path | str], None]
) -> None:
    """Lever 1 (schema 0015): the start creates step1 running under w1's lease, and the
    advance creates step2 the same way; no claim, no `scheduled` version, and the lease
    guarantees of a claimed row hold (fenced, reaped, claimed again)."""
    register("examples")
    execution_id = start(conn, "examples.long_running", {"seconds": 1})
    actions = ActionCatalog(conn)
    stats = advance.start_requested(conn, actions, 10, slots=claims.Slots("w1", 60, 2))
    (step1,) = stats.claimed
    assert (step1.workflow_execution_id, step1.task_name, step1.attempt) == (
        execution_id,
        "step1",
        1,
    )
    assert stats.queued == 0
    assert _status(conn, step1.id) == ("running", "w1")
    assert _audit(conn, step1.id) == [(None, "running")]
    assert claims.claim_tasks(conn, "w2", 10, lease=60) == []  # never in the queue

    # Another worker cannot finish it; its owner can, and its successor is created claimed.
    stale = advance.complete(conn, "w2", [Finished(step1, TaskStatus.SUCCEEDED, {}, None)], actions)
    assert (stale.stale, stale.advanced) == (1, 0)
    done = advance.complete(
        conn,
        "w1",
        [Finished(step1, TaskStatus.SUCCEEDED, {"slept": 1}, None)],
        actions,
        slots=claims.Slots("w1", 0, 1),  # a lease that runs out at once
    )
    (step2,) = done.claimed
    assert step2.task_name == "step2"
    assert _status(conn, step2.id) == ("running", "w1")

    # Its worker died: the lease expires, the reaper hands the row back, w2 runs it.
    assert claims.reap_expired(conn) == (1, 0)
    (again,) = claims.claim_tasks(conn, "w2", 10, lease=60)
    assert again.id == step2.id
    assert (
        fence.finish_attempts(conn, "w1", [Finished(step2, TaskStatus.SUCCEEDED, {}, None)]) == []
    )
    assert _audit(conn, step2.id) == [
        (None, "running"),
        ("running", "scheduled"),
        ("scheduled", "running"),
    ]


def test_rows_are_queued_when_no_slot_is_free_or_older_work_waits(
    conn: psycopg.Connection, register: Callable[[Path | str], None]
) -> None:
    register("examples")
    actions = ActionCatalog(conn)
    start(conn, "examples.long_running", {"seconds": 1})
    # No free slot: the row goes to the queue, as before.
    first = advance.start_requested(conn, actions, 10, slots=claims.Slots("w1", 60, 0))
    assert (first.claimed, first.queued) == ([], 1)
    # A claimable row of the same priority waits: it is served first, the new row queues.
    start(conn, "examples.long_running", {"seconds": 1})
    second = advance.start_requested(conn, actions, 10, slots=claims.Slots("w1", 60, 5))
    assert (second.claimed, second.queued) == ([], 1)
    claimed = claims.claim_tasks(conn, "w2", 10, lease=60)
    assert len(claimed) == 2 and claimed[0].id < claimed[1].id
    # Two executions, one slot: the first is created claimed, the second queues.
    for _ in range(2):
        start(conn, "examples.long_running", {"seconds": 1})
    third = advance.start_requested(conn, actions, 10, slots=claims.Slots("w1", 60, 1))
    assert (len(third.claimed), third.queued) == (1, 1)
    (queued,) = claims.claim_tasks(conn, "w2", 10, lease=60)
    assert queued.id != third.claimed[0].id


def _first_step_running(
    conn: psycopg.Connection,
) -> tuple[advance.Env, ActionCatalog, int, claims.ClaimedTask]:
    """One examples.long_running started by worker w1, its step1 created claimed."""
    env = advance.Env.load(conn)
    actions = ActionCatalog(conn)
    first = start(conn, "examples.long_running", {"seconds": 1})
    (step1,) = advance.start_requested(conn, actions, 10, slots=claims.Slots("w1", 60, 1)).claimed
    return env, actions, first, step1


def test_one_turn_advances_starts_and_claims_in_one_transaction(
    conn: psycopg.Connection, register: Callable[[Path | str], None]
) -> None:
    """Lever 3: what finished is advanced, a requested execution started and the queue
    claimed from, all in one transaction (one xmin), each row created claimed where a
    slot was free; the start takes only the slots the advance left."""
    register("examples")
    env, actions, first, step1 = _first_step_running(conn)
    queued = start(conn, "examples.long_running", {"seconds": 1})
    assert advance.start_requested(conn, actions, 10, slots=claims.Slots("w2", 60, 0)).queued == 1
    second = start(conn, "examples.long_running", {"seconds": 1})
    third = start(conn, "examples.long_running", {"seconds": 1})
    done = [Finished(step1, TaskStatus.SUCCEEDED, {"slept": 1}, None)]
    t = advance.turn(conn, done, actions, env, claims.Slots("w1", 60, 3), 10, True)
    # step2 of `first` and the new step1s queue behind the row that waited (the head
    # is served first); the claim takes the three slots, the head first.
    assert (t.stats.advanced, t.start_limit, t.stats.started) == (1, 3, 2)
    assert (t.claim_limit, t.from_queue, t.stats.queued) == (3, 3, 3)
    ran = {(c.workflow_execution_id, c.task_name) for c in t.stats.claimed}
    assert (queued, "step1") in ran and len(ran) == 3
    xmins = conn.execute(
        "SELECT DISTINCT xmin::text FROM attune.task_execution WHERE id = ANY(%s)",
        ([c.id for c in t.stats.claimed],),
    ).fetchall()
    assert len(xmins) == 1
    left = claims.claim_tasks(conn, "w2", 10, lease=60)
    assert len(left) == 1 and left[0].workflow_execution_id in (first, second, third)


def test_a_full_worker_with_nothing_finished_sends_nothing_for_a_start_hint(
    conn: psycopg.Connection, register: Callable[[Path | str], None], tmp_path: Path
) -> None:
    """A full worker woken by another's notification (nothing finished, a start hint, no
    free slot) used to commit an empty transaction each time: 0.19 commits a step where
    0.11 were needed. No message reaches the server; the start waits for a slot."""
    register("examples")
    env = advance.Env.load(conn)
    actions = ActionCatalog(conn)
    waiting = start(conn, "examples.long_running", {"seconds": 1})
    trace = tmp_path / "libpq.trace"
    with trace.open("w") as f:
        conn.pgconn.trace(f.fileno())
        try:
            t = advance.turn(conn, [], actions, env, claims.Slots("w1", 60, 0), 10, False)
        finally:
            conn.pgconn.untrace()
    assert trace.read_text() == ""
    assert (t.start_limit, t.claim_limit, t.stats.started) == (0, 0, 0)
    t = advance.turn(conn, [], actions, env, claims.Slots("w1", 60, 1), 10, False)
    assert t.stats.started == 1 and t.stats.claimed[0].workflow_execution_id == waiting


def test_the_start_resumes_after_what_it_started_and_rescans_now_and_then(
    conn: psycopg.Connection, register: Callable[[Path | str], None]
) -> None:
    """Lever 5: a worker's claim of requested executions resumes after the last one it
    started (under an old snapshot the entries before it are dead and would be walked
    again); a better-priority execution behind the cursor is started at the next rescan."""
    register("examples")
    actions = ActionCatalog(conn)
    ids = [start(conn, "examples.long_running", {"seconds": 1}) for _ in range(3)]
    cursor = lock.StartCursor(rescan_seconds=3600, retry_seconds=3600)

    def started() -> set[int]:
        rows = conn.execute(
            "SELECT id FROM attune.workflow_execution WHERE status <> 'requested'"
        ).fetchall()
        return {r[0] for r in rows}

    assert advance.start_requested(conn, actions, 1, cursor=cursor).started == 1
    assert started() == {ids[0]} and cursor.after == (0, ids[0])
    urgent = conn.execute(
        "INSERT INTO attune.workflow_execution (workflow_ref, parameters, priority)"
        " VALUES ('examples.long_running', '{\"seconds\": 1}', -5) RETURNING id"
    ).fetchone()
    assert urgent is not None
    advance.start_requested(conn, actions, 1, cursor=cursor)
    assert started() == {ids[0], ids[1]}  # resumed after the cursor
    cursor.rescan_seconds = 0  # time for a scan from the head
    advance.start_requested(conn, actions, 1, cursor=cursor)
    assert started() == {ids[0], ids[1], urgent[0]}
    # A resumed scan that finds nothing looks from the head (at most every retry_seconds).
    cursor.rescan_seconds = 3600
    cursor.after = (0, ids[2])
    assert advance.start_requested(conn, actions, 5, cursor=cursor).started == 0
    cursor.retry_seconds = 0
    assert advance.start_requested(conn, actions, 5, cursor=cursor).started == 1
    assert started() == {*ids, urgent[0]} and cursor.after == (0, ids[2])
    # A transaction that rolls back (here: a kv rerun, a failed batch) moves nothing.
    cursor.move((9, 9))
    cursor.rolled_back()
    cursor.committed()
    assert cursor.after == (0, ids[2])


def test_a_turn_writes_the_executions_it_advanced_and_started_in_one_statement(
    conn: psycopg.Connection, register: Callable[[Path | str], None], tmp_path: Path
) -> None:
    """The advance's execution writes ride on the start's statement: one UPDATE of
    workflow_execution a turn where each part sent its own; a round's new and changed
    task states go in one statement; and every row is written."""
    register("examples")
    env, actions, first, step1 = _first_step_running(conn)
    second = start(conn, "examples.long_running", {"seconds": 1})
    conn.prepare_threshold = None  # every statement sends its text: the trace shows each
    trace = tmp_path / "libpq.trace"
    done = [Finished(step1, TaskStatus.SUCCEEDED, {"slept": 1}, None)]
    with trace.open("w") as f:
        conn.pgconn.trace(f.fileno())
        try:
            t = advance.turn(conn, done, actions, env, claims.Slots("w1", 60, 3), 10, False)
        finally:
            conn.pgconn.untrace()
    assert (t.stats.advanced, t.stats.started) == (1, 1)
    sent = trace.read_text()
    assert sent.count("UPDATE attune.workflow_execution") == 1
    # Task states: step1's update with step2's new state, then second's (three before).
    assert sent.count("WITH inserted AS (") == 2
    # The advance: lock, fence, states, step1's and step2's states, step2's row; the
    # start: lock, its state, its row; both parts' executions. Eleven before.
    assert sent.count("\tParse\t") == 9, sent
    rows = conn.execute(
        "SELECT id, status, active_tasks, started_at IS NOT NULL FROM attune.workflow_execution"
        " WHERE id = ANY(%s) ORDER BY id",
        ([first, second],),
    ).fetchall()
    assert rows == [(first, "running", 1, True), (second, "running", 1, True)]
    tasks = conn.execute(
        "SELECT workflow_execution_id, task_name, status FROM attune.task_execution"
        " WHERE workflow_execution_id = ANY(%s) ORDER BY id",
        ([first, second],),
    ).fetchall()
    assert tasks == [
        (first, "step1", "succeeded"),
        (first, "step2", "running"),
        (second, "step1", "running"),
    ]


def test_a_turn_that_releases_items_still_writes_the_item_counters(
    conn: psycopg.Connection, register: Callable[[Path | str], None]
) -> None:
    """The advance's deferred state update rides along however the round ends: here one
    that also releases the next item of a window (its loop once hid the deferral)."""
    register("e2e")
    env = advance.Env.load(conn)
    actions = ActionCatalog(conn)
    execution_id = start(conn, "e2e.window", {"count": 3, "seconds": 0.1})
    first = advance.turn(conn, [], actions, env, claims.Slots("w1", 60, 1), 10, False)
    done = [Finished(first.stats.claimed[0], TaskStatus.SUCCEEDED, {"s": 1}, None)]
    t = advance.turn(conn, done, actions, env, claims.Slots("w1", 60, 1), 10, True)
    assert [c.item_index for c in t.stats.claimed] == [1]  # the second item, claimed
    state = conn.execute(
        "SELECT status, items_total, items_released, items_done FROM attune.task_state"
        " WHERE workflow_execution_id = %s",
        (execution_id,),
    ).fetchall()
    assert state == [("running", 3, 3, 1)]


def test_the_lock_reads_empty_objects_as_fresh_dicts(
    conn: psycopg.Connection, register: Callable[[Path | str], None]
) -> None:
    """The lock sends an empty parameters/vars/pack_config object as NULL (no JSON to
    decode); each execution still gets a dict of its own, and non-empty values whole."""
    register("examples")
    full = start(conn, "examples.long_running", {"seconds": 1})
    empty = start(conn, "examples.long_running", {"seconds": 1})
    conn.execute(
        "UPDATE attune.workflow_execution SET vars = '{\"v\": [1, true]}',"
        " pack_config = '{\"k\": {}}' WHERE id = %s",
        (full,),
    )
    conn.execute(
        "UPDATE attune.workflow_execution SET parameters = '{}', pack_config = '{}' WHERE id = %s",
        (empty,),
    )
    with conn.transaction():
        found, _ = lock.lock_executions(conn, [full, empty])
    by_id = {e.id: e for e in found}
    assert by_id[full].parameters == {"seconds": 1}
    assert by_id[full].vars == {"v": [1, True]} and by_id[full].pack_config == {"k": {}}
    e = by_id[empty]
    assert (e.parameters, e.vars, e.pack_config) == ({}, {}, {})
    assert e.vars is not by_id[full].vars and e.parameters is not e.vars
