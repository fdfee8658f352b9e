"""Hostile templates and actions at run time: each fails its own task with a clear
error; the worker keeps running and the workflow's other branches are unaffected."""

from __future__ import annotations

from pathlib import Path

import psycopg

from tests.helpers import start, task_states, tasks, wait_done

EXPECTED_FAILURES = {
    "escape_class": "",
    "escape_globals": "",
    "escape_format": "",
    "range_bomb": "",
    "string_bomb": "",
    "list_bomb": "",
    "recursion_bomb": "",
    "huge_value": "",
    "sys_exit": "exit code",
    "hard_exit": "without a result",
    "base_exception": "",
    "not_json": "not JSON",
    "oversized": "over the 1 MB limit",
    "segfault": "SIGSEGV",
}


def test_gauntlet(conn: psycopg.Connection, register, worker_thread) -> None:  # type: ignore[no-untyped-def]
    marker = Path("/tmp/attune-injected")
    marker.unlink(missing_ok=True)
    register("testpack")
    worker = worker_thread(concurrency=6)
    row = wait_done(conn, start(conn, "testpack.gauntlet"), timeout=90)
    assert row["status"] == "succeeded", row["error"]
    assert row["output"] == {"good": "the good branch ran"}
    states = task_states(conn, row["id"])
    # The logical task's error (template failures happen before any row runs).
    errors = {
        name: error
        for name, error in conn.execute(
            "SELECT task_name, error FROM attune.task_state WHERE workflow_execution_id = %s",
            (row["id"],),
        ).fetchall()
        if error
    }
    for name, fragment in EXPECTED_FAILURES.items():
        assert states[name] == "failed", (name, states[name])
        message = (errors.get(name) or {}).get("message", "")
        assert message and "\n" not in message, (name, message)
        assert fragment in message, (name, message)
    # Template failures name the task and the expression; rendering stays bounded.
    assert "task 'range_bomb'" in errors["range_bomb"]["message"]
    # The injection was passed literally to echo: no shell ran it.
    injection = next(t for t in tasks(conn, row["id"]) if t["task_name"] == "injection")
    assert injection["result"]["stdout"].startswith("$(touch /tmp/attune-injected)")
    assert not marker.exists()
    # The worker is alive and still takes work.
    assert worker._runner.running == {}  # type: ignore[attr-defined]
    again = wait_done(conn, start(conn, "testpack.gauntlet"), timeout=90)
    assert again["status"] == "succeeded"
