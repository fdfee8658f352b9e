"""Least privilege (schema/0005_roles.sql): attune_reader, attune_submitter, attune_worker.

Each test creates LOGIN users in the group roles (unique names, dropped at teardown),
connects as them and proves what they can and cannot do. The schema is owned by the
role that ran the migrations (the test server's superuser here); none of the three
roles owns anything or is a superuser.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import conninfo, sql
from psycopg.types.json import Jsonb

from attune_pg import db
from attune_pg.store import kv, migrate
from tests.helpers import (
    audit_problems,
    poll_until,
    start,
    tasks,
    wait_done,
    worker_running,
)

ROLES = ("attune_reader", "attune_submitter", "attune_worker")

VIEWS = (
    "workflow_execution_summary",
    "workflow_task_detail",
    "workflow_action_link",
    "queue_depth",
    "stuck_tasks",
    "worker_status",
    "pending_inquiries",
    "rule_activity",
    "upcoming_timers",
    "concurrency_usage",
    # 0012: the web console's views
    "execution_detail",
    "execution_audit",
    "workflow_catalog",
    # 0013: the console's views of rules, triggers, policies and events
    "rule_catalog",
    "trigger_catalog",
    "policy_catalog",
    "event_log",
    "enforcement_log",
)

CONTROL_FUNCTIONS = (
    "attune.start_execution(text, jsonb, text, integer, text)",
    "attune.cancel_execution(bigint, text)",
    "attune.pause_execution(bigint)",
    "attune.resume_execution(bigint)",
    "attune.retry_execution(bigint)",
    "attune.respond_inquiry(bigint, jsonb, text)",
)

# The whole privilege matrix, per relation of schema attune: what each role may do.
# ("(I)"/"(U)" mark INSERT/UPDATE on some columns only: the submitter's documented start
# columns; the engine's columns of executions, task rows and inquiries for the worker.)
R, S, W = ROLES
READ_ONLY = {R: "S", S: "S", W: "S"}
_EXECUTION_TABLE = {R: "", S: "S", W: "SI(U)"}
EXPECTED: dict[str, dict[str, str]] = {
    **{view: READ_ONLY for view in VIEWS},
    "schema_migration": READ_ONLY,
    "status_transition": READ_ONLY,
    "status_initial": READ_ONLY,
    "pack": {R: "", S: "S", W: "S"},
    "action": {R: "", S: "S", W: "S"},
    "workflow_definition": {R: "", S: "S", W: "S"},
    "workflow_execution": {R: "", S: "S(I)", W: "SI(U)"},
    "task_execution": _EXECUTION_TABLE,
    "task_state": {R: "", S: "S", W: "SIU"},
    "inquiry": _EXECUTION_TABLE,
    "worker": {R: "", S: "S", W: "SIU"},
    "execution_event": {R: "", S: "S", W: "S"},
    "kv": {R: "", S: "", W: "S"},
    "setting": READ_ONLY,
    "execution_budget": {R: "", S: "S", W: "SIU"},
    "signing_key": {R: "", S: "", W: "S"},
    # Automation (0009): definitions read-only; workers append events and enforcements
    # and update only the event status and the timer's schedule columns (column grants).
    "trigger": {R: "", S: "S", W: "S"},
    "rule": {R: "", S: "S", W: "S"},
    "policy": {R: "", S: "S", W: "S"},
    "concurrency_slot": {R: "", S: "S", W: "S"},
    "event": {R: "", S: "S", W: "SI(U)"},
    "enforcement": {R: "", S: "S", W: "SI"},
    "timer": {R: "", S: "S", W: "S(U)"},
}

_PRIVILEGES = {
    "S": "SELECT",
    "I": "INSERT",
    "U": "UPDATE",
    "D": "DELETE",
    "T": "TRUNCATE",
    "R": "REFERENCES",
    "G": "TRIGGER",
}


# ----------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def login(server_dsn: str, dsn: str) -> Iterator[Callable[[str], str]]:
    """`login(role)` creates a LOGIN user in `role` and returns a DSN of the test
    database for it. Every user is dropped at teardown (before the database)."""
    created: list[str] = []

    def _login(role: str) -> str:
        name = f"u_{role.removeprefix('attune_')}_{secrets.token_hex(4)}"
        password = secrets.token_hex(8)
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                    sql.Identifier(name), sql.Literal(password), sql.Identifier(role)
                )
            )
        created.append(name)
        return conninfo.make_conninfo(dsn, user=name, password=password)

    yield _login
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        for name in created:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _user(user_dsn: str) -> str:
    return str(conninfo.conninfo_to_dict(user_dsn)["user"])


def _refused(conn: psycopg.Connection, statement: str, params: tuple[object, ...] = ()) -> None:
    """The statement fails for lack of privilege (and changes nothing)."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        conn.execute(statement.encode(), params)


