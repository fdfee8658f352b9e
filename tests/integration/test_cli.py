"""The `attune-pg` CLI against a real database (click's runner, same process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from attune_pg.cli import cli
from attune_pg.store import migrate
from tests.conftest import FIXTURE_PACKS, PACKS

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def invoke(dsn: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [*args, "--dsn", dsn])
    return result.exit_code, result.stdout, result.stderr


def test_init_is_idempotent(dsn: str) -> None:
    latest = max(m.version for m in migrate.available())
    code, out, _ = invoke(dsn, "init")
    assert code == 0 and f"schema at version {latest}" in out and "applied" not in out


def test_register_and_list_workflows(dsn: str) -> None:
    code, out, _ = invoke(dsn, "packs", "register", str(PACKS / "examples"))
    assert code == 0, out
    assert "registered pack examples" in out
    code, out, _ = invoke(dsn, "workflows", "list")
    assert code == 0 and "examples.hello_join" in out
    code, out, _ = invoke(dsn, "workflows", "show", "examples.hello_join")
    assert code == 0 and "join: 2" in out


def test_broken_pack_registers_nothing_and_names_the_file(
    dsn: str, conn: psycopg.Connection
) -> None:
    before = conn.execute("SELECT count(*) FROM attune.workflow_definition").fetchone()
    code, _, err = invoke(dsn, "packs", "register", str(FIXTURE_PACKS / "broken"))
    assert code == 3
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "bad_target.yaml:6" in lines[0] and "nowhere" in lines[0]
    assert conn.execute("SELECT count(*) FROM attune.workflow_definition").fetchone() == before
    assert conn.execute("SELECT count(*) FROM attune.pack WHERE ref = 'broken'").fetchone() == (0,)


def test_validate_offline() -> None:
    ok = CliRunner().invoke(
        cli, ["workflows", "validate", str(PACKS / "examples/workflows/hello_join.yaml")]
    )
    assert ok.exit_code == 0 and "examples.hello_join" in ok.stdout
    bad = CliRunner().invoke(
        cli, ["workflows", "validate", str(FIXTURE_PACKS / "broken/workflows/bad_target.yaml")]
    )
    assert bad.exit_code == 3 and "nowhere" in bad.stderr


def test_run_wait_follows_progress_and_exits_zero(dsn: str, register, worker_thread) -> None:  # type: ignore[no-untyped-def]
    register("examples")
    worker_thread()
    code, out, err = invoke(dsn, "run", "examples.hello_join", "-p", "name=Bob", "--wait")
    assert code == 0, out + err
    assert "summarize" in out and "succeeded" in out
    assert '"message": "hello, bob! (11 letters)"' in out
    execution_id = out.split()[1]
    code, out, _ = invoke(dsn, "executions", "show", execution_id, "--json")
    assert code == 0 and json.loads(out)["status"] == "succeeded"
    code, out, _ = invoke(dsn, "executions", "tasks", execution_id)
    assert code == 0 and out.count("succeeded") == 5
    code, out, _ = invoke(dsn, "executions", "list")
    assert code == 0 and "examples.hello_join" in out


def test_run_wait_exits_non_zero_on_failure(dsn: str, register, worker_thread) -> None:  # type: ignore[no-untyped-def]
    register("examples")
    worker_thread()
    code, out, _ = invoke(
        dsn, "run", "examples.hello_join", "--params", '{"name": 7}', "--wait", "--json"
    )
    assert code == 1
    row = json.loads(out)
    assert row["status"] == "failed" and "name" in row["error"]["message"]


def test_run_unknown_workflow_is_one_clear_line(dsn: str) -> None:
    code, _, err = invoke(dsn, "run", "nope.never")
    assert code == 1
    assert err.strip() == "error: unknown workflow or action 'nope.never'"


def test_run_rejects_malformed_params(dsn: str) -> None:
    code, _, err = invoke(dsn, "run", "examples.hello_join", "-p", "novalue")
    assert code == 2 and "expected key=value" in err


def test_db_commands_manage_an_embedded_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ATTUNE_DSN"}
    env["ATTUNE_HOME"] = str(tmp_path / "home")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "attune_pg.cli.entry", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    try:
        assert run("db", "status").returncode == 3
        started = run("db", "start")
        assert started.returncode == 0, started.stderr
        dsn = started.stdout.strip()
        assert dsn.startswith("postgresql://")
        status = run("db", "status")
        assert status.returncode == 0 and "running" in status.stdout
        assert run("db", "url").stdout.strip() == dsn
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        stopped = run("db", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert run("db", "status").returncode == 3


def test_inputs_are_checked_against_registered_actions(dsn: str, tmp_path: Path) -> None:
    pack = tmp_path / "lonely"
    (pack / "workflows").mkdir(parents=True)
    (pack / "pack.yaml").write_text('ref: lonely\nlabel: Lonely\nversion: "1.0.0"\n')
    (pack / "workflows" / "typo.yaml").write_text(
        'label: typo\nversion: "1"\ntasks:\n  - name: say\n    action: core.echo\n'
        "    input: {msg: hi}\n"
    )
    code, _, err = invoke(dsn, "packs", "register", str(pack))
    assert code == 3
    assert "typo.yaml:6" in err and "msg" in err
