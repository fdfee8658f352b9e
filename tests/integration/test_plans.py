"""The worker's plans: the batched writes find their rows by key in a generic plan, and a
session's cached plans are made afresh (DEALLOCATE ALL) as the tables grow.

A hash join over a whole hot table per batch is invisible in a test's timing and costs a
production server a scan of every task row per completion, so the plans are asserted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from attune_pg.store import benchdata, claims
from attune_pg.store.queries import Q
from attune_pg.worker import loop
from attune_pg.worker.loop import Worker
from tests.helpers import start, wait_done


def _generic_plan(conn: psycopg.Connection, query: str, params: dict[str, str]) -> str:
    """EXPLAIN of `query`'s generic plan (as a prepared statement of the worker runs it)."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    text = re.sub(r"%\((\w+)\)s", number, query)
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute(f"PREPARE plan_probe AS {text}")
    try:
        args = ", ".join(psycopg.sql.quote(params[n]) for n in names)
        rows = conn.execute(f"EXPLAIN EXECUTE plan_probe({args})").fetchall()
    finally:
        conn.execute("DEALLOCATE plan_probe")
    return "\n".join(r[0] for r in rows)


def _history(conn: psycopg.Connection, register: Callable[[Path | str], None]) -> None:
    """3,000 finished task rows, analyzed: big enough that a scan of a table costs more
    than ten look-ups by key, small enough that the planner's guess of 100 input rows (a
    function's default) made batched writes hash-join over the whole table."""
    register("examples")
    benchdata.seed_history(conn, "examples.hello_join", 1000, 3, days=1)
    benchdata.analyze(conn)


@pytest.mark.parametrize(
    ("query", "table", "rows"),
    [
        ("task_finish", "task_execution", [{"id": 1, "attempt": 1, "status": "succeeded"}]),
        (
            "state_write",
            "task_state",
            [{"execution_id": 1, "task_name": "t0", "iteration": 1, "before": "running"}],
        ),
    ],
)
def test_a_batched_write_looks_its_rows_up_by_key_in_a_table_of_history(
    conn: psycopg.Connection,
    register: Callable[[Path | str], None],
    query: str,
    table: str,
    rows: list[dict[str, object]],
) -> None:
    _history(conn, register)
    conn.execute(f"ANALYZE attune.{table}")
    params = {"rows": json.dumps(rows), "me": "w1", "new": "[]"}
    plan = _generic_plan(conn, getattr(Q, query), params)
    assert f"Seq Scan on {table}" not in plan, plan
    assert f"Index Scan using {table}_pkey on {table}" in plan, plan


def test_the_execution_write_finds_its_rows_and_their_pending_states_by_key(
    conn: psycopg.Connection, register: Callable[[Path | str], None]
) -> None:
    # The write closes the pending task states of the executions it ends in the same
    # statement: by execution id in the partial index of pending states, never by
    # walking every pending state (a join of a CTE estimated at one row would).
    _history(conn, register)
    rows = [{"id": 1, "before": "running", "status": "succeeded", "active_tasks": 0,
             "task_rows": 0}]  # fmt: skip
    plan = _generic_plan(conn, Q.execution_write, {"rows": json.dumps(rows)})
    assert "Seq Scan" not in plan, plan
    assert "Index Scan using workflow_execution_pkey on workflow_execution" in plan, plan
    closing = plan[plan.index("Update on task_state") :]
    assert "Index Scan using task_state_pending on task_state" in closing, plan
    assert "Index Cond: (workflow_execution_id = ANY (" in closing, plan


def test_the_reap_of_expired_leases_reads_only_the_leased_rows(
    conn: psycopg.Connection, register: Callable[[Path | str], None]
) -> None:
    # Every worker runs it every few seconds: a scan of all task rows ever run (170 ms on
    # a million) took 10 % of PostgreSQL's time a step under load.
    _history(conn, register)
    conn.execute("ANALYZE attune.task_execution")
    plan = _generic_plan(conn, Q.task_reap, {"n": "100"})
    assert "Seq Scan on task_execution" not in plan, plan
    assert "task_execution_leased" in plan, plan


def test_a_cancels_count_reads_its_executions_rows_by_key(
    conn: psycopg.Connection, register: Callable[[Path | str], None]
) -> None:
    # The count locks the execution's queued rows and reads its live ones: by execution
    # id, never a scan of every task row ever run.
    _history(conn, register)
    conn.execute("ANALYZE attune.task_execution")
    plan = _generic_plan(conn, Q.task_live_rows, {"id": "1"})
    assert "Seq Scan on task_execution" not in plan, plan
    assert plan.count("Index Cond: (workflow_execution_id = $1)") == 2, plan


def test_forgetting_plans_empties_the_session_cache_and_statements_prepare_again(
    conn: psycopg.Connection,
) -> None:
    def prepared() -> int:
        row = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
        assert row is not None
        return int(row[0])

    for _ in range(3):
        conn.execute(Q.queue_next_due, prepare=True)
    assert prepared() == 1
    claims.forget_plans(conn)
    assert prepared() == 0
    conn.execute(Q.queue_next_due, prepare=True)  # psycopg knows: it prepares it anew
    assert prepared() == 1
    claims.plan_generic(conn)
    row = conn.execute("SHOW plan_cache_mode").fetchone()
    assert row is not None and row[0] == "force_generic_plan"


def test_a_worker_forgets_its_plans_each_time_its_steps_double(
    conn: psycopg.Connection,
    register: Callable[[Path | str], None],
    worker_thread: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register("examples")
    monkeypatch.setattr(loop, "REPLAN_FIRST", 2)
    forgotten: list[int] = []
    real = claims.forget_plans

    def counted(c: psycopg.Connection) -> None:
        forgotten.append(worker.tasks_done)
        real(c)

    monkeypatch.setattr(claims, "forget_plans", counted)
    worker = worker_thread(concurrency=2)
    for _ in range(5):
        execution_id = start(conn, "examples.hello_join", {"name": "x"})
        assert wait_done(conn, execution_id)["status"] == "succeeded"
    assert worker.tasks_done >= 10
    # Once at 2 steps or more, again at 4, at 8...: never twice at one size.
    assert len(forgotten) >= 3, forgotten
    assert all(done >= 2 << i for i, done in enumerate(forgotten)), forgotten
    assert len(forgotten) <= worker.tasks_done.bit_length(), forgotten
