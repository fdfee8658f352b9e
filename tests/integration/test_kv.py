"""The kv store on a real database: the CLI, templates through the loaded kv, secret tokens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from attune_pg import template
from attune_pg.cli import cli
from attune_pg.cli.kv import register as register_kv
from attune_pg.engine.plan import SnapshotKV
from attune_pg.errors import ActionError, AttuneError, TemplateError
from attune_pg.secrets import (
    Binding,
    redact_secrets,
    resolve_secrets,
    secret_token,
    signed_token,
)
from attune_pg.store import kv, load, lock
from tests.helpers import start, tasks, wait_done

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

if "kv" not in cli.commands:
    register_kv(cli)

PASSWORD = "hunter2-Sup3r-s3cret"


def invoke(dsn: str, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["kv", *args, "--dsn", dsn], input=stdin)
    return result.exit_code, result.stdout, result.stderr


# ------------------------------------------------------------------ CLI


def test_cli_set_get_list_delete(dsn: str, conn: psycopg.Connection) -> None:
    assert invoke(dsn, "set", "app.color", "blue") == (0, "set app.color\n", "")
    assert invoke(dsn, "set", "app.limits", '{"cpu": 2, "tags": ["a"]}', "--json")[0] == 0
    assert invoke(dsn, "set", "other", "42")[0] == 0
    assert kv.get_value(conn, "app.limits") == ({"cpu": 2, "tags": ["a"]}, False)
    assert kv.get_value(conn, "other") == ("42", False)  # a string without --json

    assert invoke(dsn, "get", "app.color") == (0, "blue\n", "")
    assert invoke(dsn, "get", "app.limits") == (0, '{"cpu": 2, "tags": ["a"]}\n', "")

    code, out, _ = invoke(dsn, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["KEY", "SECRET", "VALUE", "UPDATED_BY", "UPDATED_AT"]
    assert [line.split()[0] for line in lines[1:]] == ["app.color", "app.limits", "other"]
    code, out, _ = invoke(dsn, "list", "--prefix", "app.")
    assert code == 0 and "app.limits" in out and "other" not in out
    assert invoke(dsn, "list", "--prefix", "zzz")[1] == "(none)\n"

    assert invoke(dsn, "delete", "app.color") == (0, "deleted app.color\n", "")
    assert kv.get_value(conn, "app.color") is None
    code, _, err = invoke(dsn, "delete", "app.color")
    assert code == 4 and err == "error: kv key 'app.color' is not set\n"
    code, _, err = invoke(dsn, "get", "app.color")
    assert code == 4 and "kv key 'app.color' is not set" in err


def test_cli_set_replaces_and_records_who(dsn: str, conn: psycopg.Connection) -> None:
    assert invoke(dsn, "set", "k", "one", "--secret")[0] == 0
    assert invoke(dsn, "set", "k", "[1, 2]", "--json")[0] == 0
    assert kv.get_value(conn, "k") == ([1, 2], False)  # no longer secret
    row = conn.execute("SELECT updated_by = current_user FROM attune.kv WHERE key = 'k'")
    assert row.fetchone() == (True,)


def test_cli_masks_secrets(dsn: str, conn: psycopg.Connection) -> None:
    code, out, err = invoke(dsn, "set", "db.password", PASSWORD, "--secret")
    assert code == 0 and out == "set db.password (secret)\n" and PASSWORD not in out + err
    assert invoke(dsn, "set", "db.creds", '{"pw": "pa55"}', "--secret", "--json")[0] == 0
    assert kv.get_value(conn, "db.password") == (PASSWORD, True)

    assert invoke(dsn, "get", "db.password") == (0, "***\n", "")
    assert invoke(dsn, "get", "db.password", "--show-secret") == (0, PASSWORD + "\n", "")
    assert invoke(dsn, "get", "db.creds", "--show-secret")[1] == '{"pw": "pa55"}\n'
    code, out, _ = invoke(dsn, "list")
    assert code == 0 and PASSWORD not in out and "pa55" not in out
    assert [line.split()[:3] for line in out.splitlines()[1:]] == [
        ["db.creds", "yes", "***"],
        ["db.password", "yes", "***"],
    ]


def test_cli_reads_the_value_from_stdin(dsn: str, conn: psycopg.Connection) -> None:
    code, out, _ = invoke(dsn, "set", "tok", "-", "--secret", stdin=PASSWORD + "\n")
    assert code == 0 and PASSWORD not in out
    assert kv.get_value(conn, "tok") == (PASSWORD, True)
    assert invoke(dsn, "set", "n", "-", "--json", stdin="[1, true]\n")[0] == 0
    assert kv.get_value(conn, "n") == ([1, True], False)


def test_cli_refuses_bad_input(dsn: str, conn: psycopg.Connection) -> None:
    code, _, err = invoke(dsn, "set", "k", "{nope", "--json")
    assert code == 2 and err.startswith("error: VALUE is not valid JSON")
    code, _, err = invoke(dsn, "set", "a⟦b", "x")
    assert code == 1 and "invalid kv key" in err
    assert conn.execute("SELECT count(*) FROM attune.kv").fetchone() == (0,)


# ------------------------------------------------------------------ store and SnapshotKV


def _seed(conn: psycopg.Connection) -> None:
    kv.set_value(conn, "color", "blue")
    kv.set_value(conn, "limits", {"cpu": 2})
    kv.set_value(conn, "db_password", PASSWORD, secret=True)
    kv.set_value(conn, "creds", {"user": "bob", "pw": "pa55"}, secret=True)


KEYS = ("color", "limits", "db_password", "creds", "nope", "x")


def _snapshot(conn: psycopg.Connection) -> SnapshotKV:
    """What an advance loads for templates before the conductor runs."""
    return SnapshotKV(load.kv_entries(conn, KEYS))


def _render(conn: psycopg.Connection, value: Any, binding: Binding | None = None) -> Any:
    scope = template.build_scope(
        parameters={},
        vars={},
        tasks={},
        pack_config=None,
        system={},
        kv=_snapshot(conn),
        token=None if binding is None else (lambda key: signed_token(key, binding)),
    )
    return template.render(value, scope, where="task 't' input")


def test_store_functions(conn: psycopg.Connection) -> None:
    _seed(conn)
    assert kv.get_value(conn, "creds") == ({"user": "bob", "pw": "pa55"}, True)
    assert kv.get_value(conn, "nope") is None
    rows = kv.list_values(conn)
    assert [(r.key, r.value, r.secret) for r in rows] == [
        ("color", "blue", False),
        ("creds", None, True),  # secret values are not even read
        ("db_password", None, True),
        ("limits", {"cpu": 2}, False),
    ]
    assert [r.key for r in kv.list_values(conn, "c")] == ["color", "creds"]
    assert kv.list_values(conn, "%") == []  # a prefix, not a LIKE pattern
    assert kv.delete_value(conn, "color") and not kv.delete_value(conn, "color")
    with pytest.raises(AttuneError, match="invalid kv key"):
        kv.set_value(conn, "", 1)


def test_snapshot_kv_flags_and_refusals(conn: psycopg.Connection) -> None:
    _seed(conn)
    entries = load.kv_entries(conn, KEYS)
    assert entries["db_password"] is not None and entries["db_password"].value is None
    assert entries["nope"] is None  # loaded, not set
    store = SnapshotKV(entries)
    assert isinstance(store, template.scope.SecretFlagKV)
    assert (store.is_secret("db_password"), store.is_secret("color"), store.is_secret("x")) == (
        True,
        False,
        None,
    )
    assert store.get("color") == "blue" and store.get("x", 7) == 7
    with pytest.raises(TemplateError, match=r"is secret; use kv\.get_secret"):
        store.get("db_password")
    with pytest.raises(KeyError, match="not loaded"):
        store.get_secret("db_password")  # a secret's value never reaches the conductor
    assert store.missed == set()
    assert store.get("unloaded", 1) == 1 and store.is_secret("other") is None
    assert store.missed == {"unloaded", "other"}  # the advance reruns with these loaded


def test_templates_through_snapshot_kv(conn: psycopg.Connection) -> None:
    _seed(conn)
    assert _render(conn, "{{ kv.get('color') }}") == "blue"
    assert _render(conn, "{{ kv.get('limits') }}") == {"cpu": 2}
    assert _render(conn, "{{ kv.get('nope', 'dflt') }}") == "dflt"
    assert _render(conn, "{{ kv.get_secret('db_password') }}") == "⟦secret:db_password⟧"
    assert _render(conn, "Bearer {{ kv.get_secret('db_password') }}") == (
        "Bearer ⟦secret:db_password⟧"
    )
    assert _render(conn, {"c": "{{ kv.get_secret('creds') }}"}) == {"c": secret_token("creds")}

    cases = {
        "{{ kv.get('db_password') }}": "kv key 'db_password' is secret; use kv.get_secret",
        "{{ kv.get_secret('color') }}": "kv key 'color' is not a secret; use kv.get",
        "{{ kv.get_secret('nope') }}": "kv key 'nope' is not set",
    }
    for text, message in cases.items():
        with pytest.raises(TemplateError) as info:
            _render(conn, text)
        assert message in str(info.value) and "task 't' input" in str(info.value)
        assert PASSWORD not in str(info.value)
    # a refused read leaves the connection usable
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_resolve_with_secret_lookup(conn: psycopg.Connection) -> None:
    _seed(conn)
    binding = Binding(7, "t", lock.signing_key(conn))
    template_ = {
        "dsn": "postgres://app:{{ kv.get_secret('db_password') }}@db",
        "c": "{{ kv.get_secret('creds') }}",
    }
    rendered = _render(conn, template_, binding)
    # Unsigned references (rendered outside a task's input) are never resolved.
    with pytest.raises(ActionError, match="not a valid secret token for this task"):
        resolve_secrets(_render(conn, template_), kv.secret_lookup(conn), binding)
    # Nor are tokens of another task or execution.
    for other in (Binding(7, "u", binding.signing_key), Binding(8, "t", binding.signing_key)):
        with pytest.raises(ActionError, match="not a valid secret token"):
            resolve_secrets(rendered, kv.secret_lookup(conn), other)
    resolved, texts = resolve_secrets(rendered, kv.secret_lookup(conn), binding)
    assert resolved == {
        "dsn": f"postgres://app:{PASSWORD}@db",
        "c": {"user": "bob", "pw": "pa55"},
    }
    assert texts == {PASSWORD, "bob", "pa55"}
    assert redact_secrets({"out": f"connected as bob with {PASSWORD}"}, texts) == {
        "out": "connected as *** with ***"
    }
    # deleted, or no longer secret, between dispatch and run: a clear error
    kv.set_value(conn, "creds", "now plain")
    with pytest.raises(ActionError, match="secret 'creds' is not set"):
        resolve_secrets(rendered, kv.secret_lookup(conn), binding)
    kv.delete_value(conn, "db_password")
    with pytest.raises(ActionError, match="secret 'db_password' is not set"):
        resolve_secrets(rendered["dsn"], kv.secret_lookup(conn), binding)


# ------------------------------------------------------------------ through the engine

WORKFLOW = """\
label: kv secrets
version: "1.0.0"
tasks:
  - name: call
    action: core.echo
    input:
      message: "Bearer {{ kv.get_secret('api_token') }} for {{ kv.get('region') }}"
