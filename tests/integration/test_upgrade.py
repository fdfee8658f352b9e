"""Upgrading keeps data: the last migration is applied to a database that already
holds executions in every state, with a worker running, and they all finish."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from attune_pg import db
from attune_pg.spec.model import ActionSpec
from attune_pg.spec.packfiles import load_packs
from attune_pg.store import migrate
from tests.conftest import PACKS, dsn_for
from tests.helpers import audit_problems, poll_until, start, wait_done, worker_running

LATEST = max(m.version for m in migrate.available())
PREVIOUS = max(m.version for m in migrate.available() if m.version < LATEST)


def _register_as_before(conn: psycopg.Connection, path: Path) -> None:
    """Register packs with the columns every schema version has, as the code before the
    latest migration did (today's registrar may need the latest migration's columns)."""
    known = {row[0]["ref"]: ActionSpec.from_dict(row[0])
             for row in conn.execute("SELECT spec FROM attune.action")}  # fmt: skip
    with conn.transaction():
        for pack in load_packs(path, set(known), known):
            conn.execute(
                "INSERT INTO attune.pack (ref, label, version, config, path)"
                " VALUES (%s, %s, %s, %s, %s)",
                (pack.ref, pack.label, pack.version, Jsonb(pack.config), pack.path),
            )
            for a in pack.actions:
                conn.execute(
                    "INSERT INTO attune.action (ref, pack_ref, name, runner, entry_point,"
                    " parameters, output_schema, timeout, spec)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (a.ref, pack.ref, a.name, a.runner, a.entry_point, Jsonb(a.parameters),
                     None if a.output_schema is None else Jsonb(a.output_schema), a.timeout,
                     Jsonb(a.to_dict())),
                )  # fmt: skip
            for wf in pack.workflows:
                conn.execute(
                    "INSERT INTO attune.workflow_definition (ref, pack_ref, label, version,"
                    " parameters, definition, source, source_file)"
                    " VALUES (%s, %s, %s, %s, %s, %s, '', %s)",
                    (wf.ref, pack.ref, wf.label, wf.version, Jsonb(wf.parameters),
                     Jsonb(wf.to_dict()), wf.source_file),
                )  # fmt: skip


@pytest.fixture
def old_dsn(server_dsn: str) -> Iterator[str]:
    """A database migrated to the version before the latest (not the test template)."""
    name = f"attune_upgrade_{time.monotonic_ns()}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield dsn_for(server_dsn, name)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _wait(conn: psycopg.Connection, sql: str, args: tuple[object, ...]) -> None:
    poll_until(lambda: conn.execute(sql, args).fetchone(), sql, timeout=30)


def test_upgrade_with_executions_in_every_state(old_dsn: str) -> None:
    if PREVIOUS < migrate.REQUIRED_SCHEMA:
        pytest.skip(
            f"this code needs schema {migrate.REQUIRED_SCHEMA}: no worker of it can run on"
            f" {PREVIOUS} before the upgrade (the test runs again once a later migration"
            " exists)"
        )

    with db.connect(old_dsn) as conn:
        migrate.migrate(conn, target=PREVIOUS)
        assert migrate.current_version(conn) == PREVIOUS
        _register_as_before(conn, PACKS / "core")
        _register_as_before(conn, PACKS / "examples")
        with worker_running(old_dsn, lease_seconds=5, poll_seconds=0.5):
            done = wait_done(conn, start(conn, "examples.hello_join"))
            failed = wait_done(conn, start(conn, "examples.hello_join", {"name": 3}))
            running = start(conn, "examples.long_running", {"seconds": 1.5})
            paused = start(conn, "examples.long_running", {"seconds": 0.3})
            waiting = start(conn, "examples.approval")
            _wait(
                conn,
                "SELECT 1 FROM attune.task_execution WHERE workflow_execution_id = %s"
                " AND status = 'running'",
                (paused,),
            )
            conn.execute("SELECT attune.pause_execution(%s)", (paused,))
            _wait(conn, "SELECT 1 FROM attune.inquiry WHERE workflow_execution_id = %s", (waiting,))
            _wait(
                conn,
                "SELECT 1 FROM attune.workflow_execution WHERE id = %s AND status = 'paused'",
                (paused,),
            )
            requested = start(conn, "examples.child", {"name": "later"})

            applied = migrate.migrate(conn)  # with the worker running
            assert [m.version for m in applied] == [LATEST]

            conn.execute("SELECT attune.resume_execution(%s)", (paused,))
            (inquiry,) = conn.execute(
                "SELECT id FROM attune.inquiry WHERE workflow_execution_id = %s", (waiting,)
            ).fetchone()  # type: ignore[misc]
            conn.execute("SELECT attune.respond_inquiry(%s, '{\"approved\": true}')", (inquiry,))
            for execution_id in (running, paused, waiting, requested):
                row = wait_done(conn, execution_id, timeout=30)
                assert row["status"] == "succeeded", (execution_id, row["error"])
            for kept in (done, failed):
                row = wait_done(conn, kept["id"])
                assert (row["status"], row["output"]) == (kept["status"], kept["output"])
        assert audit_problems(conn, finished=True) == []


def test_rows_from_before_0007_read_with_its_defaults(old_dsn: str) -> None:
    """Executions requested on schema 6 (before task_state.route/join_from and
    workflow_execution.started_by existed) are finished after the upgrade by a worker of
    this code: no started_by reads as requested_by, every old row is in the root route."""
    with db.connect(old_dsn) as conn:
        migrate.migrate(conn, target=6)
        assert migrate.current_version(conn) == 6
        _register_as_before(conn, PACKS / "core")
        _register_as_before(conn, PACKS / "examples")
        joined = start(conn, "examples.hello_join")
        waiting = start(conn, "examples.approval")
        child = start(conn, "examples.child", {"name": "later"})

        applied = migrate.migrate(conn)
        assert 7 in [m.version for m in applied]
        old = conn.execute(
            "SELECT started_by, requested_by FROM attune.workflow_execution WHERE id = %s",
            (joined,),
        ).fetchone()
        assert old is not None and old[0] is None and old[1]
        with worker_running(old_dsn, lease_seconds=5, poll_seconds=0.5):
            _wait(conn, "SELECT 1 FROM attune.inquiry WHERE workflow_execution_id = %s", (waiting,))
            (inquiry,) = conn.execute(
                "SELECT id FROM attune.inquiry WHERE workflow_execution_id = %s", (waiting,)
            ).fetchone()  # type: ignore[misc]
            conn.execute("SELECT attune.respond_inquiry(%s, '{\"approved\": true}')", (inquiry,))
            for execution_id in (joined, waiting, child):
                row = wait_done(conn, execution_id, timeout=30)
                assert row["status"] == "succeeded", (execution_id, row["error"])
            routes = conn.execute(
                "SELECT DISTINCT route FROM attune.task_state WHERE workflow_execution_id = %s",
                (joined,),
            ).fetchall()
            assert routes == [("",)]
        assert audit_problems(conn, finished=True) == []
