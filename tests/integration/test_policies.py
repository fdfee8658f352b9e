"""Concurrency policies (StackStorm's action.concurrency[.attr]) against a real
PostgreSQL: at most N at once, delay in priority then arrival order, cancel with a
reason, per-attribute limits, task-level limits on actions, counters kept exact."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from attune_pg import packs
from tests.helpers import start, wait_done

HOLD = """\
label: Hold a slot
version: "1"
parameters:
  seconds: {type: number, default: 0.3}
  env: {type: string, default: prod}
tasks:
  - name: wait
    action: core.sleep
    input: {seconds: "{{ parameters.seconds }}"}
"""

FAN = """\
label: Three sleeps at once
version: "1"
tasks:
  - name: naps
    action: core.sleep
    with_items: "{{ [0.3, 0.3, 0.3] }}"
    input: {seconds: "{{ item }}"}
"""


def _pack(root: Path, policy: str, extra: dict[str, str] | None = None) -> Path:
    pack = root / "lim"
    (pack / "workflows").mkdir(parents=True, exist_ok=True)
    (pack / "policies").mkdir(exist_ok=True)
    (pack / "pack.yaml").write_text('ref: lim\nversion: "1"\n')
    (pack / "workflows" / "hold.yaml").write_text(HOLD)
    (pack / "workflows" / "fan.yaml").write_text(FAN)
    (pack / "policies" / "limit.yaml").write_text(textwrap.dedent(policy))
    for rel, text in (extra or {}).items():
        (pack / rel).write_text(textwrap.dedent(text))
    return pack


def _rows(conn: psycopg.Connection, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql.encode(), params).fetchall()


def _max_overlap(spans: list[tuple[datetime, datetime]]) -> int:
    """Most intervals open at one instant (an end at t closes before a start at t)."""
    points = sorted(
        [(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda p: (p[0], p[1])
    )
    best = now = 0
    for _, step in points:
        now += step
        best = max(best, now)
    return best


def _slots(conn: psycopg.Connection) -> dict[str, int]:
    return {row["key"]: row["used"] for row in _rows(conn, "SELECT * FROM attune.concurrency_slot")}


def test_a_delay_policy_never_runs_more_than_two_and_finishes_them_all(
    conn: psycopg.Connection, tmp_path: Path, worker_thread: Callable[..., object]
) -> None:
    packs.register(
        conn,
        _pack(
            tmp_path,
            """\
            name: two_at_a_time
            resource_ref: lim.hold
            policy_type: action.concurrency
            parameters: {threshold: 2, action: delay}
            """,
        ),
    )
    ids = [start(conn, "lim.hold") for _ in range(7)]
    flags = _rows(
        conn, "SELECT id, policy_slot, delayed FROM attune.workflow_execution ORDER BY id"
    )
    assert [(r["policy_slot"], r["delayed"]) for r in flags] == [(True, False)] * 2 + [
        (False, True)
    ] * 5
    for _ in range(3):
        worker_thread()
    rows = [wait_done(conn, i) for i in ids]
    assert all(r["status"] == "succeeded" for r in rows), [r["error"] for r in rows]
    assert _max_overlap([(r["started_at"], r["finished_at"]) for r in rows]) == 2
    # Waiters start in arrival order (equal priority), the slot handed on at each finish.
    by_start = [r["id"] for r in sorted(rows, key=lambda r: r["started_at"])]
    assert by_start[2:] == sorted(by_start[2:])
    assert _slots(conn) == {"": 0}
    usage = _rows(conn, "SELECT * FROM attune.concurrency_usage")
    assert (usage[0]["threshold"], usage[0]["used"], usage[0]["waiting"]) == (2, 0, 0)


def test_delayed_executions_start_by_priority_then_arrival(
    conn: psycopg.Connection, tmp_path: Path, worker_thread: Callable[..., object]
) -> None:
    packs.register(
        conn,
        _pack(
            tmp_path,
            """\
            name: one
            resource_ref: lim.hold
            policy_type: action.concurrency
            parameters: {threshold: 1}
            """,
        ),
    )
    first = start(conn, "lim.hold")
    late = [
        int(row[0])
        for prio in (5, 0, 5, 0)
        if (
            row := conn.execute(
                "SELECT attune.start_execution('lim.hold', '{}', NULL, %s)", (prio,)
            ).fetchone()
        )
    ]
    worker_thread()
    rows = [wait_done(conn, i) for i in [first, *late]]
    assert all(r["status"] == "succeeded" for r in rows)
    order = [r["id"] for r in sorted(rows, key=lambda r: r["started_at"])]
    assert order == [first, late[1], late[3], late[0], late[2]]


def test_a_cancel_policy_cancels_overlaps_with_a_reason(
    conn: psycopg.Connection, tmp_path: Path, worker_thread: Callable[..., object]
) -> None:
    packs.register(
        conn,
        _pack(
            tmp_path,
            """\
            name: only_one
            resource_ref: lim.hold
            policy_type: action.concurrency
            parameters: {threshold: 1, action: cancel}
            """,
        ),
    )
    runs = start(conn, "lim.hold", {"seconds": 0.5})
    overlaps = [start(conn, "lim.hold") for _ in range(3)]
    for overlap in overlaps:
        row = wait_done(conn, overlap)
        assert row["status"] == "canceled"
        assert row["error"]["type"] == "ConcurrencyPolicy"
        assert "canceled by concurrency policy lim.only_one" in row["error"]["message"]
        assert row["started_at"] is None  # never ran
    worker_thread()
    assert wait_done(conn, runs)["status"] == "succeeded"
    # The slot is free again: the next one runs.
    again = start(conn, "lim.hold", {"seconds": 0})
    assert wait_done(conn, again)["status"] == "succeeded"
    assert _slots(conn) == {"": 0}


def test_an_attr_policy_limits_each_value_on_its_own(
    conn: psycopg.Connection, tmp_path: Path, worker_thread: Callable[..., object]
) -> None:
    packs.register(
        conn,
        _pack(
            tmp_path,
            """\
            name: per_env
            resource_ref: lim.hold
            policy_type: action.concurrency.attr
            parameters: {threshold: 1, action: delay, attributes: [env]}
            """,
        ),
    )
    a1 = start(conn, "lim.hold", {"env": "a"})
    a2 = start(conn, "lim.hold", {"env": "a"})
    b1 = start(conn, "lim.hold", {"env": "b"})
    prod = start(conn, "lim.hold")  # the default env: prod
    prod_explicit = start(conn, "lim.hold", {"env": "prod"})
    delayed = {
        r["id"]: r["delayed"]
        for r in _rows(conn, "SELECT id, delayed FROM attune.workflow_execution")
    }
    assert delayed == {a1: False, a2: True, b1: False, prod: False, prod_explicit: True}
    assert _slots(conn) == {'["a"]': 1, '["b"]': 1, '["prod"]': 1}
    worker_thread()
    rows = {i: wait_done(conn, i) for i in (a1, a2, b1, prod, prod_explicit)}
    assert all(r["status"] == "succeeded" for r in rows.values())
    assert rows[a2]["started_at"] >= rows[a1]["finished_at"]
    assert _slots(conn) == {'["a"]': 0, '["b"]': 0, '["prod"]': 0}


def test_an_action_policy_limits_running_tasks_in_any_workflow(
    conn: psycopg.Connection, tmp_path: Path, worker_thread: Callable[..., object]
) -> None:
    packs.register(
        conn,
        _pack(
            tmp_path,
            """\
            name: one_nap
            resource_ref: core.sleep
            policy_type: action.concurrency
            parameters: {threshold: 1, action: delay}
            """,
        ),
    )
    fans = [start(conn, "lim.fan") for _ in range(2)]
    alone = start(conn, "core.sleep", {"seconds": 0.2})
    for _ in range(2):
        worker_thread(concurrency=8)
    for execution in [*fans, alone]:
        row = wait_done(conn, execution)
        assert row["status"] == "succeeded", row["error"]
    spans = [
        (r["started_at"], r["finished_at"])
        for r in _rows(conn, "SELECT * FROM attune.task_execution WHERE action_ref = 'core.sleep'")
    ]
    assert len(spans) == 7
    assert _max_overlap(spans) == 1
    assert _slots(conn) == {"": 0}


def test_an_action_cancel_policy_cancels_the_task_without_running_it(
    conn: psycopg.Connection, tmp_path: Path, worker_thread: Callable[..., object]
) -> None:
    packs.register(
        conn,
        _pack(
            tmp_path,
            """\
            name: one_nap
            resource_ref: core.sleep
            policy_type: action.concurrency
            parameters: {threshold: 1, action: cancel}
            """,
        ),
    )
    first = start(conn, "core.sleep", {"seconds": 0.5})
    second = start(conn, "core.sleep", {"seconds": 0.5})
    worker_thread()
    assert wait_done(conn, first)["status"] == "succeeded"
    row = wait_done(conn, second)
    assert row["status"] == "canceled"
    (task,) = _rows(
        conn, "SELECT * FROM attune.task_execution WHERE workflow_execution_id = %s", (second,)
    )
    assert task["status"] == "canceled"
    assert "canceled by concurrency policy lim.one_nap" in task["error"]["message"]
    assert _slots(conn) == {"": 0}


def test_repair_recounts_the_slots_and_lets_waiters_of_a_removed_policy_go(
    conn: psycopg.Connection, tmp_path: Path, worker_thread: Callable[..., object]
) -> None:
    pack = _pack(
        tmp_path,
        """\
        name: one
        resource_ref: lim.hold
        policy_type: action.concurrency
        parameters: {threshold: 1}
        """,
    )
    packs.register(conn, pack)
    ids = [start(conn, "lim.hold", {"seconds": 0}) for _ in range(3)]
    conn.execute("UPDATE attune.concurrency_slot SET used = 40")  # a corrupted counter
    conn.execute("SELECT attune.policy_repair()")
    assert _slots(conn) == {"": 1}
    # Re-registering without the policy frees every waiter.
    (pack / "policies" / "limit.yaml").unlink()
    packs.register(conn, pack)
    assert not any(
        r["delayed"] for r in _rows(conn, "SELECT delayed FROM attune.workflow_execution")
    )
    worker_thread()
    assert all(wait_done(conn, i)["status"] == "succeeded" for i in ids)


def test_raising_the_threshold_by_re_registration_starts_waiters(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    policy = """\
        name: few
        resource_ref: lim.hold
        policy_type: action.concurrency
        parameters: {{threshold: {n}}}
        """
    packs.register(conn, _pack(tmp_path, policy.format(n=1)))
    for _ in range(4):
        start(conn, "lim.hold")
    waiting = "SELECT count(*) FROM attune.workflow_execution WHERE delayed"
    assert conn.execute(waiting).fetchone() == (3,)
    packs.register(conn, _pack(tmp_path, policy.format(n=3)))
    assert conn.execute(waiting).fetchone() == (1,)
    assert _slots(conn) == {"": 3}


def test_retrying_a_failed_execution_needs_a_free_slot(
    conn: psycopg.Connection, tmp_path: Path, worker_thread: Callable[..., object]
) -> None:
    packs.register(
        conn,
        _pack(
            tmp_path,
            """\
            name: one
            resource_ref: lim.hold
            policy_type: action.concurrency
            parameters: {threshold: 1}
            """,
        ),
    )
    worker_thread()
    bad = start(conn, "lim.hold", {"seconds": -1})  # core.sleep refuses: the task fails
    assert wait_done(conn, bad)["status"] == "failed"
    busy = start(conn, "lim.hold", {"seconds": 30})
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="at its threshold"):
        conn.execute("SELECT attune.retry_execution(%s)", (bad,))
    conn.execute("SELECT attune.cancel_execution(%s, 'cancel_running')", (busy,))
    assert wait_done(conn, busy)["status"] == "canceled"
    assert _slots(conn) == {"": 0}
