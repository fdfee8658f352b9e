"""Python actions through the worker; handled failures; definition snapshots."""

from __future__ import annotations

from pathlib import Path

import psycopg

from attune_pg import packs
from tests.conftest import FIXTURE_PACKS
from tests.helpers import start, statuses, tasks, wait_done


def test_python_action_result_and_idempotency_key(
    conn: psycopg.Connection, register, worker_thread
) -> None:  # type: ignore[no-untyped-def]
    register("pyflow")
    worker_thread()
    execution_id = start(conn, "pyflow.squares", {"x": 7})
    row = wait_done(conn, execution_id)
    assert row["status"] == "succeeded", row["error"]
    assert row["output"] == {"square": 49}
    square = next(t for t in tasks(conn, execution_id) if t["task_name"] == "square")
    assert square["result"]["key"] == f"{execution_id}:{square['id']}"
    assert statuses(conn, execution_id) == {"square": "succeeded", "report": "succeeded"}


def test_handled_failure_routes_and_the_workflow_succeeds(
    conn: psycopg.Connection, register, worker_thread
) -> None:  # type: ignore[no-untyped-def]
    register("pyflow")
    worker_thread()
    execution_id = start(conn, "pyflow.squares", {"x": -2})
    row = wait_done(conn, execution_id)
    assert row["status"] == "succeeded", row["error"]
    assert row["output"] == {"square": -1}
    by_name = {t["task_name"]: t for t in tasks(conn, execution_id)}
    assert by_name["square"]["status"] == "failed"
    assert by_name["square"]["error"]["type"] == "ValueError"
    assert by_name["recover"]["result"] == {"message": "recovered from: negative input -2"}


def test_running_execution_keeps_its_definition_snapshot(
    conn: psycopg.Connection,
    register,
    worker_thread,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    register("pyflow")
    execution_id = start(conn, "pyflow.squares", {"x": 3})
    # Re-register the pack with a different workflow before any worker runs it.
    changed = tmp_path / "pyflow"
    (changed / "workflows").mkdir(parents=True)
    (changed / "actions").mkdir()
    for name in ("pack.yaml", "actions/compute.yaml", "actions/compute.py"):
        (changed / name).write_text((FIXTURE_PACKS / "pyflow" / name).read_text())
    (changed / "workflows" / "squares.yaml").write_text(
        'label: changed\nversion: "2.0.0"\nparameters:\n  x: {type: integer}\n'
        "tasks:\n  - name: other\n    action: core.noop\n"
    )
    packs.register(conn, changed)
    worker_thread()
    row = wait_done(conn, execution_id)
    assert row["status"] == "succeeded", row["error"]
    assert set(statuses(conn, execution_id)) == {"square", "report"}
    newer = wait_done(conn, start(conn, "pyflow.squares", {"x": 3}))
    assert set(statuses(conn, newer["id"])) == {"other"}
