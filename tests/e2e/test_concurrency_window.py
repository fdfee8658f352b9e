"""A with-items window holds across worker processes: never more than N items in flight."""

from __future__ import annotations

import psycopg
import pytest

from tests.helpers import start, tasks, wait_done

pytestmark = pytest.mark.e2e


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = current = 0
    for _, delta in events:  # ends sort before starts at the same instant
        current += delta
        best = max(best, current)
    return best


def test_window_of_two_across_worker_processes(
    conn: psycopg.Connection, register, worker_procs
) -> None:  # type: ignore[no-untyped-def]
    register("e2e")
    # Three processes with one slot each: three slots for a window of two, so only the
    # window (counters in the database) can keep the third item waiting.
    workers = [worker_procs(concurrency=1, lease_seconds=10.0) for _ in range(3)]
    row = wait_done(conn, start(conn, "e2e.window", {"count": 8, "seconds": 0.3}), timeout=60)
    assert row["status"] == "succeeded", row["error"]
    items = [t for t in tasks(conn, row["id"]) if t["item_index"] is not None]
    assert sorted(t["item_index"] for t in items) == list(range(8))
    intervals = [(t["started_at"].timestamp(), t["finished_at"].timestamp()) for t in items]
    assert _max_overlap(intervals) == 2  # the window was used, and never exceeded
    owners = {t["lease_owner"] for t in items} | {
        e[0]["worker"]
        for e in conn.execute(
            "SELECT data FROM attune.execution_event WHERE kind = 'task_status'"
            " AND to_status = 'running' AND workflow_execution_id = %s",
            (row["id"],),
        ).fetchall()
    }
    pids = {str(w.pid) for w in workers}  # type: ignore[attr-defined]
    took = {o.split(":")[1] for o in owners if o}
    assert took <= pids and len(took) >= 2  # items ran in more than one process