"""

BAD_WORKFLOW = """\
label: kv misuse
version: "1.0.0"
tasks:
  - name: call
    action: core.echo
    input:
      message: "{{ kv.get('api_token') }}"
"""


def _pack(root: Path) -> Path:
    pack = root / "kvtest"
    (pack / "workflows").mkdir(parents=True)
    (pack / "pack.yaml").write_text('ref: kvtest\nlabel: kv tests\nversion: "1.0.0"\n')
    (pack / "workflows" / "secret.yaml").write_text(WORKFLOW)
    (pack / "workflows" / "misuse.yaml").write_text(BAD_WORKFLOW)
    return pack


def _everything_stored(conn: psycopg.Connection) -> str:
    """Every row of every attune table except kv itself, as text."""
    names = [
        row[0]
        for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'attune'"
            " AND table_type = 'BASE TABLE' AND table_name <> 'kv'"
        )
    ]
    return "\n".join(
        str(row[0])
        for name in names
        for row in conn.execute(f'SELECT to_jsonb(t)::text FROM attune."{name}" t')
    )


def test_task_input_stores_a_token_not_the_secret(
    conn: psycopg.Connection,
    register: Callable[[Path | str], None],
    worker_thread: Callable[..., object],
    tmp_path: Path,
) -> None:
    kv.set_value(conn, "api_token", PASSWORD, secret=True)
    kv.set_value(conn, "region", "eu")
    register(_pack(tmp_path))
    worker_thread()
    row = wait_done(conn, start(conn, "kvtest.secret"))
    assert row["status"] == "succeeded", row["error"]
    (task,) = tasks(conn, row["id"])
    token = signed_token("api_token", Binding(row["id"], "call", lock.signing_key(conn)))
    assert task["input"] == {"message": f"Bearer {token} for eu"}
    assert PASSWORD not in _everything_stored(conn)

    misuse = wait_done(conn, start(conn, "kvtest.misuse"))
    assert misuse["status"] == "failed"
    assert "kv key 'api_token' is secret; use kv.get_secret" in misuse["error"]["message"]
    assert PASSWORD not in _everything_stored(conn)


COMPUTED_KEYS = """\
label: kv keys computed by templates
version: "1.0.0"
parameters:
  region: {type: string}
