"""cancel / pause / resume / retry, idempotent start, nesting limits: SQL and CLI."""

from __future__ import annotations

import time

import psycopg
import pytest
from click.testing import CliRunner

from attune_pg.cli import cli
from attune_pg.store import kv
from tests.helpers import start, task_states, tasks, wait_done


@pytest.fixture
def ctl(conn: psycopg.Connection, register, worker_thread) -> psycopg.Connection:  # type: ignore[no-untyped-def]
    register("examples")
    register("ctl")
    worker_thread(concurrency=8)
    return conn


def _status(conn: psycopg.Connection, execution_id: int) -> str:
    row = conn.execute(
        "SELECT status FROM attune.workflow_execution WHERE id = %s", (execution_id,)
    ).fetchone()
    assert row is not None
    return str(row[0])


def _wait_status(
    conn: psycopg.Connection, execution_id: int, want: str, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while _status(conn, execution_id) != want:
        assert time.monotonic() < deadline, f"still {_status(conn, execution_id)}, wanted {want}"
        time.sleep(0.05)


def _wait_running_task(conn: psycopg.Connection, execution_id: int) -> None:
    deadline = time.monotonic() + 20
    while not any(t["status"] == "running" for t in tasks(conn, execution_id)):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_pause_lets_running_finish_then_resume_continues(ctl: psycopg.Connection) -> None:
    execution_id = start(ctl, "examples.long_running", {"seconds": 0.5})
    _wait_running_task(ctl, execution_id)
    assert ctl.execute("SELECT attune.pause_execution(%s)", (execution_id,)).fetchone() == (
        "pausing",
    )
    _wait_status(ctl, execution_id, "paused")
    # step1 finished; step2 was dispatched but held.
    rows = {t["task_name"]: t for t in tasks(ctl, execution_id)}
    assert rows["step1"]["status"] == "succeeded"
    assert rows["step2"]["status"] == "pending" and rows["step2"]["held"]
    time.sleep(0.5)
    assert _status(ctl, execution_id) == "paused"  # nothing moves while paused
    assert ctl.execute("SELECT attune.resume_execution(%s)", (execution_id,)).fetchone() == (
        "running",
    )
    assert wait_done(ctl, execution_id)["status"] == "succeeded"


def test_cancel_allow_finish(ctl: psycopg.Connection) -> None:
    execution_id = start(ctl, "examples.long_running", {"seconds": 0.5})
    _wait_running_task(ctl, execution_id)
    ctl.execute("SELECT attune.cancel_execution(%s)", (execution_id,))
    row = wait_done(ctl, execution_id)
    assert row["status"] == "canceled"
    states = task_states(ctl, execution_id)
    assert states["step1"] == "succeeded"  # it was allowed to finish
    assert "step3" not in states


def test_cancel_running_kills_the_action(ctl: psycopg.Connection) -> None:
    execution_id = start(ctl, "examples.long_running", {"seconds": 300})
    _wait_running_task(ctl, execution_id)
    ctl.execute("SELECT attune.cancel_execution(%s, 'cancel_running')", (execution_id,))
    # The bound is the behaviour: a 300 s action was killed, not waited for.
    row = wait_done(ctl, execution_id, timeout=120)
    assert row["status"] == "canceled"
    assert tasks(ctl, execution_id)[0]["status"] == "canceled"


def test_cancel_propagates_to_child_workflows(ctl: psycopg.Connection) -> None:
    execution_id = start(ctl, "ctl.parent")
    deadline = time.monotonic() + 20
    while True:
        child = ctl.execute(
            "SELECT c.id FROM attune.workflow_execution c JOIN attune.task_execution t"
            " ON t.id = c.parent_task_id"
            " WHERE t.workflow_execution_id = %s AND c.status = 'running'",
            (execution_id,),
        ).fetchone()
        if child:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ctl.execute("SELECT attune.cancel_execution(%s, 'cancel_running')", (execution_id,))
    assert wait_done(ctl, execution_id, timeout=20)["status"] == "canceled"
    assert wait_done(ctl, child[0], timeout=20)["status"] == "canceled"


def test_invalid_control_requests_change_nothing(ctl: psycopg.Connection) -> None:
    done = wait_done(ctl, start(ctl, "examples.child", {"name": "x"}))
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="already succeeded"):
        ctl.execute("SELECT attune.cancel_execution(%s)", (done["id"],))
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="only a paused"):
        ctl.execute("SELECT attune.resume_execution(%s)", (done["id"],))
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="only a failed"):
        ctl.execute("SELECT attune.retry_execution(%s)", (done["id"],))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="cancellation policy"):
        ctl.execute("SELECT attune.cancel_execution(%s, 'nuke')", (done["id"],))
    with pytest.raises(psycopg.errors.NoDataFound, match="does not exist"):
        ctl.execute("SELECT attune.pause_execution(999999)")
    assert _status(ctl, done["id"]) == "succeeded"


