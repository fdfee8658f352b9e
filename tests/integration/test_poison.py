"""No poison pills (issue 7): one bad input, one tenant or one role never stops or robs the
others. Each defect the issue reproduced has a test here, on a real PostgreSQL with a
worker: JSON bounds where values enter (and quarantine of rows a worker cannot decode),
the spawn budget, cancel stopping a whole tree at once, signed secret tokens, secret
parameters that never sit in clear, bounded priorities and fair claims."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb

from attune_pg.cli import cli
from attune_pg.errors import SpecError
from attune_pg.store import kv
from tests.helpers import TERMINAL, start, tasks, wait_done

DEPTH = 5000
DEEP_TEXT = "[" * DEPTH + "]" * DEPTH
DEEP_PARAMETERS = '{"name": "x", "deep": ' + DEEP_TEXT + "}"
PASSWORD = "hunter2-correct-horse"

Register = Callable[[Path | str], None]
StartWorker = Callable[..., object]


def _status(conn: psycopg.Connection, execution_id: int) -> tuple[str, Any]:
    """(status, error) without reading the row's other (perhaps undecodable) values."""
    row = conn.execute(
        "SELECT status, error FROM attune.workflow_execution WHERE id = %s", (execution_id,)
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def _wait_status(conn: psycopg.Connection, execution_id: int, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while (found := _status(conn, execution_id))[0] not in TERMINAL:
        assert time.monotonic() < deadline, f"execution {execution_id} still {found[0]}"
        time.sleep(0.05)
    return found


def _set(conn: psycopg.Connection, name: str, value: int) -> None:
    conn.execute("UPDATE attune.setting SET value = %s WHERE name = %s", (Jsonb(value), name))


def _count(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM attune.workflow_execution").fetchone()
    assert row is not None
    return int(row[0])


# ----------------------------------------------------------------- JSON bounds


def test_deep_or_huge_parameters_are_refused_where_they_enter(
    conn: psycopg.Connection, register: Register
) -> None:
    register("examples")
    deep = r"parameters of workflow 'examples.hello_join': nested deeper than 100 levels"
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match=deep):
        conn.execute(
            "SELECT attune.start_execution('examples.hello_join', %s::jsonb)", (DEEP_PARAMETERS,)
        )
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match=r"\(setting json_max_depth\)"):
        conn.execute(
            "INSERT INTO attune.workflow_execution (workflow_ref, parameters)"
            " VALUES ('examples.hello_join', %s::jsonb)",
            (DEEP_PARAMETERS,),
        )
    huge = json.dumps({"name": "x" * (4 * 1024 * 1024)})
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match=r"setting json_max_bytes"):
        conn.execute(
            "INSERT INTO attune.workflow_execution (workflow_ref, parameters)"
            " VALUES ('examples.hello_join', %s::jsonb)",
            (huge,),
        )
    # At the limit is fine: 100 levels.
    ok = '{"name": "x", "deep": ' + "[" * 99 + "]" * 99 + "}"
    conn.execute("SELECT attune.start_execution('examples.hello_join', %s::jsonb)", (ok,))
    assert _count(conn) == 1
    # The owner moves the limit with one UPDATE; SQL reads it at once.
    _set(conn, "json_max_depth", 50)
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="deeper than 50 levels"):
        conn.execute("SELECT attune.start_execution('examples.hello_join', %s::jsonb)", (ok,))
    assert conn.execute("SELECT attune.setting_int('json_max_depth')").fetchone() == (50,)
    with pytest.raises(psycopg.errors.UndefinedObject, match="unknown setting 'nope'"):
        conn.execute("SELECT attune.setting_int('nope')")


def test_kv_values_are_bounded(conn: psycopg.Connection, dsn: str) -> None:
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="kv value of 'k'"):
        conn.execute("INSERT INTO attune.kv (key, value) VALUES ('k', %s::jsonb)", (DEEP_TEXT,))
    result = CliRunner().invoke(cli, ["kv", "set", "k", DEEP_TEXT, "--json", "--dsn", dsn])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "json_max_depth" in result.output or "not valid JSON" in result.output
    assert conn.execute("SELECT count(*) FROM attune.kv").fetchone() == (0,)


