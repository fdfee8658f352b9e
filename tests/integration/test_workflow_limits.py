"""The workflow limits are settings (schema/0010): iteration cap, nesting depth, with-items
size, result size, context size. Defaults as before; each, lowered, stops what passes it
with an error naming the setting."""

from __future__ import annotations

from dataclasses import fields

import psycopg
import pytest

from attune_pg.settings import Settings
from tests.helpers import start, wait_done

LIMITS = ("max_iterations", "max_depth", "max_items", "max_result_bytes", "max_context_bytes")


def _set(conn: psycopg.Connection, name: str, value: int) -> None:
    cur = conn.execute(
        "UPDATE attune.setting SET value = to_jsonb(%s::int) WHERE name = %s", (value, name)
    )
    assert cur.rowcount == 1, name


def test_the_table_and_the_workers_agree_on_every_default(conn: psycopg.Connection) -> None:
    rows = dict(conn.execute("SELECT name, value FROM attune.setting").fetchall())
    defaults = Settings()
    assert set(LIMITS) <= set(rows)
    for field in fields(Settings):
        assert rows[field.name] == getattr(defaults, field.name), field.name
    assert (defaults.max_iterations, defaults.max_depth) == (100, 10)
    described = conn.execute(
        "SELECT count(*) FROM attune.setting WHERE name = ANY(%s) AND description <> ''",
        (list(LIMITS),),
    ).fetchone()
    assert described == (len(LIMITS),)


@pytest.mark.parametrize(
    ("setting", "value", "workflow", "params", "error_type", "message"),
    [
        (
            "max_iterations",
            3,
            "opspack.loop",
            {},
            "IterationCap",
            "task 'again' was triggered more than 3 times (setting max_iterations)",
        ),
        (
            "max_items",
            2,
            "opspack.mixed",
            {"items": [1, 2, 3]},
            "TaskFailed",
            "3 items, over the limit of 2 (setting max_items)",
        ),
        (
            "max_result_bytes",
            100,
            "opspack.publish",
            {"message": "x" * 200},
            "TaskFailed",
            "over the limit of 100 bytes (setting max_result_bytes)",
        ),
        (
            "max_context_bytes",
            150,
            "opspack.publish",
            {"message": "y" * 200},
            "ContextLimit",
            "task 'say' published variables of 212 bytes of JSON in all, over the limit of 150"
            " bytes (setting max_context_bytes)",
        ),
    ],
)
def test_a_lowered_limit_fails_what_passes_it_naming_the_setting(
    conn: psycopg.Connection,
    register,  # type: ignore[no-untyped-def]
    worker_thread,  # type: ignore[no-untyped-def]
    setting: str,
    value: int,
    workflow: str,
    params: dict[str, object],
    error_type: str,
    message: str,
) -> None:
    register("opspack")
    # Under the default the same execution succeeds.
    worker = worker_thread()
    ok = wait_done(conn, start(conn, workflow, params if setting != "max_iterations" else {}), 60)
    if setting == "max_iterations":
        assert ok["status"] == "failed" and "more than 100 times" in ok["error"]["message"]
        (runs,) = conn.execute(
            "SELECT count(*) FROM attune.task_execution WHERE workflow_execution_id = %s",
            (ok["id"],),
        ).fetchone()  # type: ignore[misc]
        assert runs == 101  # begin, then again 100 times
    else:
        assert ok["status"] == "succeeded", ok["error"]
    worker.request_stop()
    _set(conn, setting, value)
    worker_thread()  # a new worker reads the settings when it connects
    row = wait_done(conn, start(conn, workflow, params), timeout=60)
    assert row["status"] == "failed"
    assert row["error"]["type"] == error_type
    detail = row["error"]["message"]
    if error_type == "TaskFailed":  # the task's own error names the setting
        # (a task that fails before it runs has no task row: its state holds the error)
        (detail,) = conn.execute(
            "SELECT string_agg(error ->> 'message', ' | ') FROM ("
            "  SELECT error FROM attune.task_execution"
            "   WHERE workflow_execution_id = %(id)s AND status = 'failed'"
            "  UNION ALL SELECT error FROM attune.task_state"
            "   WHERE workflow_execution_id = %(id)s AND status = 'failed') e",
            {"id": row["id"]},
        ).fetchone()  # type: ignore[misc]
    assert message in detail


def test_nesting_depth_is_a_setting(conn: psycopg.Connection, register, worker_thread) -> None:  # type: ignore[no-untyped-def]
    register("opspack")
    _set(conn, "max_depth", 0)
    worker_thread()
    row = wait_done(conn, start(conn, "opspack.family"), timeout=60)
    assert row["status"] == "failed"
    (error,) = conn.execute(
        "SELECT error FROM attune.task_execution WHERE workflow_execution_id = %s"
        " AND task_name = 'kid'",
        (row["id"],),
    ).fetchone()  # type: ignore[misc]
    assert error["type"] == "DepthLimit"
    assert error["message"] == (
        "nested workflows may be 0 deep (setting max_depth); 'opspack.kid' would be level 1"
    )
