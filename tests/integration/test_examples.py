"""Every example in packs/examples runs through a real worker and does what it says."""

from __future__ import annotations

import time

import psycopg
import pytest

from attune_pg.store import kv
from tests.helpers import start, statuses, task_states, tasks, wait_done


@pytest.fixture
def examples(conn: psycopg.Connection, register, worker_thread) -> psycopg.Connection:  # type: ignore[no-untyped-def]
    register("examples")
    worker_thread(concurrency=8)
    return conn


def _run(
    conn: psycopg.Connection, ref: str, params: dict | None = None, timeout: float = 30
) -> dict:  # type: ignore[type-arg]
    return wait_done(conn, start(conn, ref, params), timeout=timeout)


def test_with_items_keeps_item_order(examples: psycopg.Connection) -> None:
    row = _run(examples, "examples.with_items")
    assert row["status"] == "succeeded", row["error"]
    assert row["output"] == {
        "greetings": [
            "0: hello from us-east-1",
            "1: hello from eu-west-1",
            "2: hello from ap-south-1",
            "3: hello from sa-east-1",
        ],
        "count": 4,
    }
    items = [t for t in tasks(examples, row["id"]) if t["task_name"] == "greet_regions"]
    assert sorted(t["item_index"] for t in items) == [0, 1, 2, 3]


def test_empty_with_items_succeeds_at_once(examples: psycopg.Connection) -> None:
    row = _run(examples, "examples.with_items", {"regions": []})
    assert row["status"] == "succeeded", row["error"]
    assert row["output"] == {"greetings": [], "count": 0}
    assert tasks(examples, row["id"]) == []


def test_with_items_on_a_non_list_fails_the_task_clearly(examples: psycopg.Connection) -> None:
    row = _run(examples, "examples.with_items", {"regions": "us-east-1"})
    assert row["status"] == "failed"
    assert "parameter 'regions'" in row["error"]["message"]


def test_batches(examples: psycopg.Connection) -> None:
    row = _run(examples, "examples.batches")
    assert row["status"] == "succeeded", row["error"]
    assert row["output"] == {"batches": ["batch 0: a b", "batch 1: c d", "batch 2: e"]}


def test_retry_with_backoff(examples: psycopg.Connection) -> None:
    row = _run(examples, "examples.retry")
    assert row["status"] == "succeeded", row["error"]
    assert row["output"] == {"attempt": 3}
    attempts = [t for t in tasks(examples, row["id"]) if t["task_name"] == "call_service"]
    assert [t["attempt"] for t in attempts] == [1, 2, 3]
    assert [t["status"] for t in attempts] == ["failed", "failed", "succeeded"]
    # Each retry waited in `scheduled` for its delay (0.2 s, then 0.4 s), not in a worker.
    for before, after, delay in ((attempts[0], attempts[1], 0.2), (attempts[1], attempts[2], 0.4)):
        assert (after["run_at"] - before["finished_at"]).total_seconds() >= delay * 0.9
    # Only the last attempt routed: `done` ran once.
    assert statuses(examples, row["id"])["done"] == "succeeded"


def test_retry_stops_when_on_error_is_false(examples: psycopg.Connection, register) -> None:  # type: ignore[no-untyped-def]
    row = _run(examples, "examples.retry", {"succeed_on": 9})
    assert row["status"] == "failed"
    attempts = [t for t in tasks(examples, row["id"]) if t["task_name"] == "call_service"]
    assert len(attempts) == 4  # the first try and `count: 3` retries
    assert "call_service" in row["error"]["message"]


def test_task_timeout_routes_to_the_fallback(examples: psycopg.Connection) -> None:
    row = _run(examples, "examples.timeout", {"seconds": 300})
    # Succeeded through the fallback: the 300 s sleep was killed by its 0.5 s timeout
    # (the run waits at most 30 s).
    assert row["status"] == "succeeded", row["error"]
    assert row["output"] == {"used": "fallback"}
    assert statuses(examples, row["id"]) == {"slow_primary": "timed_out", "fallback": "succeeded"}


def test_workflow_timeout(examples: psycopg.Connection) -> None:
    row = _run(examples, "examples.workflow_timeout", timeout=30)
    assert row["status"] == "timed_out"
    assert row["error"]["type"] == "WorkflowTimedOut"
    assert statuses(examples, row["id"]) == {"too_long": "canceled"}
    assert (row["finished_at"] - row["started_at"]).total_seconds() < 20


def test_parallel_block(examples: psycopg.Connection) -> None:
    row = _run(examples, "examples.parallel")
    assert row["status"] == "succeeded", row["error"]
    assert row["output"] == {"checks": ["check_disk", "check_time", "check_greeting"]}
    assert statuses(examples, row["id"])["report"] == "succeeded"


def test_delay(examples: psycopg.Connection) -> None:
    row = _run(examples, "examples.delay")
    assert row["status"] == "succeeded", row["error"]
    first, later = tasks(examples, row["id"])
    assert (later["started_at"] - first["finished_at"]).total_seconds() >= 0.9
    # ...and not a poll interval late: the worker slept until run_at.
    assert (later["started_at"] - later["run_at"]).total_seconds() < 0.5


def _inquiry(conn: psycopg.Connection, execution_id: int) -> int:
    deadline = time.monotonic() + 20
    while True:
        row = conn.execute(
            "SELECT id FROM attune.inquiry WHERE workflow_execution_id = %s", (execution_id,)
        ).fetchone()
        if row:
            return int(row[0])
        assert time.monotonic() < deadline, "no inquiry was opened"
        time.sleep(0.05)


