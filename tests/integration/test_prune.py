"""Retention: attune.prune / attune-pg prune delete old finished executions with all that
belongs to them, in batches, and nothing else; safe with workers running."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb

from attune_pg import db
from attune_pg.cli.main import cli
from tests.helpers import start, wait_done


def _count(conn: psycopg.Connection, sql: str, *args: object) -> int:
    row = conn.execute(sql.encode(), args).fetchone()
    assert row is not None
    return int(row[0])


def _footprint(conn: psycopg.Connection, root: int) -> dict[str, int]:
    """Rows that belong to a root execution's family, per table."""
    family = "(SELECT %s UNION ALL SELECT id FROM attune.workflow_execution WHERE root_id = %s)"
    return {
        "executions": _count(
            conn, f"SELECT count(*) FROM attune.workflow_execution WHERE id IN {family}", root, root
        ),
        "tasks": _count(
            conn,
            f"SELECT count(*) FROM attune.task_execution WHERE workflow_execution_id IN {family}",
            root,
            root,
        ),
        "states": _count(
            conn,
            f"SELECT count(*) FROM attune.task_state WHERE workflow_execution_id IN {family}",
            root,
            root,
        ),
        "events": _count(
            conn,
            f"SELECT count(*) FROM attune.execution_event WHERE workflow_execution_id IN {family}",
            root,
            root,
        ),
        "inquiries": _count(
            conn,
            f"SELECT count(*) FROM attune.inquiry WHERE workflow_execution_id IN {family}",
            root,
            root,
        ),
        "secrets": _count(
            conn,
            "SELECT count(*) FROM attune.kv WHERE key LIKE 'execution/%%'"
            f" AND split_part(key, '/', 2) IN (SELECT f::text FROM {family} f(f))",
            root,
            root,
        ),
    }


def _age(conn: psycopg.Connection, ids: list[int], days: int = 40) -> None:
    conn.execute(
        "UPDATE attune.workflow_execution SET finished_at = now() - make_interval(days => %s)"
        " WHERE id = ANY(%s)",
        (days, ids),
    )