def _wait_for(what: Callable[[], object], timeout: float = 20.0) -> object:
    return poll_until(what, "the role's worker", timeout=timeout)


# ----------------------------------------------------------------- the roles themselves


def test_roles_are_plain_nologin_roles_that_own_nothing(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT rolname, rolsuper, rolcanlogin, rolcreaterole, rolcreatedb, rolreplication,"
        " rolbypassrls FROM pg_roles WHERE rolname = ANY(%s) ORDER BY rolname",
        (list(ROLES),),
    ).fetchall()
    assert [row[0] for row in rows] == sorted(ROLES)
    for row in rows:
        assert row[1:] == (False,) * 6, f"{row[0]} has attributes it must not have"
    owned = conn.execute(
        "SELECT 'schema', nspname FROM pg_namespace WHERE nspname = 'attune'"
        "   AND pg_get_userbyid(nspowner) = ANY(%(r)s)"
        " UNION ALL SELECT 'relation', relname FROM pg_class"
        "  WHERE relnamespace = 'attune'::regnamespace AND pg_get_userbyid(relowner) = ANY(%(r)s)"
        " UNION ALL SELECT 'function', proname FROM pg_proc"
        "  WHERE pronamespace = 'attune'::regnamespace AND pg_get_userbyid(proowner) = ANY(%(r)s)"
        " UNION ALL SELECT 'type', typname FROM pg_type"
        "  WHERE typnamespace = 'attune'::regnamespace AND pg_get_userbyid(typowner) = ANY(%(r)s)",
        {"r": list(ROLES)},
    ).fetchall()
    assert owned == []
    for role in ROLES:
        can = conn.execute(
            "SELECT has_schema_privilege(%(r)s, 'attune', 'CREATE'),"
            " has_database_privilege(%(r)s, current_database(), 'CREATE'),"
            " has_schema_privilege(%(r)s, 'attune', 'USAGE')",
            {"r": role},
        ).fetchone()
        assert can == (False, False, True), role


def test_privilege_matrix(conn: psycopg.Connection) -> None:
    """Every relation of schema attune is classified, and each role has exactly the
    privileges listed in EXPECTED (docs/operations.md, "Roles and least privilege")."""
    relations = [
        row[0]
        for row in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'attune'::regnamespace"
            " AND relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY relname"
        )
    ]
    unclassified = sorted(set(relations) - set(EXPECTED))
    assert not unclassified, (
        f"a migration added {unclassified}: grant them to the attune_* roles in that"
        " migration and add them to EXPECTED here and to the table in docs/operations.md"
    )
    actual: dict[str, dict[str, str]] = {}
    for relation in relations:
        for role in ROLES:
            letters = ""
            for letter, privilege in _PRIVILEGES.items():
                ok = conn.execute(
                    "SELECT has_table_privilege(%s, %s, %s)",
                    (role, f"attune.{relation}", privilege),
                ).fetchone()
                if ok and ok[0]:
                    letters += letter
                elif letter in ("I", "U"):
                    some = conn.execute(
                        "SELECT has_any_column_privilege(%s, %s, %s)",
                        (role, f"attune.{relation}", privilege),
                    ).fetchone()
                    if some and some[0]:
                        letters += f"({letter})"
            actual.setdefault(relation, {})[role] = letters
    assert actual == {relation: EXPECTED[relation] for relation in relations}
    # Sequences (identity columns): nobody needs them; INSERT draws ids without USAGE.
    for role in ROLES:
        seqs = conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'attune'::regnamespace"
            " AND relkind = 'S' AND (has_sequence_privilege(%(r)s, oid, 'USAGE')"
            "  OR has_sequence_privilege(%(r)s, oid, 'UPDATE'))",
            {"r": role},
        ).fetchall()
        assert seqs == [], role