def test_retry_execution_reruns_only_the_failed_task(ctl: psycopg.Connection) -> None:
    failed = wait_done(ctl, start(ctl, "ctl.fail_then_fix"))
    assert failed["status"] == "failed" and "flaky" in failed["error"]["message"]
    kv.set_value(ctl, "fail_code", 0)
    assert ctl.execute("SELECT attune.retry_execution(%s)", (failed["id"],)).fetchone() == (
        "running",
    )
    row = wait_done(ctl, failed["id"])
    assert row["status"] == "succeeded", row["error"]
    runs = [t["task_name"] for t in tasks(ctl, failed["id"])]
    assert runs.count("setup") == 1 and runs.count("steady") == 1  # kept, not re-run
    assert runs.count("flaky") == 2 and runs.count("finish") == 1


def test_cli_controls(ctl: psycopg.Connection, dsn: str) -> None:
    execution_id = start(ctl, "examples.long_running", {"seconds": 5})
    _wait_running_task(ctl, execution_id)
    runner = CliRunner()
    paused = runner.invoke(cli, ["executions", "pause", str(execution_id), "--dsn", dsn])
    assert paused.exit_code == 0 and "pausing" in paused.stdout
    again = runner.invoke(cli, ["executions", "pause", str(execution_id), "--dsn", dsn])
    assert again.exit_code == 1 and "only a running execution can be paused" in again.stderr
    canceled = runner.invoke(
        cli, ["executions", "cancel", str(execution_id), "--policy", "cancel_running", "--dsn", dsn]
    )
    assert canceled.exit_code == 0, canceled.stderr
    assert wait_done(ctl, execution_id, timeout=15)["status"] == "canceled"


def test_cli_inquiry_respond_validates_the_full_schema(ctl: psycopg.Connection, dsn: str) -> None:
    execution_id = start(ctl, "examples.approval")
    deadline = time.monotonic() + 20
    while not ctl.execute("SELECT 1 FROM attune.inquiry").fetchone():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    runner = CliRunner()
    listed = runner.invoke(cli, ["inquiries", "list", "--dsn", dsn])
    assert listed.exit_code == 0 and "Approve: restart the payment service?" in listed.stdout
    (inquiry_id,) = ctl.execute("SELECT id FROM attune.inquiry").fetchone()  # type: ignore[misc]
    bad = runner.invoke(
        cli, ["inquiries", "respond", str(inquiry_id), "-r", "approved=maybe", "--dsn", dsn]
    )
    assert bad.exit_code == 2 and "approved" in bad.stderr
    good = runner.invoke(
        cli,
        ["inquiries", "respond", str(inquiry_id), "-r", "approved=true", "--as", "carol",
         "--dsn", dsn],
    )  # fmt: skip
    assert good.exit_code == 0, good.stderr
    assert wait_done(ctl, execution_id)["output"] == {"outcome": "approved"}
    (who,) = ctl.execute(
        "SELECT responded_by FROM attune.inquiry WHERE id = %s", (inquiry_id,)
    ).fetchone()  # type: ignore[misc]
    assert who == "carol"


def test_idempotent_start(ctl: psycopg.Connection, dsn: str) -> None:
    first = ctl.execute(
        "SELECT attune.start_execution('examples.child', '{\"name\": \"a\"}', 'order-42')"
    ).fetchone()
    second = ctl.execute(
        "SELECT attune.start_execution('examples.child', '{\"name\": \"a\"}', 'order-42')"
    ).fetchone()
    assert first == second
    runner = CliRunner()
    out = runner.invoke(
        cli,
        [
            "run",
            "examples.child",
            "-p",
            "name=a",
            "--idempotency-key",
            "order-42",
            "--json",
            "--dsn",
            dsn,
        ],
    )
    assert out.exit_code == 0, out.stderr
    assert f'"id": {first[0]}' in out.stdout  # type: ignore[index]
    count = ctl.execute(
        "SELECT count(*) FROM attune.workflow_execution WHERE idempotency_key = 'order-42'"
    ).fetchone()
    assert count == (1,)
    # The refused duplicates left no audit trail for executions that never existed.
    phantoms = ctl.execute(
        "SELECT count(*) FROM attune.execution_event v WHERE NOT EXISTS"
        " (SELECT 1 FROM attune.workflow_execution e WHERE e.id = v.workflow_execution_id)"
    ).fetchone()
    assert phantoms == (0,)


def test_nesting_depth_limit(ctl: psycopg.Connection) -> None:
    row = wait_done(ctl, start(ctl, "ctl.recurse"), timeout=60)
    assert row["status"] == "failed"
    depth = ctl.execute("SELECT max(depth) FROM attune.workflow_execution").fetchone()
    assert depth == (10,)
    deepest = ctl.execute(
        "SELECT t.error FROM attune.task_execution t JOIN attune.workflow_execution e"
        " ON e.id = t.workflow_execution_id WHERE e.depth = 10"
    ).fetchone()
    assert deepest is not None and deepest[0]["type"] == "DepthLimit"


def test_forged_secret_tokens_are_refused(ctl: psycopg.Connection) -> None:
    row = wait_done(ctl, start(ctl, "examples.child", {"name": "\u27e6secret:db_password\u27e7"}))
    assert row["status"] == "failed" and "secret tokens" in row["error"]["message"]
