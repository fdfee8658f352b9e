"""Events, rules, enforcements, timers and plain-action executions against a real
PostgreSQL (docs/automation.md)."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from attune_pg import automation, db, packs
from attune_pg.errors import SpecError
from tests.helpers import start, tasks, wait_done, worker_running
from tests.integration import test_roles

login = test_roles.login  # the fixture: a LOGIN user in one of the roles

Register = Callable[[str], None]


def _emit(conn: psycopg.Connection, trigger: str, payload: dict[str, Any]) -> int:
    row = conn.execute("SELECT attune.emit_event(%s, %s)", (trigger, Jsonb(payload))).fetchone()
    assert row is not None
    return int(row[0])


def _rows(conn: psycopg.Connection, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql.encode(), params).fetchall()


def _count(conn: psycopg.Connection, sql: str, params: tuple[Any, ...] = ()) -> int:
    row = conn.execute(sql.encode(), params).fetchone()
    assert row is not None
    return int(row[0])


def _wait(what: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _pack(root: Path, name: str, files: dict[str, str]) -> Path:
    pack = root / name
    pack.mkdir(parents=True, exist_ok=True)
    (pack / "pack.yaml").write_text(f'ref: {name}\nversion: "1"\n')
    for rel, text in files.items():
        path = pack / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return pack


# ----------------------------------------------------------------- emit_event


def test_a_bad_payload_raises_naming_the_field_and_stores_nothing(
    conn: psycopg.Connection, register: Register
) -> None:
    register("shop")
    for payload, field in (
        ({"id": "seven", "total": 1}, "payload.id"),
        ({"id": 7}, "'total' is a required property"),
        ({"id": 7, "total": -1}, "payload.total"),
        ({"id": 7, "total": 1, "tags": ["ok", 3]}, "payload.tags[1]"),
    ):
        with pytest.raises(psycopg.errors.CheckViolation) as caught, conn.transaction():
            _emit(conn, "shop.order_placed", payload)
        assert field in str(caught.value), caught.value
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match=r"unknown trigger 'shop\.nope'"):
        _emit(conn, "shop.nope", {})
    assert _count(conn, "SELECT count(*) FROM attune.event") == 0


def test_hundred_events_half_matching_give_fifty_enforcements_and_executions(
    conn: psycopg.Connection, register: Register, worker_thread: Callable[..., object]
) -> None:
    register("shop")
    # Even ids are big VIP orders (match shop.big_orders); odd ones are small.
    for i in range(100):
        big = i % 2 == 0
        _emit(conn, "shop.order_placed", {"id": i, "total": 500 if big else 5, "tags": ["vip"]})
    for _ in range(3):  # three workers race for the same events
        worker_thread()
    _wait(lambda: _count(conn, "SELECT count(*) FROM attune.event WHERE status = 'pending'") == 0)
    enforcements = _rows(
        conn,
        "SELECT f.rule_ref, f.status, e.payload, x.id AS execution_id FROM attune.enforcement f"
        " JOIN attune.event e ON e.id = f.event_id"
        " JOIN attune.workflow_execution x ON x.id = f.workflow_execution_id",
    )
    assert len(enforcements) == 50
    assert _count(conn, "SELECT count(*) FROM attune.enforcement") == 50
    assert _count(conn, "SELECT count(*) FROM attune.workflow_execution") == 50
    for row in enforcements:
        assert (row["rule_ref"], row["status"]) == ("shop.big_orders", "succeeded")
        done = wait_done(conn, row["execution_id"])
        assert done["status"] == "succeeded", done["error"]
        # Parameters come from this very event (and the rule's pack config).
        assert done["parameters"] == {
            "order_id": row["payload"]["id"],
            "total": 500,
            "warehouse": "north",
        }
        assert row["payload"]["id"] % 2 == 0
        assert done["requested_by"] == "rule:shop.big_orders"
    activity = _rows(conn, "SELECT * FROM attune.rule_activity WHERE rule_ref = 'shop.big_orders'")
    assert activity[0]["enforcements"] == 50
    assert activity[0]["executions"] == 50
    assert activity[0]["failures"] == 0


def test_a_condition_that_errors_does_not_match_and_its_enforcement_says_why(
    conn: psycopg.Connection, register: Register
) -> None:
    register("shop")
    conn.execute("UPDATE attune.rule SET enabled = true WHERE ref = 'shop.broken_condition'")
    ok = _emit(conn, "shop.order_placed", {"id": 1, "total": 1, "tags": ["echo"]})
    stats = automation.process_events(conn)
    assert stats.events == 1
    (failed,) = _rows(
        conn, "SELECT * FROM attune.enforcement WHERE rule_ref = 'shop.broken_condition'"
    )
    assert failed["status"] == "failed"
    assert failed["workflow_execution_id"] is None
    assert failed["event_id"] == ok
    assert failed["error"]["type"] == "ConditionError"
    assert "region" in failed["error"]["message"]
    # The other rule of the trigger (legacy criteria, a plain action) still fired.
    (echo,) = _rows(conn, "SELECT * FROM attune.enforcement WHERE rule_ref = 'shop.echo_orders'")
    assert echo["status"] == "succeeded"
    assert _count(conn, "SELECT count(*) FROM attune.workflow_execution") == 1
    # Matching is exactly once: a second pass finds nothing to do.
    assert automation.process_events(conn).events == 0
    assert _count(conn, "SELECT count(*) FROM attune.enforcement") == 2


def test_a_rule_whose_action_is_gone_records_a_failed_enforcement(
    conn: psycopg.Connection, register: Register
) -> None:
    register("shop")
    conn.execute("UPDATE attune.workflow_definition SET enabled = false WHERE ref = 'shop.ship'")
    _emit(conn, "shop.order_placed", {"id": 1, "total": 900, "tags": ["vip"]})
    automation.process_events(conn)
    (row,) = _rows(conn, "SELECT * FROM attune.enforcement")
    assert row["status"] == "failed"
    assert "'shop.ship' is not registered or is disabled" in row["error"]["message"]


def test_a_submitter_login_emits_and_a_worker_login_matches(
    conn: psycopg.Connection, register: Register, login: Callable[[str], str]
) -> None:
    register("shop")
    with db.connect(login("attune_submitter")) as submitter:
        event_id = _emit(submitter, "shop.order_placed", {"id": 3, "total": 101, "tags": ["vip"]})
    with (
        db.connect(login("attune_reader")) as reader,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        _emit(reader, "shop.order_placed", {"id": 4, "total": 1})
    with worker_running(login("attune_worker")):
        _wait(lambda: _count(conn, "SELECT count(*) FROM attune.enforcement") == 1)
        (row,) = _rows(conn, "SELECT * FROM attune.enforcement")
        assert row["event_id"] == event_id
        done = wait_done(conn, row["workflow_execution_id"])
        assert done["status"] == "succeeded", done["error"]


# ----------------------------------------------------------------- plain actions


@pytest.fixture
def http_server() -> Iterator[str]:
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            hits.append(body.decode())
            out = json.dumps({"received": json.loads(body)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_a_plain_action_runs_on_its_own_as_a_one_task_execution(
    conn: psycopg.Connection,
    register: Register,
    worker_thread: Callable[..., object],
    http_server: str,
    tmp_path: Path,
) -> None:
    hook = _pack(
        tmp_path,
        "hook",
        {
            "triggers/ping.yaml": "name: ping\noutput: {type: object}\n",
            "rules/forward.yaml": f"""\
                trigger_ref: hook.ping
                action_ref: core.http_request
                action_params:
                  url: {http_server}
                  method: POST
                  body: "{{{{ event.payload }}}}"
            """,
        },
    )
    packs.register(conn, hook)
    worker_thread()
    inserted = start(conn, "core.echo", {"message": "hi"})
    row = conn.execute(
        "SELECT attune.start_execution('core.echo', %s)", (Jsonb({"message": "there"}),)
    ).fetchone()
    assert row is not None
    started = int(row[0])
    _emit(conn, "hook.ping", {"n": 42})
    _wait(lambda: _count(conn, "SELECT count(*) FROM attune.enforcement") == 1)
    (ruled,) = conn.execute("SELECT workflow_execution_id FROM attune.enforcement").fetchone() or ()
    for execution_id, output in (
        (inserted, {"message": "hi"}),
        (started, {"message": "there"}),
    ):
        done = wait_done(conn, execution_id)
        assert done["status"] == "succeeded", done["error"]
        assert done["output"] == output  # the action's result
        (task,) = tasks(conn, execution_id)
        assert (task["task_name"], task["action_ref"], task["input"]) == (
            "echo",
            "core.echo",
            output,
        )
    done = wait_done(conn, ruled)
    assert done["status"] == "succeeded", done["error"]
    assert done["workflow_ref"] == "core.http_request"
    assert done["output"]["status_code"] == 200
    assert done["output"]["json"] == {"received": {"n": 42}}
    # The same views as any workflow.
    summary = _rows(
        conn, "SELECT * FROM attune.workflow_execution_summary WHERE id = %s", (inserted,)
    )
    assert (summary[0]["tasks_total"], summary[0]["tasks_succeeded"]) == (1, 1)
    detail = _rows(
        conn, "SELECT * FROM attune.workflow_task_detail WHERE workflow_execution_id = %s", (ruled,)
    )
    assert detail[0]["action_ref"] == "core.http_request"


def test_a_plain_action_execution_is_validated_and_controllable(
    conn: psycopg.Connection, worker_thread: Callable[..., object]
) -> None:
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="unknown workflow or action"):
        start(conn, "core.nothing")
    bad = start(conn, "core.echo", {"volume": 11})
    slow = start(conn, "core.sleep", {"seconds": 30})
    worker_thread()
    done = wait_done(conn, bad)
    assert done["status"] == "failed"
    assert "unknown parameter 'volume'" in done["error"]["message"]
    _wait(lambda: any(t["status"] == "running" for t in tasks(conn, slow)))
    conn.execute("SELECT attune.cancel_execution(%s, 'cancel_running')", (slow,))
    assert wait_done(conn, slow)["status"] == "canceled"


# ----------------------------------------------------------------- timers


def _timer_pack(tmp_path: Path, interval: int = 1, enabled: bool = True) -> Path:
    return _pack(
        tmp_path,
        "clock",
        {
            "rules/tick.yaml": f"""\
                trigger_ref: core.intervaltimer
                trigger_params: {{unit: seconds, interval: {interval}}}
                action_ref: core.echo
                action_params: {{message: "tick {{{{ event.payload.execution_count }}}}"}}
                enabled: {str(enabled).lower()}
            """,
        },
    )


def test_overdue_timer_fires_once_for_all_its_missed_ticks_whoever_races_for_it(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    packs.register(conn, _timer_pack(tmp_path, interval=2))
    # As if no worker had run for 10.5 s: ticks at -10.5, -8.5, ..., -0.5 are due (6 ticks).
    conn.execute("UPDATE attune.timer SET next_fire_at = now() - interval '10.5 seconds'")
    barrier = threading.Barrier(4)
    fired: list[int] = []

    def race() -> None:
        with db.connect(dsn) as mine:
            barrier.wait()
            fired.append(automation.fire_timers(mine).fired)

    threads = [threading.Thread(target=race) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert sorted(fired) == [0, 0, 0, 1]
    (event,) = _rows(conn, "SELECT * FROM attune.event")
    assert event["rule_ref"] == "clock.tick"
    assert event["status"] == "processed"
    payload = event["payload"]
    assert payload["missed_ticks"] == 5
    assert payload["type"] == "interval"
    assert payload["interval_seconds"] == 2
    assert payload["execution_count"] == 1
    (timer,) = _rows(conn, "SELECT *, next_fire_at > now() AS ahead FROM attune.timer")
    assert timer["ahead"] and timer["fire_count"] == 1
    # The enforcement and the execution were written in the same transaction.
    (enforcement,) = _rows(conn, "SELECT * FROM attune.enforcement")
    (execution,) = _rows(conn, "SELECT * FROM attune.workflow_execution")
    assert enforcement["workflow_execution_id"] == execution["id"]
    assert execution["parameters"] == {"message": "tick 1"}
    # Nothing more until the next tick is due.
    assert automation.fire_timers(conn).fired == 0


def test_a_disabled_rules_timer_keeps_its_schedule_and_emits_nothing(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    packs.register(conn, _timer_pack(tmp_path, enabled=False))
    conn.execute("UPDATE attune.timer SET next_fire_at = now() - interval '3 seconds'")
    stats = automation.fire_timers(conn)
    assert (stats.fired, stats.skipped) == (0, 1)
    assert _count(conn, "SELECT count(*) FROM attune.event") == 0
    assert _count(conn, "SELECT count(*) FROM attune.timer WHERE next_fire_at > now()") == 1


def test_re_registration_keeps_an_unchanged_schedule_and_restarts_a_changed_one(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    packs.register(conn, _timer_pack(tmp_path, interval=3600))
    conn.execute("UPDATE attune.timer SET next_fire_at = '2100-01-01T00:00:00Z', fire_count = 7")
    packs.register(conn, _timer_pack(tmp_path, interval=3600))
    (timer,) = _rows(conn, "SELECT * FROM attune.timer")
    assert timer["next_fire_at"].year == 2100 and timer["fire_count"] == 7
    packs.register(conn, _timer_pack(tmp_path, interval=60))
    (timer,) = _rows(conn, "SELECT *, next_fire_at - now() AS due FROM attune.timer")
    assert timer["due"].total_seconds() <= 60
    view = _rows(conn, "SELECT * FROM attune.upcoming_timers")
    assert view[0]["rule_ref"] == "clock.tick" and view[0]["kind"] == "interval"


def test_a_broken_rule_file_registers_nothing_of_its_pack(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    pack = _pack(
        tmp_path,
        "half",
        {
            "triggers/thing.yaml": "name: thing\n",
            "rules/good.yaml": "trigger_ref: half.thing\naction_ref: core.noop\n",
            "rules/zbad.yaml": "trigger_ref: half.thing\naction_ref: core.nope\n",
            "workflows/flow.yaml": "label: f\nversion: '1'\n"
            "tasks:\n  - {name: a, action: core.noop}\n",
        },
    )
    with pytest.raises(SpecError, match=r"zbad.yaml:2: action_ref: unknown action"):
        packs.register(conn, pack)
    for table in ("pack", "trigger", "rule", "workflow_definition"):
        assert _count(conn, f"SELECT count(*) FROM attune.{table} WHERE ref LIKE 'half%%'") == 0


# ----------------------------------------------------------------- the examples


def test_the_example_rules_trigger_and_policies(
    conn: psycopg.Connection, register: Register, worker_thread: Callable[..., object]
) -> None:
    register("examples")
    worker_thread()
    _emit(conn, "examples.order_placed", {"order_id": 17, "customer": "ada", "total": 240,
                                          "tags": ["vip"]})  # fmt: skip
    _emit(conn, "examples.order_placed", {"order_id": 18, "customer": "bob", "total": 20})
    _wait(lambda: _count(conn, "SELECT count(*) FROM attune.event WHERE status = 'pending'") == 0)
    (enforcement,) = _rows(conn, "SELECT * FROM attune.enforcement")
    assert enforcement["rule_ref"] == "examples.big_orders"
    done = wait_done(conn, enforcement["workflow_execution_id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["output"] == {"order_id": 17, "shipped": "shipped order 17"}
    assert done["policy_ref"] == "examples.fulfil_order.per_customer"
    assert done["policy_key"] == '["ada"]'
    # The nightly cron: 02:30 in Paris; made due now, it runs the report once.
    (timer,) = _rows(conn, "SELECT * FROM attune.upcoming_timers")
    local = timer["next_fire_at"].astimezone(ZoneInfo("Europe/Paris"))
    assert (local.hour, local.minute, local.second) == (2, 30, 0)
    conn.execute("UPDATE attune.timer SET next_fire_at = now()")
    _wait(lambda: _count(conn, "SELECT count(*) FROM attune.enforcement") == 2)
    (nightly,) = _rows(
        conn, "SELECT * FROM attune.enforcement WHERE rule_ref = 'examples.nightly_report'"
    )
    done = wait_done(conn, nightly["workflow_execution_id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["output"]["message"].startswith("report for ")
