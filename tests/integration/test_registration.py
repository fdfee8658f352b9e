"""Registration: content hashes, the registrar's options, unregistering, enabling, listing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from textwrap import dedent

import psycopg
import pytest
from click.testing import CliRunner

from attune_pg import packs, shipped
from attune_pg.cli import cli
from attune_pg.errors import InUseError, NotFoundError, SpecError
from tests.conftest import PACKS
from tests.helpers import start, wait_done

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ECHO = dedent(
    """\
    label: {label}
    version: "1.0.0"
    tags: [{tag}]
    tasks:
      - name: say
        action: core.echo
        input: {{message: "{message}"}}
    """
)


def invoke(dsn: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [*args, "--dsn", dsn])
    return result.exit_code, result.stdout, result.stderr


def make_pack(root: Path, name: str = "demo", **workflows: str) -> Path:
    pack = root / name
    (pack / "workflows").mkdir(parents=True, exist_ok=True)
    (pack / "pack.yaml").write_text(f'ref: {name}\nversion: "1.0.0"\n')
    for stem, text in workflows.items():
        (pack / "workflows" / f"{stem}.yaml").write_text(text)
    return pack


def echo(message: str, label: str = "Echo", tag: str = "demo") -> str:
    return ECHO.format(label=label, message=message, tag=tag)


def definitions(conn: psycopg.Connection, pack: str) -> dict[str, tuple[str, object]]:
    rows = conn.execute(
        "SELECT ref, source, updated_at FROM attune.workflow_definition WHERE pack_ref = %s",
        (pack,),
    ).fetchall()
    return {ref: (source, updated) for ref, source, updated in rows}


def test_shipped_core_pack_is_package_data() -> None:
    core = shipped.pack_dir("core")
    assert (core / "pack.yaml").is_file()
    assert {p.stem for p in (core / "actions").glob("*.yaml")} >= {"echo", "noop", "local"}
    # In a checkout the package data is the top-level packs/ (one source of truth).
    assert core == (PACKS / "core").resolve()


def test_init_registers_the_core_pack_then_reports_it_up_to_date(
    dsn: str, conn: psycopg.Connection
) -> None:
    packs.unregister_pack(conn, "core", force=True)
    conn.commit()
    code, out, err = invoke(dsn, "init")
    assert code == 0, err
    assert "registered pack core 1.0.0: 7 actions" in out
    code, out, _ = invoke(dsn, "init")
    assert code == 0 and "pack core up to date" in out
    refs = {r[0] for r in conn.execute("SELECT ref FROM attune.action WHERE pack_ref = 'core'")}
    assert {"core.echo", "core.noop", "core.local", "core.http_request"} <= refs


def test_unchanged_files_are_skipped_and_changed_ones_replaced(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    pack = make_pack(tmp_path, a=echo("one"), b=echo("two"))
    first = packs.register(conn, pack).packs[0]
    assert sorted(first.added) == ["demo.a", "demo.b"] and first.workflows == 2
    before = definitions(conn, "demo")

    again = packs.register(conn, pack).packs[0]
    assert not again.changed and again.unchanged == 2
    assert definitions(conn, "demo") == before  # not even rewritten (same updated_at)

    (pack / "workflows" / "b.yaml").write_text(echo("TWO"))
    third = packs.register(conn, pack).packs[0]
    assert third.updated == ["demo.b"] and third.unchanged == 1
    after = definitions(conn, "demo")
    assert after["demo.a"] == before["demo.a"]
    assert "TWO" in str(after["demo.b"][0])


def test_a_deleted_file_is_unregistered_and_new_starts_are_refused(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    pack = make_pack(tmp_path, a=echo("one"), b=echo("two"))
    packs.register(conn, pack)
    (pack / "workflows" / "b.yaml").unlink()
    report = packs.register(conn, pack).packs[0]
    assert report.removed == ["demo.b"] and report.workflows == 1
    with pytest.raises(
        psycopg.errors.ForeignKeyViolation, match=r"unknown workflow (or action )?'demo\.b'"
    ):
        start(conn, "demo.b")


def test_an_unchanged_workflow_is_checked_again_when_an_action_it_calls_changes(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    pack = make_pack(tmp_path, uses=echo("x").replace("core.echo", "demo.say"))
    (pack / "actions").mkdir()
    action = pack / "actions" / "say.yaml"
    action.write_text(
        "name: say\nrunner: builtin\nentry_point: echo\n"
        "parameters:\n  message: {type: string, required: true}\n"
    )
    packs.register(conn, pack)
    action.write_text(
        "name: say\nrunner: builtin\nentry_point: echo\n"
        "parameters:\n  text: {type: string, required: true}\n"
    )
    with pytest.raises(SpecError, match=r"uses\.yaml:\d+: .*unknown input 'message'"):
        packs.register(conn, pack)
    params = conn.execute("SELECT parameters FROM attune.action WHERE ref = 'demo.say'").fetchone()
    assert params is not None and "message" in params[0]["properties"]  # nothing changed


def test_all_or_nothing_by_default_and_skip_invalid_registers_the_rest(
    dsn: str, conn: psycopg.Connection, tmp_path: Path
) -> None:
    pack = make_pack(tmp_path, good=echo("fine"), also=echo("fine too"))
    packs.register(conn, pack)
    conn.commit()
    (pack / "workflows" / "also.yaml").write_text(echo("changed"))
    (pack / "workflows" / "new.yaml").write_text(echo("new"))
    (pack / "workflows" / "good.yaml").write_text(echo("x").replace("core.echo", "core.nope"))

    code, out, err = invoke(dsn, "packs", "register", str(pack))
    assert code == 3 and out == ""
    assert len(err.strip().splitlines()) == 1 and "good.yaml:" in err and "core.nope" in err
    assert set(definitions(conn, "demo")) == {"demo.good", "demo.also"}

    code, out, err = invoke(dsn, "packs", "register", str(pack), "--skip-invalid")
    assert code == 3, out + err
    assert "registered pack demo 1.0.0: 0 actions, 3 workflows (1 new, 1 updated" in out
    lines = err.strip().splitlines()
    assert lines[0].startswith("invalid: "), err
    assert "good.yaml:6: tasks[0] (say).action:" in lines[0], err
    assert "unknown action 'core.nope'" in lines[0]
    assert lines[-1].startswith("error: 1 invalid file skipped")
    now = definitions(conn, "demo")
    assert set(now) == {"demo.good", "demo.also", "demo.new"}
    assert "core.echo" in str(now["demo.good"][0])  # the invalid file kept its old version
    assert "changed" in str(now["demo.also"][0])


def test_no_update_only_adds(dsn: str, conn: psycopg.Connection, tmp_path: Path) -> None:
    pack = make_pack(tmp_path, a=echo("one"), gone=echo("bye"))
    packs.register(conn, pack)
    conn.commit()
    (pack / "workflows" / "a.yaml").write_text(echo("ONE"))
    code, _, err = invoke(dsn, "packs", "register", str(pack), "--no-update")
    assert code == 3 and "a.yaml" in err and "--no-update refuses to replace it" in err
    (pack / "workflows" / "a.yaml").write_text(echo("one"))
    (pack / "workflows" / "gone.yaml").unlink()
    (pack / "workflows" / "b.yaml").write_text(echo("two"))
    code, _, err = invoke(dsn, "packs", "register", str(pack), "--no-update")
    assert code == 0, err
    assert set(definitions(conn, "demo")) == {"demo.a", "demo.b", "demo.gone"}


def test_max_file_size(dsn: str, conn: psycopg.Connection, tmp_path: Path) -> None:
    pack = make_pack(tmp_path, a=echo("x" * 3000))
    code, _, err = invoke(dsn, "packs", "register", str(pack), "--max-file-size", "2KB")
    assert code == 3 and "a.yaml: file is larger than 2 KB" in err
    code, _, err = invoke(dsn, "packs", "register", str(pack), "--max-file-size", "nonsense")
    assert code == 2 and "nonsense" in err
    big = make_pack(tmp_path / "big", a=echo("y" * 1_100_000))
    code, _, err = invoke(dsn, "packs", "register", str(big))
    assert code == 3 and "file is larger than 1 MB" in err
    code, _, err = invoke(dsn, "packs", "register", str(big), "--max-file-size", "2MB")
    assert code == 0, err
    assert "demo.a" in definitions(conn, "demo")


def test_unregistering_a_pack_refuses_new_starts_while_running_executions_finish(
    dsn: str,
    conn: psycopg.Connection,
    register,
    worker_thread,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    pack = make_pack(
        tmp_path,
        slow=dedent(
            """\
            label: Slow then echo with an action of this pack
            version: "1.0.0"
            tasks:
              - name: wait
                action: core.sleep
                input: {seconds: 1.5}
                on_success: say
              - name: say
                action: demo.say
                input: {message: done}
            output_map: {said: "{{ task.say.result.message }}"}
            """
        ),
    )
    (pack / "actions").mkdir()
    (pack / "actions" / "say.yaml").write_text(
        "name: say\nrunner: builtin\nentry_point: echo\n"
        "parameters:\n  message: {type: string, required: true}\n"
    )
    packs.register(conn, pack)
    conn.commit()
    worker_thread()
    running = start(conn, "demo.slow")
    conn.commit()
    code, out, err = invoke(dsn, "packs", "unregister", "demo")
    assert code == 0 and "unregistered pack demo (1 workflows)" in out, err
    with pytest.raises(
        psycopg.errors.ForeignKeyViolation, match=r"unknown workflow (or action )?'demo\.slow'"
    ):
        start(conn, "demo.slow")
    conn.rollback()
    with pytest.raises(psycopg.errors.CheckViolation, match=r"'demo\.say' is disabled"):
        start(conn, "demo.say")  # its plain action cannot be started on its own either
    conn.rollback()
    row = wait_done(conn, running)
    assert row["status"] == "succeeded" and row["output"] == {"said": "done"}
    code, out, _ = invoke(dsn, "executions", "show", str(running), "--json")
    assert code == 0 and json.loads(out)["workflow_ref"] == "demo.slow"  # history stays
    code, out, _ = invoke(dsn, "packs", "list")
    assert "demo" not in out.split()
    code, out, _ = invoke(dsn, "packs", "list", "--all")
    assert "demo" in out.split()
    code, _, err = invoke(dsn, "packs", "unregister", "demo")
    assert code == 4 and "pack 'demo' is not registered" in err
    # Registering it again brings everything back.
    assert packs.register(conn, pack).packs[0].added == ["demo.slow"]


def test_unregister_refuses_what_other_workflows_call_unless_forced(
    dsn: str,
    conn: psycopg.Connection,
    register,  # type: ignore[no-untyped-def]
) -> None:
    register("examples")
    conn.commit()
    code, _, err = invoke(dsn, "workflows", "unregister", "examples.child")
    assert code == 4 and "examples.nested (calls examples.child)" in err and "--force" in err
    code, _, err = invoke(dsn, "packs", "unregister", "core")
    assert code == 4 and "pack 'core' is used by registered workflows" in err
    code, out, err = invoke(dsn, "workflows", "unregister", "examples.child", "--force")
    assert code == 0 and "unregistered workflow examples.child" in out, err
    with pytest.raises(NotFoundError):
        packs.unregister_workflow(conn, "examples.child")
    with pytest.raises(InUseError):
        packs.unregister_pack(conn, "core")


def test_sync_unregisters_packs_whose_directory_is_gone(
    dsn: str, conn: psycopg.Connection, tmp_path: Path
) -> None:
    root = tmp_path / "packs"
    make_pack(root, "one", a=echo("1"))
    make_pack(root, "two", b=echo("2"))
    code, out, err = invoke(dsn, "packs", "sync", str(root))
    assert code == 0 and "registered pack one" in out and "registered pack two" in out, err
    shutil.rmtree(root / "two")
    (root / "one" / "workflows" / "c.yaml").write_text(echo("3"))
    code, out, err = invoke(dsn, "packs", "sync", str(root))
    assert code == 0, err
    assert "unregistered pack two (its directory is gone)" in out
    assert set(definitions(conn, "one")) == {"one.a", "one.c"}
    assert definitions(conn, "two") == {}


def test_enable_disable_and_disabled_survives_registration(
    dsn: str, conn: psycopg.Connection, tmp_path: Path
) -> None:
    pack = make_pack(tmp_path, a=echo("one"))
    packs.register(conn, pack)
    conn.commit()
    code, out, _ = invoke(dsn, "workflows", "disable", "demo.a")
    assert code == 0 and "disabled demo.a" in out
    with pytest.raises(psycopg.errors.CheckViolation, match=r"workflow 'demo\.a' is disabled"):
        start(conn, "demo.a")
    conn.rollback()
    (pack / "workflows" / "a.yaml").write_text(echo("changed"))
    packs.register(conn, pack)
    enabled = conn.execute(
        "SELECT enabled FROM attune.workflow_definition WHERE ref = 'demo.a'"
    ).fetchone()
    assert enabled == (False,)
    conn.commit()
    code, out, _ = invoke(dsn, "workflows", "enable", "demo.a")
    assert code == 0 and "enabled demo.a" in out
    assert start(conn, "demo.a") > 0
    code, _, err = invoke(dsn, "workflows", "enable", "demo.nope")
    assert code == 4 and "demo.nope" in err


def test_workflows_list_filters(dsn: str, conn: psycopg.Connection, tmp_path: Path) -> None:
    packs.register(conn, make_pack(tmp_path, "alpha", a=echo("1", "Deploy the app", "deploy")))
    packs.register(conn, make_pack(tmp_path, "beta", b=echo("2", "Backup", "ops")))
    packs.register(conn, make_pack(tmp_path, "gamma", c=echo("3", "Deploy db", "deploy")))
    packs.set_enabled(conn, "gamma.c", False)
    conn.commit()

    def refs(*args: str) -> list[str]:
        code, out, err = invoke(dsn, "workflows", "list", "--json", *args)
        assert code == 0, err
        return [row["ref"] for row in json.loads(out) if row["pack"] in ("alpha", "beta", "gamma")]

    assert refs() == ["alpha.a", "beta.b", "gamma.c"]
    assert refs("--pack", "beta") == ["beta.b"]
    assert refs("--tag", "deploy") == ["alpha.a", "gamma.c"]
    assert refs("--tag", "deploy", "--enabled") == ["alpha.a"]
    assert refs("--disabled") == ["gamma.c"]
    assert refs("--search", "DEPLOY") == ["alpha.a", "gamma.c"]
    assert refs("--search", "backup", "--pack", "alpha") == []
    code, out, _ = invoke(dsn, "workflows", "list", "--tag", "ops")
    assert code == 0 and "beta.b" in out and "alpha.a" not in out
