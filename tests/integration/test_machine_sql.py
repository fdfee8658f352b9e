"""The SQL side of the state machines agrees with machine.py, and guards hand-written SQL."""

from __future__ import annotations

import re

import psycopg
import pytest

from attune_pg import machine
from attune_pg.store import migrate, sqlgen
from tests.helpers import start


def test_generated_migration_is_current() -> None:
    committed = (migrate.schema_dir() / "0002_state_machine.sql").read_text()
    assert committed == sqlgen.state_machine_sql(), "run: python -m attune_pg.store.sqlgen"


def test_guard_table_matches_machines(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT entity, from_status, to_status FROM attune.status_transition ORDER BY 1, 2, 3"
    ).fetchall()
    assert [tuple(r) for r in rows] == machine.guard_rows()
    initial = conn.execute("SELECT entity, status FROM attune.status_initial").fetchall()
    assert {tuple(r) for r in initial} == {
        (e, s) for e in machine.MACHINES for s in machine.INITIAL[e]
    }


@pytest.mark.parametrize("entity", ["workflow", "task", "task_state"])
def test_status_checks_match_machine_states(conn: psycopg.Connection, entity: str) -> None:
    table, _ = machine.TABLES[entity]  # type: ignore[index]
    definition = conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s",
        (f"{table}_status_check",),
    ).fetchone()
    assert definition is not None
    allowed = set(re.findall(r"'([a-z_]+)'", definition[0]))
    assert allowed == set(machine.states(entity))  # type: ignore[arg-type]


def test_illegal_status_change_by_hand_is_refused(conn: psycopg.Connection, register) -> None:  # type: ignore[no-untyped-def]
    register("examples")
    execution_id = start(conn, "examples.hello_join")
    # requested -> succeeded is not a legal move
    with pytest.raises(
        psycopg.errors.CheckViolation, match="illegal workflow_execution status change"
    ):
        conn.execute(
            "UPDATE attune.workflow_execution SET status = 'succeeded' WHERE id = %s",
            (execution_id,),
        )
    assert conn.execute(
        "SELECT status FROM attune.workflow_execution WHERE id = %s", (execution_id,)
    ).fetchone() == ("requested",)
    # a legal move by hand is allowed, and audited
    conn.execute(
        "UPDATE attune.workflow_execution SET status = 'canceled' WHERE id = %s", (execution_id,)
    )
    events = conn.execute(
        "SELECT from_status, to_status FROM attune.execution_event"
        " WHERE workflow_execution_id = %s AND kind = 'workflow_status' ORDER BY id",
        (execution_id,),
    ).fetchall()
    assert events == [(None, "requested"), ("requested", "canceled")]


def test_every_task_move_is_guarded_exactly_as_the_machine_says(
    conn: psycopg.Connection,
    register,  # type: ignore[no-untyped-def]
) -> None:
    register("examples")
    execution_id = start(conn, "examples.hello_join")
    legal = machine.moves("task")
    checked = 0
    for source in machine.states("task"):
        for target in machine.states("task"):
            if source == target:
                continue
            row = conn.execute(
                "INSERT INTO attune.task_execution (workflow_execution_id, task_name, action_ref,"
                " status, attempt) VALUES (%s, 'probe', 'core.noop', 'pending', %s) RETURNING id",
                (execution_id, checked + 1),
            ).fetchone()
            assert row is not None
            # Put the row in `source` behind the guard's back (we own the table).
            with conn.transaction():
                conn.execute(
                    "ALTER TABLE attune.task_execution DISABLE TRIGGER task_execution_20_guard"
                )
                conn.execute(
                    "UPDATE attune.task_execution SET status = %s WHERE id = %s", (source, row[0])
                )
                conn.execute(
                    "ALTER TABLE attune.task_execution ENABLE TRIGGER task_execution_20_guard"
                )
            try:
                with conn.transaction():
                    conn.execute(
                        "UPDATE attune.task_execution SET status = %s WHERE id = %s",
                        (target, row[0]),
                    )
                accepted = True
            except psycopg.errors.CheckViolation:
                accepted = False
            assert accepted == ((source, target) in legal), (source, target)
            checked += 1
    assert checked == len(machine.states("task")) * (len(machine.states("task")) - 1)


def test_insert_with_unknown_ref_is_refused(conn: psycopg.Connection) -> None:
    refused = pytest.raises(
        psycopg.errors.ForeignKeyViolation, match=r"unknown workflow or action 'nope\.nothing'"
    )
    with refused:
        start(conn, "nope.nothing")


def test_insert_with_non_object_parameters_is_refused(conn: psycopg.Connection, register) -> None:  # type: ignore[no-untyped-def]
    register("examples")
    with pytest.raises(psycopg.errors.CheckViolation, match="must be a JSON object, got array"):
        conn.execute(
            "INSERT INTO attune.workflow_execution (workflow_ref, parameters)"
            " VALUES ('examples.hello_join', '[1, 2]')"
        )
    assert conn.execute("SELECT count(*) FROM attune.workflow_execution").fetchone() == (0,)


def test_replaced_guard_in_migration_0015_is_current() -> None:
    """0002 has shipped; the guard machine.py asks for today lives in 0015, generated."""
    text = (migrate.schema_dir() / "0015_claim_on_create.sql").read_text()
    block = text.split("-- @generated replaced_guard task", 1)[1].split("-- @end", 1)[0]
    assert block == sqlgen.replaced_guard("task"), "regenerate the block from sqlgen"


def test_a_task_row_created_running_needs_a_lease(conn: psycopg.Connection, register) -> None:  # type: ignore[no-untyped-def]
    register("examples")
    execution_id = start(conn, "examples.hello_join")
    with pytest.raises(psycopg.errors.CheckViolation, match="created running needs a lease"):
        conn.execute(
            "INSERT INTO attune.task_execution (workflow_execution_id, task_name, action_ref,"
            " status) VALUES (%s, 'probe', 'core.noop', 'running')",
            (execution_id,),
        )
    row = conn.execute(
        "INSERT INTO attune.task_execution (workflow_execution_id, task_name, action_ref,"
        " status, lease_owner, lease_expires_at) VALUES (%s, 'probe', 'core.noop', 'running',"
        " 'me', now() + interval '30 s') RETURNING id",
        (execution_id,),
    ).fetchone()
    assert row is not None
    audit = conn.execute(
        "SELECT from_status, to_status FROM attune.execution_event WHERE task_execution_id = %s",
        (row[0],),
    ).fetchall()
    assert audit == [(None, "running")]
