"""An execution failed while its tasks were queued or running (a quarantine: a value the
worker cannot decode; or a bug in advancing) never runs them again.

Running rows are left to finish (their outcome is recorded and goes nowhere). If the
worker running one dies, the reaper closes the row instead of handing it back to the
queue, where another worker would run the action for an execution that had ended.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from attune_pg import advance
from attune_pg.machine import TaskStatus
from attune_pg.store import claims, lock
from attune_pg.store.catalog import ActionCatalog
from attune_pg.store.claims import ClaimedTask
from attune_pg.store.fence import Finished
from tests.helpers import execution_and_tasks, poll_until, start

BROKEN = {"type": "Quarantined", "message": "a value the worker cannot decode"}


@pytest.fixture
def other(dsn: str) -> Iterator[psycopg.Connection]:
    """A second session: another worker (its reaper, its start)."""
    with psycopg.connect(dsn, autocommit=True) as other:
        yield other


def _running(conn: psycopg.Connection, lease: float) -> tuple[int, ActionCatalog, ClaimedTask]:
    """examples.long_running started, step1 claimed under a lease of `lease` seconds."""
    execution_id = start(conn, "examples.long_running", {"seconds": 1})
    actions = ActionCatalog(conn)
    assert advance.start_requested(conn, actions, 10).started == 1
    (step1,) = claims.claim_tasks(conn, "w1", 10, lease=lease)
    return execution_id, actions, step1


def _quarantine(conn: psycopg.Connection, execution_id: int) -> None:
    with conn.transaction():
        lock.quarantine(conn, [(execution_id, BROKEN)])


def test_a_running_row_of_a_failed_execution_finishes_and_goes_nowhere(
    conn: psycopg.Connection, register: Callable[[Path | str], None]
) -> None:
    register("examples")
    execution_id, actions, step1 = _running(conn, lease=60)
    _quarantine(conn, execution_id)
    assert execution_and_tasks(conn, execution_id) == ("failed", {"step1": "running"})
    advance.complete(conn, "w1", [Finished(step1, TaskStatus.SUCCEEDED, {}, None)], actions)
    assert execution_and_tasks(conn, execution_id) == ("failed", {"step1": "succeeded"})


def test_a_dead_workers_row_of_a_failed_execution_is_closed_not_run_again(
    conn: psycopg.Connection, register: Callable[[Path | str], None]
) -> None:
    """step1 ran when its execution was quarantined, and its worker died: handed back to
    the queue, it would run again for an execution that had ended."""
    register("examples")
    execution_id, _, claimed = _running(conn, lease=0)  # a lease that has run out
    step1 = claimed.id
    _quarantine(conn, execution_id)
    assert claims.reap_expired(conn) == (0, 1)
    assert execution_and_tasks(conn, execution_id) == ("failed", {"step1": "canceled"})
    assert claims.claim_tasks(conn, "w2", 10, lease=60) == []
    row = conn.execute(
        "SELECT error->>'type', lease_owner FROM attune.task_execution WHERE id = %s", (step1,)
    ).fetchone()
    assert row == ("ExecutionEnded", None)
    moves = conn.execute(
        "SELECT from_status, to_status FROM attune.execution_event"
        " WHERE task_execution_id = %s ORDER BY id",
        (step1,),
    ).fetchall()
    assert moves[-1] == ("running", "canceled")


def test_a_reap_committing_during_a_quarantine_is_seen_by_it(
    conn: psycopg.Connection,
    other: psycopg.Connection,
    register: Callable[[Path | str], None],
) -> None:
    """Another worker's reaper hands step1 back to the queue (its execution still running
    then) and commits after the quarantine's snapshot: the quarantine still cancels it,
    because it takes the running rows too and so re-reads the row the reaper changed."""
    register("examples")
    execution_id, _, _ = _running(conn, lease=0)
    with other.transaction():
        assert claims.reap_expired(other) == (1, 0)  # uncommitted: step1 stays locked
        thread, done, failed = _quarantine_in_a_thread(conn, execution_id)
        thread.start()
        _wait_for_a_lock(conn, done)
    thread.join(timeout=20)
    assert not thread.is_alive() and failed == []
    assert execution_and_tasks(conn, execution_id) == ("failed", {"step1": "canceled"})
    assert claims.claim_tasks(conn, "w2", 10, lease=60) == []


def test_a_bug_in_advancing_fails_the_execution_and_closes_its_queued_rows(
    conn: psycopg.Connection, register: Callable[[Path | str], None]
) -> None:
    """The last resort (Batch.bug) fails an execution a conductor could not advance; its
    queued rows go with it, or a worker would claim and run them after it ended."""
    register("examples")
    execution_id = start(conn, "examples.long_running", {"seconds": 1})
    actions = ActionCatalog(conn)
    with conn.transaction():
        started = advance.start_requested(conn, actions, 10)
    assert started.started == 1
    assert execution_and_tasks(conn, execution_id) == ("running", {"step1": "scheduled"})
    with conn.transaction():
        lock.fail_executions(conn, [(execution_id, BROKEN)])
    assert execution_and_tasks(conn, execution_id) == ("failed", {"step1": "canceled"})
    assert claims.claim_tasks(conn, "w2", 10, lease=60) == []


def test_a_graceful_stop_closes_its_rows_of_an_ended_execution(
    conn: psycopg.Connection, register: Callable[[Path | str], None]
) -> None:
    """A worker stopping hands its unfinished rows back, but not one whose execution has
    ended: another worker would run it."""
    register("examples")
    execution_id, _, step1 = _running(conn, lease=60)
    live_id, _, live = _running(conn, lease=60)
    _quarantine(conn, execution_id)
    assert claims.hand_back(conn, "w1", [step1.id, live.id]) == 2
    assert execution_and_tasks(conn, execution_id) == ("failed", {"step1": "canceled"})
    assert execution_and_tasks(conn, live_id) == ("running", {"step1": "scheduled"})
    assert [t.id for t in claims.claim_tasks(conn, "w2", 10, lease=60)] == [live.id]


def test_a_quarantine_waiting_for_an_advance_sees_the_rows_it_created(
    conn: psycopg.Connection,
    other: psycopg.Connection,
    register: Callable[[Path | str], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another worker's start holds the execution and has created step1 when a quarantine
    of the same execution (a fallback of this worker) begins and waits for it. The
    quarantine statement's snapshot, taken before the wait, would not see step1, left
    queued to run for a failed execution: the quarantine locks the execution first, in a
    statement of its own."""
    register("examples")
    execution_id = start(conn, "examples.long_running", {"seconds": 1})
    thread, done, failed = _quarantine_in_a_thread(conn, execution_id)
    charge = lock.charge_budgets

    def charge_budgets(*args: Any, **kwargs: Any) -> None:
        # Last in the start's transaction: step1 is written, not committed yet.
        thread.start()
        _wait_for_a_lock(conn, done)
        charge(*args, **kwargs)

    monkeypatch.setattr(lock, "charge_budgets", charge_budgets)
    assert advance.start_requested(other, ActionCatalog(other), 10).started == 1
    thread.join(timeout=20)
    assert not thread.is_alive() and failed == []
    assert execution_and_tasks(conn, execution_id) == ("failed", {"step1": "canceled"})
    assert claims.claim_tasks(conn, "w2", 10, lease=60) == []


def _quarantine_in_a_thread(
    conn: psycopg.Connection, execution_id: int
) -> tuple[threading.Thread, threading.Event, list[BaseException]]:
    """A thread (not started) that quarantines the execution on `conn`; the event is set
    when it is done, and what it raised is in the list (not lost in the thread)."""
    done = threading.Event()
    failed: list[BaseException] = []

    def quarantine() -> None:
        try:
            _quarantine(conn, execution_id)
        except BaseException as exc:
            failed.append(exc)
        finally:
            done.set()

    return threading.Thread(target=quarantine), done, failed


def _wait_for_a_lock(conn: psycopg.Connection, done: threading.Event) -> None:
    """Until `conn`'s session waits for a row lock (or its work is done without one)."""
    pid = conn.info.backend_pid
    with psycopg.connect(conn.info.dsn, autocommit=True) as watch:
        poll_until(
            lambda: (
                done.is_set()
                or watch.execute(
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchone()
                == (True,)
            ),
            "a session waiting for a row lock",
        )