def test_a_row_the_worker_cannot_decode_fails_alone(
    conn: psycopg.Connection, register: Register, worker_thread: StartWorker
) -> None:
    """Issue 7, item 1: a nested `parameters` value stopped every start, for everyone.
    Such a row can still exist (written before the bounds, or past them by the owner):
    the worker quarantines it and starts everything else."""
    register("examples")
    _set(conn, "json_max_depth", 100_000)
    row = conn.execute(
        "SELECT attune.start_execution('examples.hello_join', %s::jsonb)", (DEEP_PARAMETERS,)
    ).fetchone()
    assert row is not None
    bad = int(row[0])
    _set(conn, "json_max_depth", 100)
    before = start(conn, "examples.hello_join", {"name": "before"})
    worker_thread()
    after = start(conn, "examples.hello_join", {"name": "after"})
    for execution_id in (before, after):
        assert wait_done(conn, execution_id)["status"] == "succeeded"
    status, error = _wait_status(conn, bad)
    assert status == "failed" and error["type"] == "Quarantined"
    assert "nested too deeply" in error["message"] and "json_max_depth" in error["message"]


def test_inquiry_answers_are_bounded_and_who_is_required(
    conn: psycopg.Connection, register: Register, worker_thread: StartWorker
) -> None:
    register("hostile")
    worker_thread()
    execution_id = start(conn, "hostile.ask")
    inquiry = _inquiry_of(conn, execution_id)
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match=f"inquiry {inquiry} response"):
        conn.execute("SELECT attune.respond_inquiry(%s, %s::jsonb)", (inquiry, DEEP_TEXT))
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="who must name"):
        conn.execute("SELECT attune.respond_inquiry(%s, '{}', NULL)", (inquiry,))
    assert conn.execute(
        "SELECT attune.respond_inquiry(%s, '{\"ok\": 1}', 'ada')", (inquiry,)
    ).fetchone() == ("responded",)
    assert wait_done(conn, execution_id)["status"] == "succeeded"


def _inquiry_of(conn: psycopg.Connection, execution_id: int) -> int:
    deadline = time.monotonic() + 20
    while True:
        row = conn.execute(
            "SELECT id FROM attune.inquiry WHERE workflow_execution_id = %s", (execution_id,)
        ).fetchone()
        if row:
            return int(row[0])
        assert time.monotonic() < deadline, "no inquiry"
        time.sleep(0.05)


def test_an_answer_the_worker_cannot_decode_stops_only_its_execution(
    conn: psycopg.Connection, register: Register, worker_thread: StartWorker
) -> None:
    """Issue 7, item 2: a nested inquiry answer crash-looped the control pass: other
    answers were never processed and a cancel stuck in `canceling`."""
    register("hostile")
    worker_thread()
    poisoned, other, doomed = (start(conn, "hostile.ask") for _ in range(3))
    inquiries = [_inquiry_of(conn, e) for e in (poisoned, other, doomed)]
    # An answer past the bounds, as an owner's hand-written SQL could store it.
    conn.execute(
        "UPDATE attune.inquiry SET status = 'responded', response = %s::jsonb,"
        " responded_by = 'owner', responded_at = now() WHERE id = %s",
        (DEEP_TEXT, inquiries[0]),
    )
    conn.execute("SELECT pg_notify('attune_control', '')")
    conn.execute("SELECT attune.respond_inquiry(%s, '{\"ok\": true}')", (inquiries[1],))
    conn.execute("SELECT attune.cancel_execution(%s)", (doomed,))
    assert wait_done(conn, other)["status"] == "succeeded"
    assert wait_done(conn, doomed)["status"] == "canceled"
    status, _ = _wait_status(conn, poisoned)
    assert status == "failed"
    (task,) = tasks(conn, poisoned)
    assert task["error"]["type"] == "Quarantined"
    assert f"inquiry {inquiries[0]}'s response cannot be processed" in task["error"]["message"]