def test_function_privileges(conn: psycopg.Connection) -> None:
    for function in CONTROL_FUNCTIONS:
        granted = {
            role: conn.execute(
                "SELECT has_function_privilege(%s, %s, 'EXECUTE')", (role, function)
            ).fetchone()
            == (True,)
            for role in ROLES
        }
        assert granted == {R: False, S: True, W: False}, function
    # Nothing of the SQL API is left executable by PUBLIC (json_schema_error is pure).
    public = conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p, aclexplode(coalesce(p.proacl,"
        " acldefault('f', p.proowner))) a"
        " WHERE p.pronamespace = 'attune'::regnamespace AND a.grantee = 0"
        "   AND a.privilege_type = 'EXECUTE' AND p.prorettype <> 'trigger'::regtype"
        " ORDER BY 1"
    ).fetchall()
    assert [row[0] for row in public] == ["attune.json_schema_error(jsonb,jsonb,text)"]
    # Definer functions pin their search_path; every trigger function is a definer, so
    # firing a trigger (audit rows, definition snapshot) needs no privilege of the caller.
    rows = conn.execute(
        "SELECT oid::regprocedure::text, prosecdef, proconfig, prorettype = 'trigger'::regtype"
        " FROM pg_proc WHERE pronamespace = 'attune'::regnamespace ORDER BY 1"
    ).fetchall()
    for name, definer, config, is_trigger in rows:
        if is_trigger:
            assert definer, f"trigger function {name} must be SECURITY DEFINER"
        if definer:
            assert config and "search_path=pg_catalog, attune, pg_temp" in config, name


def test_migration_is_safe_to_rerun_and_runs_where_the_roles_exist(
    conn: psycopg.Connection, server_dsn: str
) -> None:
    """Roles are shared by every database of the server: applying 0005 again, or in a
    fresh database after another database created the roles, works and changes nothing."""
    roles_sql = next(m.sql for m in migrate.available() if m.name == "roles")
    snapshot = (
        "SELECT (SELECT array_agg(relname || coalesce(relacl::text, '') ORDER BY relname)"
        "   FROM pg_class WHERE relnamespace = 'attune'::regnamespace),"
        " (SELECT array_agg(proname || coalesce(proacl::text, '') || prosecdef ORDER BY proname)"
        "   FROM pg_proc WHERE pronamespace = 'attune'::regnamespace),"
        " (SELECT count(*) FROM pg_roles WHERE rolname LIKE 'attune\\_%%')"
    )
    name = f"attune_roles_{secrets.token_hex(4)}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with db.connect(conninfo.make_conninfo(server_dsn, dbname=name)) as fresh:
            # Up to 0005 (later migrations narrow some of its grants, and are not
            # re-runnable): applying 0005 again changes nothing.
            applied = [m.name for m in migrate.migrate(fresh, target=5)]
            assert "roles" in applied
            before = fresh.execute(snapshot).fetchone()
            with fresh.transaction():
                fresh.execute(roles_sql.encode())
            assert fresh.execute(snapshot).fetchone() == before
            assert migrate.migrate(fresh)
            assert fresh.execute(
                "SELECT has_table_privilege('attune_reader', 'attune.queue_depth', 'SELECT')"
            ).fetchone() == (True,)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.mark.parametrize("role", ROLES)
def test_migrate_is_a_no_op_for_every_role_when_the_schema_is_current(
    login: Callable[[str], str], role: str
) -> None:
    with db.connect(login(role)) as conn:
        assert migrate.migrate(conn) == []
        assert migrate.current_version(conn) == max(m.version for m in migrate.available())


# ----------------------------------------------------------------- attune_reader


def test_reader_sees_the_views_and_nothing_else(
    conn: psycopg.Connection, register: Callable[[str], None], login: Callable[[str], str]
) -> None:
    register("examples")
    kv.set_value(conn, "api_token", "hunter2", secret=True)
    execution_id = start(conn, "examples.hello_join")
    with db.connect(login("attune_reader")) as reader:
        for view in VIEWS:
            reader.execute(sql.SQL("SELECT * FROM attune.{}").format(sql.Identifier(view)))
        summary = reader.execute(
            "SELECT status FROM attune.workflow_execution_summary WHERE id = %s", (execution_id,)
        ).fetchone()
        assert summary == ("requested",)
        assert reader.execute(
            "SELECT count(*) > 0 FROM attune.workflow_action_link"
            " WHERE workflow_ref = 'examples.hello_join'"
        ).fetchone() == (True,)
        # Cannot start anything.
        _refused(
            reader,
            "INSERT INTO attune.workflow_execution (workflow_ref) VALUES ('examples.hello_join')",
        )
        _refused(reader, "SELECT attune.start_execution('examples.hello_join')")
        # Cannot control anything.
        _refused(reader, "SELECT attune.cancel_execution(%s)", (execution_id,))
        _refused(reader, "SELECT attune.pause_execution(%s)", (execution_id,))
        _refused(reader, "SELECT attune.resume_execution(%s)", (execution_id,))
        _refused(reader, "SELECT attune.retry_execution(%s)", (execution_id,))
        _refused(reader, "SELECT attune.respond_inquiry(1, '{}')")
        # Cannot alter anything.
        _refused(
            reader,
            "UPDATE attune.workflow_execution SET status = 'canceled' WHERE id = %s",
            (execution_id,),
        )
        _refused(reader, "DELETE FROM attune.workflow_execution")
        _refused(reader, "UPDATE attune.workflow_definition SET enabled = false")
        _refused(reader, "INSERT INTO attune.kv (key, value) VALUES ('k', '1')")
        _refused(reader, "CREATE TABLE attune.mine (a int)")
        _refused(reader, "DROP VIEW attune.queue_depth")
        # Cannot read kv (secrets) nor the base tables: views only.
        _refused(reader, "SELECT value FROM attune.kv")
        for table in ("workflow_execution", "task_execution", "inquiry", "pack", "execution_event"):
            _refused(reader, f"SELECT * FROM attune.{table}")
    row = conn.execute(
        "SELECT status FROM attune.workflow_execution WHERE id = %s", (execution_id,)
    ).fetchone()
    assert row == ("requested",)


# ----------------------------------------------------------------- attune_submitter


def test_submitter_starts_and_controls_but_rewrites_nothing(
    conn: psycopg.Connection, register: Callable[[str], None], login: Callable[[str], str]
) -> None:
    register("examples")
    kv.set_value(conn, "api_token", "hunter2", secret=True)
    submitter_dsn = login("attune_submitter")
    user = _user(submitter_dsn)
    with db.connect(submitter_dsn) as submitter:
        # The documented INSERT, with RETURNING; the trigger snapshots the definition.
        row = submitter.execute(
            "INSERT INTO attune.workflow_execution (workflow_ref, parameters, priority)"
            " VALUES ('examples.hello_join', %s, 5) RETURNING id, requested_by, status,"
            " definition IS NOT NULL",
            (Jsonb({"name": "ada"}),),
        ).fetchone()
        assert row is not None
        inserted, requested_by, status, snapshot = row
        assert (requested_by, status, snapshot) == (user, "requested", True)
        # Its refusals still speak for themselves.
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match="unknown workflow"):
            submitter.execute(
                "INSERT INTO attune.workflow_execution (workflow_ref) VALUES ('no.such')"
            )
        # The idempotent forms.
        keyed = (
            "INSERT INTO attune.workflow_execution (workflow_ref, idempotency_key)"
            " VALUES ('examples.hello_join', 'order-7')"
            " ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
        )
        submitter.execute(keyed)
        submitter.execute(keyed)
        first = submitter.execute(
            "SELECT attune.start_execution('examples.child', '{\"name\": \"a\"}', 'order-8')"
        ).fetchone()
        again = submitter.execute(
            "SELECT attune.start_execution('examples.child', '{\"name\": \"a\"}', 'order-8')"
        ).fetchone()
        assert first is not None and first == again
        started = first[0]
        assert submitter.execute(
            "SELECT count(*) FROM attune.workflow_execution WHERE idempotency_key LIKE 'order-%'"
        ).fetchone() == (2,)
        assert submitter.execute(
            "SELECT requested_by FROM attune.workflow_execution WHERE id = %s", (started,)
        ).fetchone() == (user,)
        # Reads the views.
        for view in VIEWS:
            submitter.execute(sql.SQL("SELECT * FROM attune.{}").format(sql.Identifier(view)))
        # Controls through the functions; the audit log names the submitter's login.
        assert submitter.execute("SELECT attune.cancel_execution(%s)", (inserted,)).fetchone() == (
            "canceled",
        )
        actors = submitter.execute(
            "SELECT DISTINCT actor FROM attune.execution_event WHERE workflow_execution_id = %s",
            (inserted,),
        ).fetchall()
        assert actors == [(user,)]
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="only a running"):
            submitter.execute("SELECT attune.pause_execution(%s)", (started,))
        with pytest.raises(psycopg.errors.NoDataFound, match="does not exist"):
            submitter.execute("SELECT attune.respond_inquiry(999999, '{}')")
        # Cannot set what the engine owns, nor rewrite or delete any row.
        _refused(
            submitter,
            "INSERT INTO attune.workflow_execution (workflow_ref, definition)"
            " VALUES ('examples.hello_join', '{}')",
        )
        for statement in (
            "UPDATE attune.workflow_execution SET status = 'canceled' WHERE id = %s",
            "UPDATE attune.workflow_execution SET parameters = '{}' WHERE id = %s",
            "UPDATE attune.task_execution SET status = 'failed' WHERE workflow_execution_id = %s",
            "UPDATE attune.task_state SET status = 'failed' WHERE workflow_execution_id = %s",
            "UPDATE attune.inquiry SET status = 'canceled' WHERE workflow_execution_id = %s",
            "DELETE FROM attune.workflow_execution WHERE id = %s",
            "DELETE FROM attune.task_execution WHERE workflow_execution_id = %s",
            "DELETE FROM attune.task_state WHERE workflow_execution_id = %s",
            "DELETE FROM attune.execution_event WHERE workflow_execution_id = %s",
        ):
            _refused(submitter, statement, (started,))
        _refused(
            submitter,
            "INSERT INTO attune.task_execution (workflow_execution_id, task_name, action_ref)"
            " VALUES (%s, 'x', 'core.noop')",
            (started,),
        )
        _refused(
            submitter,
            "INSERT INTO attune.execution_event (workflow_execution_id, kind) VALUES (%s, 'fake')",
            (started,),
        )
        _refused(submitter, "SELECT attune.lock_execution(%s)", (started,))
        _refused(submitter, "SELECT attune.request_control(%s)", (started,))
        _refused(submitter, "TRUNCATE attune.workflow_execution CASCADE")
        # Not the catalog, not kv, not the schema.
        _refused(submitter, "UPDATE attune.workflow_definition SET enabled = false")
        _refused(submitter, "DELETE FROM attune.action")
        _refused(submitter, "UPDATE attune.pack SET config = '{}'")
        _refused(submitter, "SELECT value FROM attune.kv")
        _refused(submitter, "INSERT INTO attune.kv (key, value) VALUES ('k', '1')")
        _refused(submitter, "CREATE TABLE attune.mine (a int)")
        _refused(submitter, "ALTER TABLE attune.workflow_execution DISABLE TRIGGER USER")
    row = conn.execute(
        "SELECT status FROM attune.workflow_execution WHERE id = %s", (started,)
    ).fetchone()
    assert row == ("requested",)


