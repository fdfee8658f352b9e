"""SIGTERM: a worker finishes or hands back its tasks; demo and bench run end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from tests.helpers import start, tasks, wait_done

pytestmark = pytest.mark.e2e


def test_sigterm_hands_back_unfinished_tasks(
    conn: psycopg.Connection, register, worker_procs
) -> None:  # type: ignore[no-untyped-def]
    register("e2e")
    leaving = worker_procs(concurrency=2, lease_seconds=30.0, extra=("--grace-seconds", "0.5"))
    execution_id = start(conn, "e2e.sleepy", {"seconds": 3.0})
    deadline = time.monotonic() + 20
    while not any(t["status"] == "running" for t in tasks(conn, execution_id)):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(leaving.pid, signal.SIGTERM)  # type: ignore[attr-defined]
    assert leaving.wait(timeout=15) == 0  # type: ignore[attr-defined]
    first = tasks(conn, execution_id)[0]
    # Handed back at once (not left to a 30 s lease): scheduled again, lease cleared.
    assert first["status"] == "scheduled" and first["lease_owner"] is None
    worker_procs(concurrency=2)
    row = wait_done(conn, execution_id, timeout=60)
    assert row["status"] == "succeeded", row["error"]
    # Run twice: by the leaving worker (created claimed by its start, or claimed) and
    # claimed again from the queue after the hand-back.
    runs = conn.execute(
        "SELECT count(*) FROM attune.execution_event WHERE task_execution_id = %s"
        " AND to_status = 'running'",
        (first["id"],),
    ).fetchone()
    assert runs == (2,) and tasks(conn, execution_id)[0]["claims"] >= 1
    stopped = conn.execute(
        "SELECT state FROM attune.worker_status WHERE pid = %s",
        (leaving.pid,),  # type: ignore[attr-defined]
    ).fetchone()
    assert stopped == ("stopped",)


def _cli(dsn: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "attune_pg.cli.entry", *args, "--dsn", dsn],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_demo_runs_end_to_end(dsn: str) -> None:
    done = _cli(dsn, "demo")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "task timeline" in done.stdout and "summarize" in done.stdout
    assert '"message": "hello, attune! (14 letters)"' in done.stdout
    assert "stopped the worker" in done.stdout


def test_bench_reports_its_figures(dsn: str) -> None:
    done = _cli(dsn, "bench", "-n", "20", "-k", "3", "-w", "1", "-c", "4", "--idle-samples", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded: 20/20" in done.stdout
    assert "task steps/s" in done.stdout and "idle wake-up" in done.stdout
    assert "fsync=" in done.stdout


def test_worker_started_without_a_database_waits_instead_of_exiting(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from attune_pg.worker.procs import start_worker, stop_worker

    log = tmp_path / "worker.log"
    # Nothing listens on this socket directory: the database is "down".
    dead = f"postgresql://nobody@/attune?host={tmp_path}&connect_timeout=1"
    proc = start_worker(dead, concurrency=1, log_level="info", log_file=str(log))
    try:
        time.sleep(2.5)
        assert proc.poll() is None, log.read_text()  # still waiting, not crashed
        assert log.read_text().count("waiting for the database") == 1
    finally:
        assert stop_worker(proc, timeout=10) == 0
