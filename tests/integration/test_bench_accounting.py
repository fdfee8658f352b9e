"""`attune-pg bench --scenario`'s accounting: /proc CPU, server counters, history rows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg

from attune_pg import packs
from attune_pg.cli import bench_account
from attune_pg.cli.bench_account import Meter, postmaster_of, tree_cpu
from attune_pg.cli.bench_suite import suite_pack
from attune_pg.store import benchsuite, retention


def test_tree_cpu_counts_children_also_after_they_exited() -> None:
    before = tree_cpu([os.getpid()])
    # A child that burns ~0.3 s of CPU and is reaped: its time moves to our cutime.
    subprocess.run(
        [sys.executable, "-c", "import time\nend = time.process_time() + 0.3\n"
         "while time.process_time() < end: pass"],
        check=True,
    )  # fmt: skip
    assert tree_cpu([os.getpid()]) - before >= 0.25
    assert tree_cpu([2**22 + 12345]) == 0.0  # no such process: nothing, no error


def test_meter_reads_what_the_server_did(conn: psycopg.Connection, tmp_path: Path) -> None:
    packs.register(conn, suite_pack(tmp_path))
    backend = benchsuite.counters(conn).backend_pid
    postmaster = postmaster_of(backend)
    if postmaster is not None:  # the embedded server runs here; a remote one is unknown
        assert tree_cpu([postmaster]) > 0
    meter = Meter(conn, [os.getpid()])
    a = meter.read()
    ids = benchsuite.start_workflows(conn, "bench.single", 25, "bench-test")
    conn.execute("SELECT pg_stat_force_next_flush()")  # ours flush when idle, not in 10 s
    conn.execute("SELECT 1")
    b = meter.read()
    cost = Meter.cost(a, b, steps=len(ids))
    # Each execution is one row plus its audit row (written by the announce trigger).
    assert cost.inserted >= 2 * 25
    assert cost.commits >= 1 and cost.rollbacks == 0
    assert cost.wal_bytes > 25 * 500  # every row version is in the WAL
    assert cost.per_step(cost.tuples) >= 2
    assert "commits" in cost.line() and "WAL bytes" in cost.line()


def test_history_rows_are_what_a_real_run_leaves(conn: psycopg.Connection, tmp_path: Path) -> None:
    packs.register(conn, suite_pack(tmp_path))
    notified: list[str] = []
    conn.add_notify_handler(lambda n: notified.append(n.channel))
    conn.execute("LISTEN attune_start")
    assert benchsuite.load_history(conn, "bench.three", 5, 3, days=40) == 15
    assert benchsuite.history_counts(conn) == (15, 5)
    events = conn.execute(
        "SELECT kind, count(*) FROM attune.execution_event GROUP BY kind ORDER BY kind"
    ).fetchall()
    assert events == [("task_status", 45), ("workflow_status", 15)]
    states = conn.execute(
        "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FROM attune.task_state"
    ).fetchone()
    assert states == (15, 15)
    # The triggers were off for the load only: the session is back to normal.
    assert conn.execute("SHOW session_replication_role").fetchone() == ("origin",)
    conn.execute("SELECT 1")
    assert notified == []  # no trigger ran: nothing was announced
    # Old enough for retention, and prunable like any finished execution.
    assert retention.prune_all(conn, 30 * 86400, 100) == 5
    assert benchsuite.history_counts(conn) == (0, 0)


def test_settle_outlasts_the_statistics_idle_flush() -> None:
    # PostgreSQL flushes an idle backend's statistics up to 10 s late (PGSTAT_IDLE_INTERVAL).
    assert bench_account.SETTLE_SECONDS > 10


def test_the_backlog_poll_walks_from_the_first_unfinished_execution(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    packs.register(conn, suite_pack(tmp_path))
    ids = benchsuite.start_workflows(conn, "bench.single", 5, "bench-test")

    def cancel(*which: int) -> None:
        conn.execute(
            "UPDATE attune.workflow_execution SET status = 'canceled' WHERE id = ANY(%s)",
            (list(which),),
        )

    backlog = benchsuite.Backlog(ids)
    assert backlog.left(conn) == 5
    cancel(ids[0], ids[1])
    assert backlog.left(conn) == 3 and backlog.lo == ids[2]
    cancel(ids[4])  # past the first unfinished one: an upper bound until that one ends
    assert backlog.left(conn) == 3
    cancel(ids[2], ids[3])
    assert backlog.left(conn) == 0 and benchsuite.Backlog([]).left(conn) == 0
    # Not a range (someone else's rows could lie between): counted exactly, by id.
    others = benchsuite.start_workflows(conn, "bench.single", 3, "bench-test")
    assert benchsuite.Backlog([others[0], others[2]]).left(conn) == 2