# ----------------------------------------------------------------- attune_worker


def test_workflows_run_end_to_end_with_a_worker_and_a_submitter_login(
    conn: psycopg.Connection, register: Callable[[str], None], login: Callable[[str], str]
) -> None:
    """No superuser and no owner at run time: the worker runs every kind of step (shell,
    join, publish, kv, child workflows, inquiries) and the submitter's controls."""
    register("examples")
    register("ctl")
    kv.set_value(conn, "greeting", "Howdy")
    worker_dsn = login("attune_worker")
    submitter_dsn = login("attune_submitter")
    worker_user = _user(worker_dsn)
    with worker_running(worker_dsn) as worker, db.connect(submitter_dsn) as submitter:
        hello = start(submitter, "examples.hello_join")
        nested = start(submitter, "examples.nested")
        config = start(submitter, "examples.kv_config")
        approval = start(submitter, "examples.approval")
        flaky = start(submitter, "ctl.fail_then_fix")
        long_id = start(submitter, "examples.long_running", {"seconds": 30})

        row = wait_done(submitter, hello)
        assert row["status"] == "succeeded", row["error"]
        assert row["output"]["letters"] == 13
        row = wait_done(submitter, nested)
        assert row["status"] == "succeeded", row["error"]
        assert row["output"] == {"greetings": ["hello, ada", "hello, grace"]}
        row = wait_done(submitter, config)
        assert row["output"] == {"message": "Howdy from examples.kv_config!"}

        # An inquiry, answered by the submitter.
        inquiry: tuple[int] = _wait_for(  # type: ignore[assignment]
            lambda: submitter.execute(
                "SELECT id FROM attune.pending_inquiries WHERE workflow_execution_id = %s",
                (approval,),
            ).fetchone()
        )
        assert submitter.execute(
            "SELECT attune.respond_inquiry(%s, %s)", (inquiry[0], Jsonb({"approved": True}))
        ).fetchone() == ("responded",)
        row = wait_done(submitter, approval)
        assert row["output"] == {"outcome": "approved"}

        # Retry after a fix (the owner writes kv).
        row = wait_done(submitter, flaky)
        assert row["status"] == "failed"
        kv.set_value(conn, "fail_code", 0)
        assert submitter.execute("SELECT attune.retry_execution(%s)", (flaky,)).fetchone() == (
            "running",
        )
        row = wait_done(submitter, flaky)
        assert row["status"] == "succeeded", row["error"]

        # Pause, resume, and a cancel that kills the running action.
        _wait_for(lambda: any(t["status"] == "running" for t in tasks(submitter, long_id)))
        assert submitter.execute("SELECT attune.pause_execution(%s)", (long_id,)).fetchone() == (
            "pausing",
        )
        assert submitter.execute("SELECT attune.resume_execution(%s)", (long_id,)).fetchone() == (
            "running",
        )
        submitter.execute("SELECT attune.cancel_execution(%s, 'cancel_running')", (long_id,))
        assert wait_done(submitter, long_id, timeout=20)["status"] == "canceled"

        # The worker registered itself, and the audit log names its login.
        assert submitter.execute(
            "SELECT state FROM attune.worker_status WHERE id = %s", (worker.id,)
        ).fetchone() == ("alive",)
        actors = {
            row[0]
            for row in submitter.execute(
                "SELECT DISTINCT actor FROM attune.execution_event WHERE kind = 'task_status'"
                " AND to_status IN ('running', 'succeeded')"
            )
        }
        assert actors == {worker_user}
        published = submitter.execute(
            "SELECT count(*) FROM attune.execution_event WHERE kind = 'publish'"
            " AND workflow_execution_id = %s",
            (hello,),
        ).fetchone()
        assert published is not None and published[0] > 0
    # Every kind of step, run by the least-privileged roles, keeps the engine's invariants.
    assert audit_problems(conn, finished=True) == []


