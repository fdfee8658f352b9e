"""kill -9 a worker mid-task: another worker finishes everything, each task advancing once."""

from __future__ import annotations

import os
import signal
import time

import psycopg
import pytest

from tests.helpers import start, wait_done

pytestmark = pytest.mark.e2e


def _running_on(conn: psycopg.Connection, pid: int) -> int:
    row = conn.execute(
        "SELECT count(*) FROM attune.task_execution WHERE status = 'running'"
        " AND split_part(lease_owner, ':', 2) = %s",
        (str(pid),),
    ).fetchone()
    return int(row[0]) if row else 0


def test_kill_minus_nine_loses_nothing(conn: psycopg.Connection, register, worker_procs) -> None:  # type: ignore[no-untyped-def]
    register("e2e")
    victim = worker_procs(concurrency=4, lease_seconds=2.0)
    survivor = worker_procs(concurrency=4, lease_seconds=2.0)
    ids = [start(conn, "e2e.sleepy", {"seconds": 0.8}) for _ in range(6)]

    deadline = time.monotonic() + 20
    while _running_on(conn, victim.pid) == 0:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the victim worker never claimed a task"
        time.sleep(0.02)
    interrupted = _running_on(conn, victim.pid)  # type: ignore[attr-defined]
    os.kill(victim.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    victim.wait()  # type: ignore[attr-defined]

    for execution_id in ids:
        row = wait_done(conn, execution_id, timeout=60)
        assert row["status"] == "succeeded", (execution_id, row["error"])
    assert survivor.poll() is None  # type: ignore[attr-defined]

    # The killed worker's tasks were handed back and claimed again (and only those; a
    # row may have been created claimed, so its claims from the queue count from 0).
    reclaimed = conn.execute(
        "SELECT count(DISTINCT task_execution_id) FROM attune.execution_event"
        " WHERE workflow_execution_id = ANY(%s) AND kind = 'task_status'"
        " AND from_status = 'running' AND to_status = 'scheduled'",
        (ids,),
    ).fetchone()
    assert reclaimed is not None and reclaimed[0] == interrupted
    # Each task ran to completion once: one row per task per workflow, one terminal event each.
    per_task = conn.execute(
        "SELECT workflow_execution_id, task_name, count(*) FROM attune.task_execution"
        " WHERE workflow_execution_id = ANY(%s) GROUP BY 1, 2",
        (ids,),
    ).fetchall()
    assert len(per_task) == 4 * len(ids)
    assert all(count == 1 for _, _, count in per_task)
    terminal_events = conn.execute(
        "SELECT task_execution_id, count(*) FROM attune.execution_event"
        " WHERE workflow_execution_id = ANY(%s) AND kind = 'task_status'"
        " AND to_status IN ('succeeded', 'failed', 'timed_out', 'canceled')"
        " GROUP BY 1",
        (ids,),
    ).fetchall()
    assert len(terminal_events) == 4 * len(ids)
    assert all(count == 1 for _, count in terminal_events)
    # Each join fired exactly once, and no lease is left behind.
    states = conn.execute(
        "SELECT count(*) FROM attune.task_state WHERE workflow_execution_id = ANY(%s)"
        " AND task_name = 'done'",
        (ids,),
    ).fetchone()
    assert states == (len(ids),)
    leases = conn.execute(
        "SELECT count(*) FROM attune.task_execution WHERE lease_owner IS NOT NULL"
    ).fetchone()
    assert leases == (0,)
