"""A cancel's request pass against a reaper and a claim committing in the middle of it.

The pass counts the rows a cancel leaves alive, the conductor decides on the count, and a
later statement of the same transaction cancels the queued rows. Under READ COMMITTED
that later statement sees what others committed in between: each test commits a reap or
a claim on a second connection right after the count (a hook on `load.snapshots`) and
checks that the cancel and the count still agree, so the execution ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from attune_pg import advance
from attune_pg.machine import TaskStatus
from attune_pg.store import claims, load
from attune_pg.store.catalog import ActionCatalog
from attune_pg.store.fence import Finished
from tests.helpers import execution_and_tasks, start


@pytest.fixture
def other(dsn: str) -> Iterator[psycopg.Connection]:
    """A second session, committing while the request pass's transaction is open."""
    with psycopg.connect(dsn, autocommit=True) as other:
        yield other


def _after_count(monkeypatch: pytest.MonkeyPatch, then: Callable[[], Any]) -> list[Any]:
    """Run `then` once, right after the request pass has loaded its snapshots (and so
    counted the live rows), before the conductor's commands are written; its result is
    appended to the returned list."""
    seen: list[Any] = []
    original = load.snapshots

    def snapshots(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        if not seen:
            seen.append(then())
        return out

    monkeypatch.setattr(load, "snapshots", snapshots)
    return seen


def _started(conn: psycopg.Connection) -> tuple[int, ActionCatalog]:
    """examples.long_running started: step1 scheduled."""
    execution_id = start(conn, "examples.long_running", {"seconds": 1})
    actions = ActionCatalog(conn)
    assert advance.start_requested(conn, actions, 10).started == 1
    return execution_id, actions


def test_a_row_reaped_after_the_count_is_left_to_report(
    conn: psycopg.Connection,
    other: psycopg.Connection,
    register: Callable[[Path | str], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """step1's worker died: its lease ran out but the reaper had not run yet, so the
    cancel counts it running and waits for it. The reaper then hands it back to the queue
    before the cancel's write: canceling it there would leave nothing to report, and the
    execution canceling for ever (a chaos soak's lost execution)."""
    register("examples")
    execution_id, actions = _started(conn)
    (step1,) = claims.claim_tasks(conn, "w1", 10, lease=0)  # a lease that has run out
    conn.execute("SELECT attune.cancel_execution(%s)", (execution_id,))
    reaped = _after_count(monkeypatch, lambda: claims.reap_expired(other))
    advance.request_pass(conn, actions)
    assert reaped == [(1, 0)]
    assert execution_and_tasks(conn, execution_id) == ("canceling", {"step1": "scheduled"})

    # Another worker runs it; its report ends the cancel.
    (again,) = claims.claim_tasks(conn, "w2", 10, lease=60)
    assert again.id == step1.id
    advance.complete(conn, "w2", [Finished(again, TaskStatus.SUCCEEDED, {}, None)], actions)
    assert execution_and_tasks(conn, execution_id) == ("canceled", {"step1": "succeeded"})


def test_a_row_counted_queued_cannot_be_claimed_before_the_cancel_writes(
    conn: psycopg.Connection,
    other: psycopg.Connection,
    register: Callable[[Path | str], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """step1 is scheduled when the cancel counts it: the cancel will cancel it, so no
    worker may claim it in between, or the action would run after the execution ended."""
    register("examples")
    execution_id, actions = _started(conn)
    conn.execute("SELECT attune.cancel_execution(%s)", (execution_id,))
    claimed = _after_count(monkeypatch, lambda: claims.claim_tasks(other, "w2", 10, lease=60))
    advance.request_pass(conn, actions)
    assert claimed == [[]]
    assert execution_and_tasks(conn, execution_id) == ("canceled", {"step1": "canceled"})
    assert claims.claim_tasks(conn, "w2", 10, lease=60) == []


def test_a_row_reaped_after_a_pauses_count_is_left_to_report(
    conn: psycopg.Connection,
    other: psycopg.Connection,
    register: Callable[[Path | str], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pause's twin of the first test: the pass counts step1 running and stays
    pausing; holding it once the reaper has handed it back would leave it pausing for
    ever, with nothing to report."""
    register("examples")
    execution_id, actions = _started(conn)
    (step1,) = claims.claim_tasks(conn, "w1", 10, lease=0)
    conn.execute("SELECT attune.pause_execution(%s)", (execution_id,))
    reaped = _after_count(monkeypatch, lambda: claims.reap_expired(other))
    advance.request_pass(conn, actions)
    assert reaped == [(1, 0)]
    assert execution_and_tasks(conn, execution_id) == ("pausing", {"step1": "scheduled"})
    (again,) = claims.claim_tasks(conn, "w2", 10, lease=60)
    assert again.id == step1.id
    advance.complete(conn, "w2", [Finished(again, TaskStatus.SUCCEEDED, {}, None)], actions)
    assert execution_and_tasks(conn, execution_id) == (
        "paused",
        {"step1": "succeeded", "step2": "pending"},
    )