def test_worker_cannot_change_the_schema_the_catalog_or_history(
    conn: psycopg.Connection, register: Callable[[str], None], login: Callable[[str], str]
) -> None:
    register("examples")
    kv.set_value(conn, "api_token", "hunter2", secret=True)
    execution_id = start(conn, "examples.hello_join")
    worker_dsn = login("attune_worker")
    with db.connect(worker_dsn) as worker:
        # It reads what it needs, kv (secrets) included.
        assert worker.execute(
            "SELECT value FROM attune.kv WHERE key = 'api_token' AND secret"
        ).fetchone() == ("hunter2",)
        # No DDL.
        for statement in (
            "DROP TABLE attune.task_execution",
            "DROP TABLE attune.kv",
            "ALTER TABLE attune.task_execution ADD COLUMN mine int",
            "ALTER TABLE attune.workflow_execution DISABLE TRIGGER USER",
            "ALTER TABLE attune.execution_event DROP CONSTRAINT execution_event_pkey",
            "CREATE TABLE attune.mine (a int)",
            "CREATE VIEW attune.mine AS SELECT 1",
            "CREATE INDEX mine ON attune.task_execution (task_name)",
            "CREATE FUNCTION attune.mine() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "DROP FUNCTION attune.cancel_execution(bigint, text)",
            "DROP VIEW attune.queue_depth",
            "DROP SCHEMA attune CASCADE",
            "CREATE SCHEMA mine",
            "TRUNCATE attune.task_execution CASCADE",
        ):
            _refused(worker, statement)
        # Nor can it give itself another role.
        _refused(worker, f"GRANT attune_submitter TO {_user(worker_dsn)}")
        # No deletes, no rewriting the audit log.
        for statement in (
            "DELETE FROM attune.workflow_execution",
            "DELETE FROM attune.task_execution",
            "DELETE FROM attune.task_state",
            "DELETE FROM attune.inquiry",
            "DELETE FROM attune.worker",
            "DELETE FROM attune.execution_event",
            "UPDATE attune.execution_event SET actor = 'someone else'",
        ):
            _refused(worker, statement)
        # Registration and kv writes are the owner's.
        for statement in (
            "INSERT INTO attune.pack (ref, label, version) VALUES ('mine', 'x', '1')",
            "UPDATE attune.workflow_definition SET enabled = false",
            "DELETE FROM attune.action",
            "UPDATE attune.pack SET config = '{}'",
            "INSERT INTO attune.kv (key, value) VALUES ('k', '1')",
            "UPDATE attune.kv SET value = '1'",
            "DELETE FROM attune.kv",
            "INSERT INTO attune.schema_migration (version, name) VALUES (9999, 'x')",
        ):
            _refused(worker, statement)
        # The control functions are the submitter's API, not the worker's.
        _refused(worker, "SELECT attune.cancel_execution(%s)", (execution_id,))
    assert conn.execute(
        "SELECT count(*) FROM attune.workflow_execution WHERE id = %s", (execution_id,)
    ).fetchone() == (1,)