def test_results_are_bounded_in_depth(
    conn: psycopg.Connection, register: Register, worker_thread: StartWorker
) -> None:
    register("hostile")
    conn.execute(
        "INSERT INTO attune.workflow_execution (workflow_ref, parameters)"
        " SELECT 'hostile.deep_result', jsonb_build_object('depth', d)"
        "   FROM unnest(ARRAY[50, 150, 5000]) d"
    )
    worker_thread()
    ids = [row[0] for row in conn.execute("SELECT id FROM attune.workflow_execution ORDER BY id")]
    shallow, deeper, deepest = (wait_done(conn, i) for i in ids)
    assert shallow["status"] == "succeeded"
    for row in (deeper, deepest):
        assert row["status"] == "failed"
        (task,) = tasks(conn, row["id"])
        assert task["result"] is None
        assert task["error"]["type"] in ("ResultTooDeep", "ResultNotJSON"), task["error"]
    (task,) = tasks(conn, deeper["id"])
    assert task["error"] == {
        "type": "ResultTooDeep",
        "message": "result is nested deeper than 100 levels (setting json_max_depth)",
    }


# ----------------------------------------------------------------- bounded spawning


def test_the_spawn_budget_stops_a_self_calling_fan_out(
    conn: psycopg.Connection,
    register: Register,
    worker_thread: StartWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 7, item 3: a with-items task calling its own workflow grew without bound."""
    with caplog.at_level(logging.WARNING, logger="attune_pg.packs"):
        register("hostile")
    assert "workflow 'hostile.bomb' task 'spawn' calls 'hostile.bomb'" in caplog.text
    _set(conn, "max_descendants", 40)
    worker_thread()
    root = start(conn, "hostile.bomb")
    assert wait_done(conn, root, timeout=60)["status"] == "failed"
    # Nothing is left running, and the tree stayed near its budget (one batch may
    # overshoot per concurrent transaction; a single worker does not).
    assert conn.execute(
        "SELECT count(*) FROM attune.workflow_execution WHERE status <> ALL(%s)", (list(TERMINAL),)
    ).fetchone() == (0,)
    assert _count(conn) <= 41
    budget = conn.execute(
        "SELECT executions FROM attune.execution_budget WHERE root_id = %s", (root,)
    ).fetchone()
    assert budget == (_count(conn) - 1,)
    refused = conn.execute(
        "SELECT count(*) FROM attune.task_execution WHERE error ->> 'type' = 'SpawnBudget'"
    ).fetchone()
    assert refused is not None and refused[0] > 0


def test_task_rows_are_budgeted_too(
    conn: psycopg.Connection, register: Register, worker_thread: StartWorker
) -> None:
    register("hostile")
    _set(conn, "max_task_rows", 100)
    worker_thread()
    row = wait_done(conn, start(conn, "hostile.fanout", {"count": 101, "seconds": 0}))
    assert row["status"] == "failed" and row["error"]["type"] == "SpawnBudget"
    assert "setting max_task_rows" in row["error"]["message"]
    assert tasks(conn, row["id"]) == []
    row = wait_done(conn, start(conn, "hostile.fanout", {"count": 100, "seconds": 0}))
    assert row["status"] == "succeeded"


def test_canceling_the_root_stops_all_creation_under_it_at_once(
    conn: psycopg.Connection, register: Register, worker_thread: StartWorker
) -> None:
    """Issue 7, item 3: cancel_execution(root) did not stop the growth. The count must
    stop growing within one second of the cancel."""
    register("hostile")
    worker_thread()
    root = start(conn, "hostile.bomb")
    deadline = time.monotonic() + 30
    while _count(conn) < 100:
        assert time.monotonic() < deadline, "the bomb did not grow"
        time.sleep(0.02)
    conn.execute("SELECT attune.cancel_execution(%s)", (root,))
    time.sleep(1.0)
    settled = _count(conn)
    time.sleep(1.0)
    assert _count(conn) == settled
    assert wait_done(conn, root, timeout=60)["status"] == "canceled"
    deadline = time.monotonic() + 60
    while conn.execute(
        "SELECT count(*) FROM attune.workflow_execution WHERE status <> ALL(%s)", (list(TERMINAL),)
    ).fetchone() != (0,):
        assert time.monotonic() < deadline, "the tree did not end"
        time.sleep(0.1)
    # The whole tree ends canceled: no execution was quarantined on the way down (a cancel
    # that closed a with-items window on its running items alone, forgetting those waiting
    # on a child, ended the task early and failed the control pass when the children
    # reported back).
    ended = dict(
        conn.execute(
            "SELECT status, count(*) FROM attune.workflow_execution GROUP BY status"
        ).fetchall()
    )
    assert set(ended) == {"canceled"}, ended


def test_registration_warns_about_a_self_call_without_concurrency(dsn: str, tmp_path: Path) -> None:
    pack = Path(__file__).parents[1] / "fixtures" / "packs" / "hostile"
    result = CliRunner().invoke(cli, ["packs", "register", str(pack), "--dsn", dsn])
    assert result.exit_code == 0, result.output
    assert "warning: " in result.stderr and "'hostile.bomb'" in result.stderr


# ----------------------------------------------------------------- secrets


def _secret_nowhere(conn: psycopg.Connection) -> None:
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'attune'"
            " AND table_type = 'BASE TABLE' AND table_name <> 'kv'"
        )
    ]
    for name in tables:
        found = conn.execute(
            f'SELECT count(*) FROM attune."{name}" t WHERE t::text LIKE %s', (f"%{PASSWORD}%",)
        ).fetchone()
        assert found == (0,), f"the secret is in attune.{name}"


def test_forged_tokens_do_not_resolve(
    conn: psycopg.Connection, register: Register, worker_thread: StartWorker
) -> None:
    """Issue 7, item 4: a token split across two parameters and joined by a template, or
    JSON-escaped and revived by from_json, was resolved: a submitter read a secret."""
    register("hostile")
    kv.set_value(conn, "db_password", PASSWORD, secret=True)
    worker_thread()
    # The right way works, and its token is bound to its own execution and task.
    legit = wait_done(conn, start(conn, "hostile.uses_secret"))
    assert legit["status"] == "succeeded"
    (call,) = tasks(conn, legit["id"])
    assert call["result"] == {"message": "***"}
    token = call["input"]["message"]
    assert token.startswith("\u27e6secret:db_password|") and token.endswith("\u27e7")

    attacks = [
        ("hostile.join", {"a": "\u27e6secret:db_pass", "b": "word\u27e7"}),
        ("hostile.join", {"a": token[:20], "b": token[20:]}),  # another task's token
        ("hostile.revive", {"text": json.dumps("\u27e6secret:db_password\u27e7")}),
        ("hostile.revive", {"text": json.dumps(token)}),  # escaped: \u27e6...
    ]
    for ref, parameters in attacks:
        assert "\u27e6secret:" not in json.dumps(parameters)  # not refused as a token
        row = wait_done(conn, start(conn, ref, parameters))
        assert row["status"] == "failed", (ref, parameters, row["output"])
        failed = [t for t in tasks(conn, row["id"]) if t["status"] == "failed"]
        assert failed and "is not a valid secret token for this task" in str(failed[0]["error"]), (
            failed
        )
    _secret_nowhere(conn)


def test_secret_parameters_never_sit_in_clear(
    conn: psycopg.Connection, register: Register, worker_thread: StartWorker
) -> None:
    """Issue 7, item 5: a secret parameter stayed in clear in `parameters` when any
    parameter failed validation. Now the INSERT itself moves it to kv."""
    register("secretflow")
    invalid = start(conn, "secretflow.login", {"user": 7, "password": PASSWORD})
    short = start(conn, "secretflow.login", {"user": "ada", "password": "short"})
    # Before any worker: the row holds a reference, kv the value.
    row = conn.execute(
        "SELECT parameters FROM attune.workflow_execution WHERE id = %s", (invalid,)
    ).fetchone()
    assert row is not None
    assert row[0]["password"] == f"\u27e6secret:execution/{invalid}/password\u27e7"
    assert kv.get_value(conn, f"execution/{invalid}/password") == (PASSWORD, True)
    _secret_nowhere(conn)
    worker_thread()
    for execution_id in (invalid, short):
        assert wait_done(conn, execution_id)["status"] == "failed"
    failed = wait_done(conn, short)
    assert "password" in failed["error"]["message"] and "short" not in json.dumps(
        failed, default=str
    )
    _secret_nowhere(conn)
    assert conn.execute(
        "SELECT count(*) FROM attune.execution_event WHERE data::text LIKE '%short%'"
    ).fetchone() == (0,)
    # An idempotent repeat that conflicts leaves nothing behind in kv.
    statement = (
        "INSERT INTO attune.workflow_execution (workflow_ref, parameters, idempotency_key)"
        " VALUES ('secretflow.login', %s, 'once')"
        " ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
    )
    conn.execute(statement, (Jsonb({"user": "a", "password": "first-password"}),))
    conn.execute(statement, (Jsonb({"user": "a", "password": "second-password"}),))
    values = [v for (v,) in conn.execute("SELECT value FROM attune.kv")]
    assert "second-password" not in values and "first-password" in values


# ----------------------------------------------------------------- priority and fairness


def test_priority_is_bounded(conn: psycopg.Connection, register: Register) -> None:
    register("examples")
    for priority in (-1_000_000, 101):
        with pytest.raises(psycopg.errors.CheckViolation, match=r"priority .* outside"):
            conn.execute(
                "SELECT attune.start_execution('examples.hello_join', '{}', NULL, %s)", (priority,)
            )
    conn.execute("SELECT attune.start_execution('examples.hello_join', '{}', NULL, -100)")
    _set(conn, "priority_min", 0)
    with pytest.raises(psycopg.errors.CheckViolation, match=r"range 0 \.\. 100"):
        conn.execute("SELECT attune.start_execution('examples.hello_join', '{}', NULL, -1)")


def test_a_big_fan_out_does_not_hold_every_slot(
    conn: psycopg.Connection, register: Register, worker_thread: StartWorker
) -> None:
    """Issue 7, item 7: one 2,000-item fan-out held every slot; a small workflow started
    afterwards waited for all of it. Claims now interleave executions: the small one
    finishes while most of the fan-out is still queued."""
    register("hostile")
    worker_thread(concurrency=8)
    big = start(conn, "hostile.fanout", {"count": 2000, "seconds": 0.05})
    deadline = time.monotonic() + 30
    while conn.execute(
        "SELECT count(*) > 8 FROM attune.task_execution WHERE workflow_execution_id = %s"
        " AND status = 'succeeded'",
        (big,),
    ).fetchone() != (True,):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    began = time.monotonic()
    small = [start(conn, "hostile.small", {"n": n}) for n in range(3)]
    for execution_id in small:
        assert wait_done(conn, execution_id, timeout=60)["status"] == "succeeded"
    waited = time.monotonic() - began
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*)"
        " FROM attune.task_execution WHERE workflow_execution_id = %s",
        (big,),
    ).fetchone()
    assert row is not None
    done, total = row
    assert total == 2000 and done < total / 2, f"{done} items had run first ({waited:.1f} s)"
    logging.getLogger(__name__).info("small workflows took %.2f s beside the fan-out", waited)
    conn.execute("SELECT attune.cancel_execution(%s, 'cancel_running')", (big,))
    assert wait_done(conn, big, timeout=60)["status"] == "canceled"


# ----------------------------------------------------------------- packs


def test_a_symlink_out_of_a_pack_is_refused(
    conn: psycopg.Connection, register: Register, tmp_path: Path
) -> None:
    """Issue 7, item 8: an action file that is a symlink to a file outside its pack
    registered."""
    outside = tmp_path / "outside.yaml"
    outside.write_text("name: run\nrunner: builtin\nentry_point: noop\n")
    pack = tmp_path / "linky"
    (pack / "actions").mkdir(parents=True)
    (pack / "pack.yaml").write_text('ref: linky\nlabel: Links\nversion: "1.0.0"\n')
    (pack / "actions" / "run.yaml").symlink_to(outside)
    with pytest.raises(SpecError, match="symlink points outside the pack") as info:
        register(pack)
    assert "linky/actions/run.yaml" in str(info.value)
    assert conn.execute("SELECT count(*) FROM attune.pack WHERE ref = 'linky'").fetchone() == (0,)
    # A link inside the pack is fine.
    (pack / "actions" / "run.yaml").unlink()
    (pack / "real.yaml").write_text("name: run\nrunner: builtin\nentry_point: noop\n")
    (pack / "actions" / "run.yaml").symlink_to(pack / "real.yaml")
    register(pack)
