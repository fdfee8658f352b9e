"""Workflows run through a real worker against a real PostgreSQL."""

from __future__ import annotations

import psycopg

from tests.helpers import start, statuses, tasks, wait_done


def test_hello_join_branches_and_joins(conn: psycopg.Connection, register, worker_thread) -> None:  # type: ignore[no-untyped-def]
    register("examples")
    worker_thread()
    execution_id = start(conn, "examples.hello_join", {"name": "Ada"})
    row = wait_done(conn, execution_id)
    assert row["status"] == "succeeded", row["error"]
    assert row["output"] == {"message": "hello, ada! (11 letters)", "letters": 11}
    seen = statuses(conn, execution_id)
    assert seen == {
        "greet": "succeeded",
        "count_letters": "succeeded",
        "pick_style": "succeeded",
        "whisper": "succeeded",
        "summarize": "succeeded",
    }
    # the join ran exactly once
    assert [t["task_name"] for t in tasks(conn, execution_id)].count("summarize") == 1
    assert row["active_tasks"] == 0


def test_decision_takes_the_other_branch(conn: psycopg.Connection, register, worker_thread) -> None:  # type: ignore[no-untyped-def]
    register("examples")
    worker_thread()
    execution_id = start(conn, "examples.hello_join", {"name": "Ada", "shout": True})
    row = wait_done(conn, execution_id)
    assert row["status"] == "succeeded", row["error"]
    assert row["output"]["message"] == "HELLO, ADA! (11 letters)"
    assert "whisper" not in statuses(conn, execution_id)


def test_bad_parameters_fail_the_execution_naming_the_parameter(
    conn: psycopg.Connection,
    register,
    worker_thread,  # type: ignore[no-untyped-def]
) -> None:
    register("examples")
    worker_thread()
    execution_id = start(conn, "examples.hello_join", {"name": 42})
    row = wait_done(conn, execution_id)
    assert row["status"] == "failed"
    assert "name" in row["error"]["message"]
    assert tasks(conn, execution_id) == []