def test_worker_cannot_rewrite_what_runs_forge_audit_rows_or_answers(
    conn: psycopg.Connection, register: Callable[[str], None], login: Callable[[str], str]
) -> None:
    """Issue 7, item 6: as attune_worker, `UPDATE ... SET definition` (or a task row's
    action_ref/input) on a running execution made workers run an arbitrary command, and
    audit rows could carry any actor. Column privileges, a trigger and a definer function
    now allow only the engine's own writes."""
    register("examples")
    worker_dsn = login("attune_worker")
    submitter_dsn = login("attune_submitter")
    with worker_running(worker_dsn), db.connect(submitter_dsn) as submitter:
        approval = start(submitter, "examples.approval")
        inquiry: tuple[int] = _wait_for(  # type: ignore[assignment]
            lambda: submitter.execute(
                "SELECT id FROM attune.pending_inquiries WHERE workflow_execution_id = %s",
                (approval,),
            ).fetchone()
        )
    task = conn.execute(
        "SELECT id FROM attune.task_execution WHERE workflow_execution_id = %s", (approval,)
    ).fetchone()
    assert task is not None
    args = (approval,)
    with db.connect(worker_dsn) as worker:
        for statement in (
            "UPDATE attune.workflow_execution SET definition = '{}' WHERE id = %s",
            "UPDATE attune.workflow_execution SET workflow_ref = 'examples.child' WHERE id = %s",
            "UPDATE attune.workflow_execution SET pack_config = '{}' WHERE id = %s",
            "UPDATE attune.workflow_execution SET requested_by = 'someone' WHERE id = %s",
            "UPDATE attune.workflow_execution SET priority = -1000 WHERE id = %s",
            "UPDATE attune.workflow_execution SET depth = 0, root_id = NULL WHERE id = %s",
            "UPDATE attune.task_execution SET action_ref = 'core.local'"
            " WHERE workflow_execution_id = %s",
            'UPDATE attune.task_execution SET input = \'{"cmd": ["id"]}\''
            " WHERE workflow_execution_id = %s",
            "UPDATE attune.task_execution SET task_name = 'apply', attempt = 9"
            " WHERE workflow_execution_id = %s",
            "UPDATE attune.inquiry SET response = '{\"approved\": true}'"
            " WHERE workflow_execution_id = %s",
            "UPDATE attune.inquiry SET responded_by = 'boss', schema = '{}'"
            " WHERE workflow_execution_id = %s",
            # A running execution's parameters are frozen (a trigger, for every role).
            'UPDATE attune.workflow_execution SET parameters = \'{"change": "rm -rf"}\''
            " WHERE id = %s",
            "INSERT INTO attune.execution_event (workflow_execution_id, kind) VALUES (%s, 'x')",
            "INSERT INTO attune.execution_event (workflow_execution_id, kind, actor)"
            " VALUES (%s, 'task_status', 'someone else')",
            "UPDATE attune.setting SET value = '1000000000' WHERE name = 'max_descendants'"
            " OR %s IS NULL",
        ):
            _refused(worker, statement, args)
        # Nor can it mark an inquiry answered: answers exist only through respond_inquiry.
        with pytest.raises(psycopg.errors.CheckViolation, match="inquiry_responded_has_answer"):
            worker.execute(
                "UPDATE attune.inquiry SET status = 'responded' WHERE id = %s", (inquiry[0],)
            )
        # What it may do: publish events through the definer function, actor = its login.
        worker.execute(
            "SELECT attune.record_publish(%s, %s, %s)",
            ([approval], ["ask"], [Jsonb({"x": 1})]),
        )
        assert worker.execute(
            "SELECT actor, kind FROM attune.execution_event WHERE workflow_execution_id = %s"
            " AND kind = 'publish'",
            args,
        ).fetchall() == [(_user(worker_dsn), "publish")]
        # It reads the token key; the settings too.
        assert worker.execute("SELECT octet_length(key) FROM attune.signing_key").fetchone() == (
            32,
        )
        assert worker.execute("SELECT attune.setting_int('max_descendants')").fetchone() == (10000,)
    with db.connect(submitter_dsn) as submitter:
        _refused(submitter, "SELECT key FROM attune.signing_key")
        _refused(submitter, "UPDATE attune.setting SET value = '0' WHERE name = 'priority_min'")
        _refused(submitter, "SELECT attune.record_publish('{1}', '{x}', '{}')")
        # `who` may not be NULL (it used to skip the assignee check).
        with pytest.raises(psycopg.errors.NullValueNotAllowed, match="who must name"):
            submitter.execute(
                "SELECT attune.respond_inquiry(%s, '{\"approved\": true}', NULL)", (inquiry[0],)
            )
    with db.connect(login("attune_reader")) as reader:
        assert reader.execute("SELECT count(*) > 0 FROM attune.setting").fetchone() == (True,)
        _refused(reader, "SELECT key FROM attune.signing_key")
    row = conn.execute(
        "SELECT t.action_ref, t.input, e.definition IS NOT NULL, i.status"
        " FROM attune.task_execution t JOIN attune.workflow_execution e"
        " ON e.id = t.workflow_execution_id JOIN attune.inquiry i ON i.task_execution_id = t.id"
        " WHERE t.id = %s",
        (task[0],),
    ).fetchone()
    assert row is not None and row[0] == "core.ask" and row[2] and row[3] == "pending"
