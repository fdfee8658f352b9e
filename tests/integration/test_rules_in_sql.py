"""emit_event matches rules in the caller's transaction (docs/automation.md, "How
matching works"); hostile rule text never reaches the SQL; payloads are bounded; slot
releases take their locks in one order."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from attune_pg import automation, db, packs
from attune_pg.spec.rule_sql import compile_rule
from attune_pg.spec.rules import RuleSpec
from tests.helpers import wait_done
from tests.integration.test_automation import _count, _emit, _pack, _rows

Register = Callable[[str], None]


def test_hundred_events_half_matching_are_enforced_in_the_emitting_transaction(
    conn: psycopg.Connection, register: Register
) -> None:
    register("shop")
    with conn.transaction():
        ids = [
            _emit(
                conn,
                "shop.order_placed",
                {"id": i, "total": 500 if i % 2 == 0 else 5, "tags": ["vip"]},
            )
            for i in range(100)
        ]
        # Before commit, in the emitting transaction itself: 50 enforcements, each with
        # its execution and the parameters of its own event.
        rows = _rows(
            conn,
            "SELECT f.event_id, f.status, x.parameters, x.requested_by, e.payload"
            "  FROM attune.enforcement f JOIN attune.workflow_execution x"
            "    ON x.id = f.workflow_execution_id JOIN attune.event e ON e.id = f.event_id",
        )
        assert len(rows) == 50
        assert _count(conn, "SELECT count(*) FROM attune.workflow_execution") == 50
        assert _count(conn, "SELECT count(*) FROM attune.enforcement") == 50
        for row in rows:
            assert row["status"] == "succeeded"
            assert row["payload"]["id"] % 2 == 0
            assert row["parameters"] == {
                "order_id": row["payload"]["id"], "total": 500, "warehouse": "north"
            }  # fmt: skip
            assert row["requested_by"] == "rule:shop.big_orders"
        # Every rule of the trigger compiled: no event waits for a worker.
        assert _count(conn, "SELECT count(*) FROM attune.event WHERE status = 'pending'") == 0
        assert sorted(r["event_id"] for r in rows) == ids[::2]
    # Nothing is left for a worker to do.
    assert automation.process_events(conn).events == 0


def test_the_event_fields_templates_see_are_the_python_engines(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    pack = _pack(
        tmp_path,
        "meta",
        {
            "triggers/ping.yaml": "name: ping\n",
            "rules/r.yaml": "trigger_ref: meta.ping\naction_ref: core.echo\naction_params:\n"
            "  message: '{{ event.id }}|{{ trigger.trigger_ref }}|{{ event.created }}"
            "|{{ rule.ref }}'\n",
        },
    )
    packs.register(conn, pack)
    event = _emit(conn, "meta.ping", {})
    (row,) = _rows(
        conn,
        "SELECT x.parameters, e.created_at FROM attune.workflow_execution x, attune.event e"
        " WHERE e.id = %s",
        (event,),
    )
    created = row["created_at"].astimezone(UTC).isoformat()  # as the worker path writes it
    assert row["parameters"] == {"message": f"{event}|meta.ping|{created}|meta.r"}


def test_a_rule_the_compiler_cannot_translate_is_matched_by_a_worker_exactly_once(
    conn: psycopg.Connection, register: Register, tmp_path: Path
) -> None:
    pack = _pack(
        tmp_path,
        "mix",
        {
            "triggers/ping.yaml": "name: ping\n",
            "rules/in_sql.yaml": "trigger_ref: mix.ping\naction_ref: core.noop\n"
            "conditions: {expression: 'event.payload.n > 1'}\n",
            "rules/by_worker.yaml": "trigger_ref: mix.ping\naction_ref: core.noop\n"
            "conditions: {expression: \"event.payload.s.startswith('a')\"}\n",
        },
    )
    packs.register(conn, pack)
    paths = dict(conn.execute("SELECT ref, match_path FROM attune.rule WHERE pack_ref = 'mix'"))
    assert paths == {"mix.in_sql": "sql", "mix.by_worker": "worker"}
    (note,) = (
        conn.execute("SELECT match_note FROM attune.rule WHERE ref = 'mix.by_worker'").fetchone()
        or ()
    )
    assert note == "conditions.expression: the method call .startswith()"
    event = _emit(conn, "mix.ping", {"n": 2, "s": "abc"})
    # The SQL rule fired at once; the other waits for a worker.
    assert [r["rule_ref"] for r in _rows(conn, "SELECT rule_ref FROM attune.enforcement")] == [
        "mix.in_sql"
    ]
    (pending,) = _rows(
        conn, "SELECT status, deferred_rules FROM attune.event WHERE id = %s", (event,)
    )
    assert pending == {"status": "pending", "deferred_rules": ["mix.by_worker"]}
    stats = automation.process_events(conn)
    assert (stats.events, stats.enforcements) == (1, 1)
    got = _rows(conn, "SELECT rule_ref, status FROM attune.enforcement ORDER BY rule_ref")
    assert got == [{"rule_ref": "mix.by_worker", "status": "succeeded"},
                   {"rule_ref": "mix.in_sql", "status": "succeeded"}]  # fmt: skip
    assert automation.process_events(conn).events == 0
    assert _count(conn, "SELECT count(*) FROM attune.workflow_execution") == 2
    # `rules list` and `rules show` say which path each rule uses.
    from attune_pg.store import automation_read

    listed = {
        r["ref"]: r["matched_by"]
        for r in automation_read.rules(conn)
        if r["ref"].startswith("mix.")
    }
    assert listed == {"mix.by_worker": "worker", "mix.in_sql": "sql"}
    shown = automation_read.rule(conn, "mix.by_worker")
    assert shown["matched_by_worker_because"] == note


def test_a_value_only_python_treats_exactly_is_deferred_for_that_event_only(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    pack = _pack(
        tmp_path,
        "fl",
        {
            "triggers/ping.yaml": "name: ping\n",
            "rules/mod.yaml": "trigger_ref: fl.ping\naction_ref: core.echo\n"
            "conditions: {expression: 'event.payload.x % 2 == 1'}\n"
            "action_params: {message: 'x={{ event.payload.x }}'}\n",
        },
    )
    packs.register(conn, pack)
    whole = _emit(conn, "fl.ping", {"x": 3})  # an integer remainder: SQL
    fraction = _emit(conn, "fl.ping", {"x": 3.5})  # a float remainder: Python
    assert (
        _count(conn, "SELECT count(*) FROM attune.enforcement WHERE event_id = %s", (whole,)) == 1
    )
    (row,) = _rows(
        conn, "SELECT status, deferred_rules FROM attune.event WHERE id = %s", (fraction,)
    )
    assert row == {"status": "pending", "deferred_rules": ["fl.mod"]}
    automation.process_events(conn)
    # 3.5 % 2 == 1.5: Python does not fire it either; the event is done.
    assert (
        _count(conn, "SELECT count(*) FROM attune.enforcement WHERE event_id = %s", (fraction,))
        == 0
    )
    assert _count(conn, "SELECT count(*) FROM attune.event WHERE status = 'pending'") == 0


def test_a_condition_error_in_sql_records_why_and_other_rules_still_fire(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    pack = _pack(
        tmp_path,
        "err",
        {
            "triggers/ping.yaml": "name: ping\n",
            "rules/bad.yaml": "trigger_ref: err.ping\naction_ref: core.noop\n"
            "conditions: {expression: 'event.payload.n > 1'}\n",
            "rules/good.yaml": "trigger_ref: err.ping\naction_ref: core.echo\n"
            "action_params: {message: '{{ event.payload.n }}'}\n",
        },
    )
    packs.register(conn, pack)
    _emit(conn, "err.ping", {"n": "many"})
    rows = {r["rule_ref"]: r for r in _rows(conn, "SELECT * FROM attune.enforcement")}
    assert rows["err.bad"]["status"] == "failed"
    assert rows["err.bad"]["error"]["type"] == "ConditionError"
    assert (
        "'>' not supported between instances of 'str' and 'int'"
        in rows["err.bad"]["error"]["message"]
    )
    assert rows["err.good"]["status"] == "succeeded"
    done = _rows(conn, "SELECT parameters FROM attune.workflow_execution")
    assert done == [{"parameters": {"message": "many"}}]


HOSTILE = [
    "'); DROP TABLE attune.event; --",
    "$1",
    "$$ || pg_sleep(5) || $$",
    "\\' OR 1=1 --",
    "E'\\x27'",
    'a"b',
    "line\nbreak",
    "ü$2->>0",
]


@pytest.mark.parametrize("evil", HOSTILE)
def test_hostile_rule_text_never_reaches_the_sql(evil: str) -> None:
    quoted = evil.replace("\\", "\\\\").replace("'", "\\'")
    rule = RuleSpec(
        ref="t.r",
        trigger_ref="t.t",
        action_ref="core.noop",
        conditions={
            "expression": f"{{{{ event.payload['{quoted}'] == '{quoted}'"
            f" or '{quoted}' in event.payload.tags }}}}"
        },
        action_params={evil: f"{{{{ event.payload['{quoted}'] ~ '{quoted}' }}}}", "lit": evil},
    )
    compiled = compile_rule(rule)
    assert compiled.path == "sql", compiled.note
    for sql in (compiled.match_sql or "", compiled.params_sql or ""):
        # Only the compiler's own vocabulary: helper calls, CASE, $1/$2 with integers.
        assert not set(sql) & set("'\"\\;`\n"), sql
        words = set(re.findall(r"[A-Za-z_][A-Za-z_0-9.]*", sql))
        assert words <= {
            "attune." + w
            for w in [
                "rx_cond",
                "rx_val",
                "rx_eq",
                "rx_attr",
                "rx_in",
                "rx_truth",
                "rx_out",
                "rx_concat",
                "rx_tag",
                "rx_render",
            ]
        } | {
            "SELECT",
            "CASE",
            "WHEN",
            "THEN",
            "ELSE",
            "END",
            "FROM",
            "AS",
            "l.v",
            "l",
            "v",
            "to_jsonb",
            "jsonb_build_object",
            "jsonb_build_array",
            "NULL",
            "jsonb",
        }, words
    assert evil in compiled.args


def test_hostile_rule_text_matches_as_plain_data(conn: psycopg.Connection, tmp_path: Path) -> None:
    evil = HOSTILE[0]
    pack = _pack(
        tmp_path,
        "evil",
        {
            "triggers/ping.yaml": "name: ping\n",
            "rules/r.yaml": "trigger_ref: evil.ping\naction_ref: core.echo\n"
            'conditions: {expression: "event.payload.k == \\"' + evil + '\\""}\n'
            "action_params: {message: \"{{ event.payload.k ~ '$1' }}\"}\n",
        },
    )
    packs.register(conn, pack)
    _emit(conn, "evil.ping", {"k": "other"})
    _emit(conn, "evil.ping", {"k": evil})
    rows = _rows(conn, "SELECT parameters FROM attune.workflow_execution")
    assert rows == [{"parameters": {"message": evil + "$1"}}]
    assert _count(conn, "SELECT count(*) FROM attune.event") == 2  # the table is still there


def test_a_payload_over_the_json_limits_is_refused_naming_the_limit(
    conn: psycopg.Connection, register: Register
) -> None:
    register("shop")
    conn.execute("UPDATE attune.setting SET value = '8' WHERE name = 'json_max_depth'")
    deep: Any = 1
    for _ in range(10):
        deep = [deep]
    with pytest.raises(psycopg.errors.ProgramLimitExceeded) as caught, conn.transaction():
        _emit(conn, "shop.order_placed", {"id": 1, "total": 1, "deep": deep})
    assert (
        "payload of trigger 'shop.order_placed': nested deeper than 8 levels"
        " (setting json_max_depth)"
        in str(caught.value)
    )
    conn.execute("UPDATE attune.setting SET value = '200' WHERE name = 'json_max_bytes'")
    with (
        pytest.raises(psycopg.errors.ProgramLimitExceeded, match="over the limit of 200 bytes"),
        conn.transaction(),
    ):
        _emit(conn, "shop.order_placed", {"id": 1, "total": 1, "note": "x" * 300})
    assert _count(conn, "SELECT count(*) FROM attune.event") == 0


# ----------------------------------------------------------------- slots in one order


def _crossed_releases(conn: psycopg.Connection, dsn: str, tmp_path: Path) -> list[BaseException]:
    """Two transactions each end one slot holder of key a and one of key b, in crossed
    order, meeting at a barrier after their first release; returns what they raised."""
    pack = _pack(
        tmp_path,
        "slots",
        {
            "workflows/job.yaml": "label: job\nversion: '1'\n"
            "parameters: {k: {type: string}}\ntasks:\n  - {name: a, action: core.noop}\n",
            "policies/per_key.yaml": "name: per_key\nresource_ref: slots.job\n"
            "policy_type: action.concurrency.attr\n"
            "parameters: {threshold: 5, action: delay, attributes: [k]}\n",
        },
    )
    packs.register(conn, pack)
    ids = {}
    for name, key in (("a1", "a"), ("b1", "b"), ("a2", "a"), ("b2", "b")):
        row = conn.execute(
            "INSERT INTO attune.workflow_execution (workflow_ref, parameters)"
            " VALUES ('slots.job', %s)"
            " RETURNING id",
            (Jsonb({"k": key}),),
        ).fetchone()
        assert row is not None
        ids[name] = row[0]
    conn.execute("UPDATE attune.workflow_execution SET status = 'running'")
    assert dict(conn.execute("SELECT key, used FROM attune.concurrency_slot")) == {
        '["a"]': 2,
        '["b"]': 2,
    }
    barrier = threading.Barrier(2, timeout=20)
    errors: list[BaseException] = []

    def end(first: int, second: int) -> None:
        try:
            with db.connect(dsn) as mine, mine.transaction():
                mine.execute("SET LOCAL deadlock_timeout = '100ms'")
                mine.execute(
                    "UPDATE attune.workflow_execution SET status = 'failed' WHERE id = %s", (first,)
                )
                barrier.wait()
                mine.execute(
                    "UPDATE attune.workflow_execution SET status = 'failed' WHERE id = %s",
                    (second,),
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=end, args=(ids["a1"], ids["b1"])),
        threading.Thread(target=end, args=(ids["b2"], ids["a2"])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return errors


def test_releasing_slots_of_two_keys_in_crossed_order_deadlocked_when_released_at_once(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    # The release as it was before 0014: at once, locking the counter in row order.
    conn.execute(
        "CREATE OR REPLACE FUNCTION attune.policy_release_later(p_ref text, p_key text)"
        " RETURNS void LANGUAGE sql AS $$ SELECT attune.policy_release(p_ref, p_key) $$"
    )
    errors = _crossed_releases(conn, dsn, tmp_path)
    assert [type(e) for e in errors] == [psycopg.errors.DeadlockDetected]


def test_releasing_slots_of_two_keys_in_crossed_order_does_not_deadlock(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    assert _crossed_releases(conn, dsn, tmp_path) == []
    assert dict(conn.execute("SELECT key, used FROM attune.concurrency_slot")) == {
        '["a"]': 0,
        '["b"]': 0,
    }
    assert (
        _count(conn, "SELECT count(*) FROM attune.workflow_execution WHERE status = 'failed'") == 4
    )


def test_a_release_queued_in_a_transaction_frees_the_slot_for_its_own_next_start(
    conn: psycopg.Connection, tmp_path: Path, worker_thread: Callable[..., object]
) -> None:
    pack = _pack(
        tmp_path,
        "one",
        {
            "workflows/job.yaml": "label: job\nversion: '1'\n"
            "tasks:\n  - {name: a, action: core.noop}\n",
            "policies/only_one.yaml": "name: only_one\nresource_ref: one.job\n"
            "policy_type: action.concurrency\nparameters: {threshold: 1, action: delay}\n",
        },
    )
    packs.register(conn, pack)
    with conn.transaction():
        first = conn.execute("SELECT attune.start_execution('one.job', '{}')").fetchone()
        assert first is not None
        conn.execute(
            "UPDATE attune.workflow_execution SET status = 'canceled' WHERE id = %s", (first[0],)
        )
        second = conn.execute("SELECT attune.start_execution('one.job', '{}')").fetchone()
        assert second is not None
        # The queued release was applied before this acquire: it runs, not delayed.
        (delayed,) = (
            conn.execute(
                "SELECT delayed FROM attune.workflow_execution WHERE id = %s", (second[0],)
            ).fetchone()
            or ()
        )
        assert delayed is False
    worker_thread()
    assert wait_done(conn, second[0])["status"] == "succeeded"