vars:
  - zone: "{{ kv.get('zone_' ~ parameters.region) }}"
tasks:
  - name: call
    action: core.echo
    with_items: "{{ [1, 2] }}"
    input:
      message: >-
        {{ vars.zone }} {{ kv.get('host_' ~ item, 'none') }} {{ kv.get_secret('tok_' ~ item) }}
"""


def test_kv_keys_computed_by_templates_are_loaded_on_a_rerun(
    conn: psycopg.Connection,
    register: Callable[[Path | str], None],
    worker_thread: Callable[..., object],
    tmp_path: Path,
) -> None:
    # None of these keys is written literally in the workflow: the advance cannot load
    # them before the conductor runs, so its templates' misses rerun the transaction.
    kv.set_value(conn, "zone_eu", "eu-west")
    kv.set_value(conn, "host_1", "alpha")
    kv.set_value(conn, "tok_1", "s1", secret=True)
    kv.set_value(conn, "tok_2", "s2", secret=True)
    pack = _pack(tmp_path)
    (pack / "workflows" / "computed.yaml").write_text(COMPUTED_KEYS)
    register(pack)
    worker_thread()
    row = wait_done(conn, start(conn, "kvtest.computed", {"region": "eu"}))
    assert row["status"] == "succeeded", row["error"]
    messages = sorted(t["input"]["message"] for t in tasks(conn, row["id"]))
    key = lock.signing_key(conn)
    assert messages == sorted(
        f"eu-west {host} {signed_token(tok, Binding(row['id'], 'call', key))}"
        for host, tok in (("alpha", "tok_1"), ("none", "tok_2"))
    )