def test_approval_refuses_a_bad_answer_then_takes_a_good_one(examples: psycopg.Connection) -> None:
    execution_id = start(examples, "examples.approval")
    inquiry_id = _inquiry(examples, execution_id)
    assert statuses(examples, execution_id) == {"ask": "waiting"}
    with pytest.raises(psycopg.errors.CheckViolation, match='approved: "yes" is not of type'):
        examples.execute(
            "SELECT attune.respond_inquiry(%s, '{\"approved\": \"yes\"}', 'ops')", (inquiry_id,)
        )
    still = examples.execute("SELECT status FROM attune.inquiry WHERE id = %s", (inquiry_id,))
    assert still.fetchone() == ("pending",)
    examples.execute(
        "SELECT attune.respond_inquiry(%s, '{\"approved\": true}', 'ops')", (inquiry_id,)
    )
    row = wait_done(examples, execution_id)
    assert row["status"] == "succeeded", row["error"]
    assert row["output"] == {"outcome": "approved"}
    audit = examples.execute(
        "SELECT data ->> 'responded_by', actor FROM attune.execution_event"
        " WHERE kind = 'inquiry_response' AND workflow_execution_id = %s",
        (execution_id,),
    ).fetchall()
    assert audit == [("ops", examples.info.user)]
    ask = next(t for t in tasks(examples, execution_id) if t["task_name"] == "ask")
    assert ask["result"] == {
        "approved": True,
        "response": {"approved": True},
        "responded_by": "ops",
    }


def test_approval_rejected(examples: psycopg.Connection) -> None:
    execution_id = start(examples, "examples.approval")
    inquiry_id = _inquiry(examples, execution_id)
    examples.execute(
        'SELECT attune.respond_inquiry(%s, \'{"approved": false, "reason": "freeze"}\')',
        (inquiry_id,),
    )
    row = wait_done(examples, execution_id)
    assert row["output"] == {"outcome": "rejected: freeze"}
    assert "apply" not in statuses(examples, execution_id)


def test_expired_inquiry_times_the_task_out(examples: psycopg.Connection) -> None:
    execution_id = start(examples, "examples.approval")
    inquiry_id = _inquiry(examples, execution_id)
    examples.execute(
        "UPDATE attune.inquiry SET expires_at = now() - interval '1 second' WHERE id = %s",
        (inquiry_id,),
    )
    row = wait_done(examples, execution_id, timeout=30)
    assert row["output"] == {"outcome": "expired"}
    assert statuses(examples, execution_id) == {"ask": "timed_out"}


def test_nested_workflows(examples: psycopg.Connection) -> None:
    row = _run(examples, "examples.nested")
    assert row["status"] == "succeeded", row["error"]
    assert row["output"] == {"greetings": ["hello, ada", "hello, grace"]}
    children = examples.execute(
        "SELECT c.status, c.depth, c.root_id FROM attune.workflow_execution c"
        " JOIN attune.task_execution t ON t.id = c.parent_task_id"
        " WHERE t.workflow_execution_id = %s",
        (row["id"],),
    ).fetchall()
    assert children == [("succeeded", 1, row["id"])] * 2


def test_kv_config(examples: psycopg.Connection) -> None:
    assert _run(examples, "examples.kv_config")["output"] == {
        "message": "Hello from examples.kv_config!"
    }
    kv.set_value(examples, "greeting", "Howdy")
    assert _run(examples, "examples.kv_config")["output"] == {
        "message": "Howdy from examples.kv_config!"
    }


def test_deploy_pipeline_to_staging(examples: psycopg.Connection) -> None:
    row = _run(examples, "examples.deploy_pipeline", {"app": "shop", "version": "1.4.2"})
    assert row["status"] == "succeeded", row["error"]
    assert row["output"] == {
        "image": "registry.local/shop:1.4.2",
        "deployed": True,
        "approved_by": None,
    }
    seen = statuses(examples, row["id"])
    assert seen["notify_success"] == "succeeded"
    assert "approve" not in seen and "rollback" not in seen


def test_deploy_pipeline_to_production_waits_for_approval(examples: psycopg.Connection) -> None:
    execution_id = start(
        examples,
        "examples.deploy_pipeline",
        {"app": "shop", "version": "2.0.0", "environment": "production"},
    )
    inquiry_id = _inquiry(examples, execution_id)
    examples.execute(
        "SELECT attune.respond_inquiry(%s, '{\"approved\": true}', 'lead')", (inquiry_id,)
    )
    row = wait_done(examples, execution_id)
    assert row["status"] == "succeeded", row["error"]
    assert row["output"]["approved_by"] == "lead" and row["output"]["deployed"] is True


def test_deploy_pipeline_rolls_back_a_failed_region(examples: psycopg.Connection) -> None:
    row = _run(
        examples,
        "examples.deploy_pipeline",
        {"app": "shop", "version": "1.4.3", "fail_region": "eu-west-1"},
    )
    assert row["status"] == "failed"
    seen = task_states(examples, row["id"])
    assert seen["rollout"] == "failed" and seen["rollback"] == "succeeded"
    assert seen["notify_failure"] == "succeeded" and "health" not in seen
    assert "abort" in row["error"]["message"]


def test_deploy_pipeline_refuses_a_bad_version(examples: psycopg.Connection) -> None:
    row = _run(examples, "examples.deploy_pipeline", {"app": "shop", "version": "latest"})
    assert row["status"] == "failed"
    assert task_states(examples, row["id"])["invalid_version"] == "succeeded"
    assert "build" not in task_states(examples, row["id"])