def _finished_history(  # type: ignore[no-untyped-def]
    conn: psycopg.Connection, worker_thread, register
) -> tuple[dict[str, int], Any]:
    register("opspack")
    register("examples")
    register("secretflow")
    worker = worker_thread()
    family = start(conn, "opspack.family")
    ok = start(conn, "opspack.mixed")
    bad = start(conn, "opspack.mixed", {"code": 1})
    secret = start(conn, "secretflow.login", {"user": "ada", "password": "hunter2hunter2"})
    approval = start(conn, "examples.approval")
    deadline = time.monotonic() + 30
    while not _count(
        conn, "SELECT count(*) FROM attune.inquiry WHERE workflow_execution_id = %s", approval
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (inquiry,) = conn.execute(
        "SELECT id FROM attune.inquiry WHERE workflow_execution_id = %s", (approval,)
    ).fetchone()  # type: ignore[misc]
    conn.execute("SELECT attune.respond_inquiry(%s, '{\"approved\": true}')", (inquiry,))
    rows = {
        name: wait_done(conn, i, timeout=60)
        for name, i in dict(family=family, ok=ok, bad=bad, secret=secret, approval=approval).items()
    }
    assert {n: r["status"] for n, r in rows.items()} == {
        "family": "succeeded",
        "ok": "succeeded",
        "bad": "failed",
        "secret": "succeeded",
        "approval": "succeeded",
    }
    return {name: row["id"] for name, row in rows.items()}, worker


def test_prune_deletes_old_families_whole_and_keeps_everything_else(
    conn: psycopg.Connection, worker_thread, register
) -> None:  # type: ignore[no-untyped-def]
    old, worker = _finished_history(conn, worker_thread, register)
    recent = start(conn, "opspack.mixed")
    wait_done(conn, recent)
    _age(conn, list(old.values()))
    conn.execute("INSERT INTO attune.kv (key, value) VALUES ('execution/notes', '\"mine\"')")
    footprints = {name: _footprint(conn, i) for name, i in old.items()}
    assert footprints["family"]["executions"] == 2  # root and child
    assert footprints["approval"]["inquiries"] == 1
    assert footprints["secret"]["secrets"] == 1
    kept = _footprint(conn, recent)

    # A root whose child is still live is kept, however old. (A worker would cancel a child
    # under an ended root at once, so this one is made with the worker stopped.)
    live_family = start(conn, "opspack.mixed")
    wait_done(conn, live_family)
    worker.request_stop()
    deadline = time.monotonic() + 20
    while _count(conn, "SELECT count(*) FROM attune.worker WHERE stopped_at IS NULL"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (task_id,) = conn.execute(
        "SELECT min(id) FROM attune.task_execution WHERE workflow_execution_id = %s",
        (live_family,),
    ).fetchone()  # type: ignore[misc]
    conn.execute(
        "INSERT INTO attune.workflow_execution (workflow_ref, parent_task_id, root_id, depth)"
        " VALUES ('examples.approval', %s, %s, 1)",  # waits for an answer: stays live
        (task_id, live_family),
    )
    _age(conn, [live_family])

    preview = CliRunner().invoke(
        cli, ["prune", "--older-than", "30d", "--dry-run", "--dsn", conn.info.dsn]
    )
    assert preview.exit_code == 0, preview.output
    assert preview.output.startswith("would prune 5 executions (1 child executions,")
    assert _footprint(conn, old["ok"]) == footprints["ok"]  # a dry run deletes nothing

    done = CliRunner().invoke(
        cli, ["prune", "--older-than", "30d", "--batch", "2", "--dsn", conn.info.dsn]
    )
    assert done.exit_code == 0, done.output
    assert done.output.startswith("pruned 5 executions and events in ")
    assert done.stderr_bytes in (None, b"")  # no progress unless asked or a terminal
    for name, execution_id in old.items():
        assert set(_footprint(conn, execution_id).values()) == {0}, name
    assert _footprint(conn, recent) == kept
    assert (
        _count(
            conn, "SELECT count(*) FROM attune.workflow_execution WHERE root_id = %s", live_family
        )
        == 1
    )
    assert (
        _count(conn, "SELECT count(*) FROM attune.workflow_execution WHERE id = %s", live_family)
        == 1
    )
    assert _count(conn, "SELECT count(*) FROM attune.kv WHERE key = 'execution/notes'") == 1


def test_prune_by_status_in_batches_and_from_sql(
    conn: psycopg.Connection, register, worker_thread
) -> None:  # type: ignore[no-untyped-def]
    register("opspack")
    worker_thread()
    ids = [start(conn, "opspack.mixed", {"code": i % 2, "items": []}) for i in range(10)]
    rows = [wait_done(conn, i, timeout=60) for i in ids]
    _age(conn, ids)
    failed = [r["id"] for r in rows if r["status"] == "failed"]
    assert len(failed) == 5
    # One batch per call: the DBA (or pg_cron) loops until it returns less than the batch.
    assert _count(conn, "SELECT attune.prune('30 days', 2, ARRAY['failed'])") == 2
    assert _count(conn, "SELECT attune.prune('30 days', 2, ARRAY['failed'])") == 2
    assert _count(conn, "SELECT attune.prune('30 days', 2, ARRAY['failed'])") == 1
    assert _count(conn, "SELECT attune.prune('30 days', 2, ARRAY['failed'])") == 0
    assert (
        _count(conn, "SELECT count(*) FROM attune.workflow_execution WHERE id = ANY(%s)", failed)
        == 0
    )
    assert _count(conn, "SELECT attune.prune('41 days')") == 0  # not old enough
    conn.execute("CALL attune.prune_all('30 days', 2, NULL, 0.5)")  # every batch, committed
    assert _count(conn, "SELECT count(*) FROM attune.workflow_execution") == 0
    assert _count(conn, "SELECT count(*) FROM attune.execution_event") == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("SELECT attune.prune('-1 day')", "older_than must be a positive interval"),
        ("SELECT attune.prune('1 day', 0)", "batch must be between 1 and 100000"),
        (
            "SELECT attune.prune('1 day', 10, ARRAY['running'])",
            "status 'running' is not a finished",
        ),
    ],
)
def test_prune_refuses_bad_arguments(conn: psycopg.Connection, call: str, message: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        conn.execute(call.encode())


def test_prune_cli_refuses_bad_options(dsn: str) -> None:
    bad_age = CliRunner().invoke(cli, ["prune", "--older-than", "30x", "--dsn", dsn])
    assert bad_age.exit_code == 2
    assert "--older-than '30x': expected a number with a unit" in bad_age.output
    bad_status = CliRunner().invoke(
        cli, ["prune", "--older-than", "1d", "--status", "running", "--dsn", dsn]
    )
    assert bad_status.exit_code == 2 and "'running' is not one of" in bad_status.output


def test_only_the_owner_may_prune(conn: psycopg.Connection) -> None:
    for role in ("attune_reader", "attune_submitter", "attune_worker"):
        for function in ("attune.prune(interval, integer, text[])",):
            allowed = conn.execute(
                "SELECT has_function_privilege(%s, %s, 'EXECUTE')", (role, function)
            ).fetchone()
            assert allowed == (False,), role
        allowed = conn.execute(
            "SELECT has_function_privilege(%s,"
            " 'attune.prune_all(interval, integer, text[], double precision)', 'EXECUTE')",
            (role,),
        ).fetchone()
        assert allowed == (False,), role


def test_prune_while_workers_run(
    conn: psycopg.Connection, dsn: str, register, worker_thread
) -> None:  # type: ignore[no-untyped-def]
    """Pruning old history in a loop while a worker runs new executions: every new one
    succeeds, every old one goes, no error either side."""
    register("opspack")
    worker_thread(concurrency=8)
    old = [start(conn, "opspack.mixed") for _ in range(60)]
    for i in old:
        wait_done(conn, i, timeout=60)
    _age(conn, old)
    errors: list[BaseException] = []
    deleted: list[int] = []

    def pruner() -> None:
        try:
            with db.connect(dsn) as own:
                while True:
                    n = _count(own, "SELECT attune.prune('30 days', 3)")
                    deleted.append(n)
                    if n == 0:
                        return
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=pruner)
    thread.start()
    new = [start(conn, "opspack.mixed") for _ in range(30)]
    thread.join(timeout=60)
    assert not errors and not thread.is_alive()
    assert sum(deleted) == 60
    for i in new:
        assert wait_done(conn, i, timeout=60)["status"] == "succeeded"
    assert (
        _count(conn, "SELECT count(*) FROM attune.workflow_execution WHERE id = ANY(%s)", old) == 0
    )


