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
from attune_pg.store import claims, fence
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
    assert claims.reap_expired(conn) == 1
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
