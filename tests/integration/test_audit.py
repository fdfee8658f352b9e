"""store/audit.py reads what attune_pg.audit judges: rows forged past the triggers (which
the engine could never write) are found, each with its row named. The clean side is
checked after every test that runs workers (tests/conftest.py, at teardown)."""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from attune_pg import audit
from attune_pg.store import audit as audit_store
from tests.helpers import audit_problems, start


def test_the_audit_finds_rows_forged_past_the_triggers(
    conn: psycopg.Connection, register: Callable[[str], None]
) -> None:
    register("examples")
    execution = start(conn, "examples.hello_join")
    assert audit_problems(conn) == []
    assert [p.kind for p in audit.check(audit_store.gather(conn), finished=True)] == ["unfinished"]

    conn.execute("DROP INDEX attune.task_execution_occurrence")
    conn.execute("SET session_replication_role = replica")  # no triggers, no audit rows
    for lease in (None, "w-gone"):
        conn.execute(
            "INSERT INTO attune.task_execution (workflow_execution_id, task_name, action_ref,"
            " status, claims, lease_owner) VALUES (%s, 'greet', 'core.echo', 'succeeded', 0, %s)",
            (execution, lease),
        )
    conn.execute(
        "INSERT INTO attune.task_state (workflow_execution_id, task_name, iteration, status,"
        " join_required, join_arrivals, join_from) VALUES (%s, 'greet', 1, 'pending', 2, 1,"
        " '{count_letters}')",
        (execution,),
    )
    conn.execute(
        "INSERT INTO attune.execution_event (workflow_execution_id, task_execution_id, kind,"
        " from_status, to_status) VALUES (%s, 999999, 'task_status', NULL, 'scheduled')",
        (execution,),
    )
    conn.execute("RESET session_replication_role")

    isolation = conn.isolation_level
    problems = audit.check(audit_store.gather(conn))
    assert conn.isolation_level == isolation  # gather's snapshot does not stay behind
    found = {(p.kind, p.text.split(":")[0]) for p in problems}
    first, second = (
        row[0]
        for row in conn.execute("SELECT id FROM attune.task_execution ORDER BY id").fetchall()
    )
    assert found == {
        ("schema", "the unique index attune.task_execution_occurrence is missing"),
        ("duplicated", f"task occurrence ({execution}, 'greet', 1, None, 1) exists 2 times"),
        ("trail", f"task row {first} (greet, execution {execution})"),
        ("trail", f"task row {second} (greet, execution {execution})"),
        ("lease", f"task row {second} is succeeded but still holds a lease"),
        (
            "duplicated",
            f"join greet#1 of execution {execution} is still pending but ran 2 task rows",
        ),
        ("trail", "1 status events name no row (rolled-back work leaked?)"),
    }
    assert audit.count(problems, "duplicated") == 2
