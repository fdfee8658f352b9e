"""Parameters marked `secret: true` never appear in stored rows (kv aside), results,
errors, audit events, views or CLI output; the action still gets the real value."""

from __future__ import annotations

import logging

import psycopg
import pytest
from click.testing import CliRunner

from attune_pg.cli import cli
from tests.helpers import start, tasks, wait_done

SECRET = "hunter2-correct-horse"


def _everywhere(conn: psycopg.Connection, needle: str) -> list[str]:
    """Every attune table or view (but kv) with a row whose text contains `needle`."""
    found = []
    relations = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'attune' AND c.relkind IN ('r', 'v') AND c.relname <> 'kv'"
    ).fetchall()
    for (name,) in relations:
        row = conn.execute(
            f"SELECT count(*) FROM attune.{name} t WHERE t::text LIKE %s", (f"%{needle}%",)
        ).fetchone()
        if row and row[0]:
            found.append(name)
    return found


def test_secret_parameter_reaches_only_the_action(
    conn: psycopg.Connection,
    dsn: str,
    register,  # type: ignore[no-untyped-def]
    worker_thread,  # type: ignore[no-untyped-def]
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    register("secretflow")
    # Before any worker starts it, the CLI masks the plain value.
    execution_id = start(conn, "secretflow.login", {"user": "ada", "password": SECRET})
    shown = CliRunner().invoke(
        cli, ["executions", "show", str(execution_id), "--json", "--dsn", dsn]
    )
    assert shown.exit_code == 0 and SECRET not in shown.stdout and "***" in shown.stdout
    worker_thread()
    row = wait_done(conn, execution_id)
    assert row["status"] == "succeeded", row["error"]
    by_name = {t["task_name"]: t for t in tasks(conn, execution_id)}
    # The action got the real value (printf printed it), and what was stored is masked.
    assert by_name["echo_it"]["result"] == {"message": "login ada with ***"}
    assert by_name["print_it"]["result"]["stdout"] == "***"
    assert "\u27e6secret:" in by_name["echo_it"]["input"]["message"]
    assert _everywhere(conn, SECRET) == []
    assert caplog.records and SECRET not in caplog.text  # nor in the worker's logs
    cli_out = CliRunner().invoke(
        cli, ["executions", "tasks", str(execution_id), "--json", "--dsn", dsn]
    )
    assert cli_out.exit_code == 0 and SECRET not in cli_out.stdout


def test_invalid_secret_parameter_error_does_not_show_it(
    conn: psycopg.Connection,
    register,
    worker_thread,  # type: ignore[no-untyped-def]
) -> None:
    register("secretflow")
    worker_thread()
    row = wait_done(conn, start(conn, "secretflow.login", {"user": "ada", "password": "short"}))
    assert row["status"] == "failed"
    assert "password" in row["error"]["message"] and "short" not in row["error"]["message"]
    events = conn.execute(
        "SELECT count(*) FROM attune.execution_event WHERE data::text LIKE '%short%'"
    ).fetchone()
    assert events == (0,)