def test_prune_takes_old_events_and_enforcements_with_their_executions(
    conn: psycopg.Connection, register, worker_thread
) -> None:  # type: ignore[no-untyped-def]
    register("shop")
    worker_thread()
    matched = _count(conn, "SELECT attune.emit_event('shop.order_placed', %s)", Jsonb(_VIP_ORDER))
    unmatched = _count(
        conn, "SELECT attune.emit_event('shop.order_placed', '{\"id\": 2, \"total\": 5}')"
    )
    deadline = time.monotonic() + 30
    while _count(
        conn,
        "SELECT count(*) FROM attune.enforcement f JOIN attune.workflow_execution e"
        " ON e.id = f.workflow_execution_id WHERE f.event_id = %s AND e.status = 'succeeded'",
        matched,
    ) < 1 or _count(conn, "SELECT count(*) FROM attune.event WHERE status = 'pending'"):
        assert time.monotonic() < deadline, "the event did not run its rule"
        time.sleep(0.05)
    (execution,) = conn.execute(
        "SELECT workflow_execution_id FROM attune.enforcement WHERE event_id = %s", (matched,)
    ).fetchone()  # type: ignore[misc]
    recent = _count(
        conn, "SELECT attune.emit_event('shop.order_placed', '{\"id\": 3, \"total\": 7}')"
    )
    _age(conn, [execution])
    conn.execute(
        "UPDATE attune.event SET created_at = now() - interval '40 days' WHERE id = ANY(%s)",
        ([matched, unmatched],),
    )
    # --status keeps events: only a prune of every status may decide an event is unneeded.
    assert _count(conn, "SELECT attune.prune('30 days', 10, ARRAY['failed'])") == 0
    assert _count(conn, "SELECT attune.prune('30 days', 10)") == 3  # 1 execution, 2 events
    assert _count(conn, "SELECT attune.prune('30 days', 10)") == 0
    assert (
        _count(conn, "SELECT count(*) FROM attune.event WHERE id = ANY(%s)", [matched, unmatched])
        == 0
    )
    assert _count(conn, "SELECT count(*) FROM attune.enforcement WHERE event_id = %s", matched) == 0
    assert (
        _count(conn, "SELECT count(*) FROM attune.workflow_execution WHERE id = %s", execution) == 0
    )
    assert _count(conn, "SELECT count(*) FROM attune.event WHERE id = %s", recent) == 1


_VIP_ORDER = {"id": 1, "total": 500, "tags": ["vip"]}
