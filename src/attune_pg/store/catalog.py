"""Packs, actions, workflow definitions and kv: registration and lookups."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from attune_pg.spec.model import ActionSpec, PackSpec

Json = Any


class ActionCatalog(Mapping[str, ActionSpec]):
    """Actions by ref, loaded once and refreshed when an unknown ref is asked for.

    A worker keeps one; registration of a new pack while it runs is picked up on
    the first miss, so no restart is needed.
    """

    def __init__(self, dsn_conn: psycopg.Connection) -> None:
        self._conn = dsn_conn
        self._actions: dict[str, ActionSpec] = {}
        self.refresh()

    def refresh(self) -> None:
        rows = self._conn.execute("SELECT spec FROM attune.action WHERE enabled").fetchall()
        self._actions = {row[0]["ref"]: ActionSpec.from_dict(row[0]) for row in rows}

    def __getitem__(self, ref: str) -> ActionSpec:
        if ref not in self._actions:
            self.refresh()
        return self._actions[ref]

    def __iter__(self) -> Iterator[str]:
        return iter(self._actions)

    def __len__(self) -> int:
        return len(self._actions)


class DbKV:
    """`kv.get` / `kv.get_secret` for templates, read inside the advance transaction.

    It is a `template.scope.SecretFlagKV`: `is_secret` lets the template layer render
    ``kv.get_secret`` as a token (`attune_pg.secrets`) without reading the value, so
    the conductor never sees a secret. `get` refuses secret keys for the same reason.
    `get_secret` (the value itself) is kept for callers that need it.
    """

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn

    def _read(self, key: str) -> tuple[bool, Json, bool]:
        row = self._conn.execute(
            "SELECT value, secret FROM attune.kv WHERE key = %s", (key,)
        ).fetchone()
        if row is None:
            return False, None, False
        return True, row[0], bool(row[1])

    def is_secret(self, key: str) -> bool | None:
        """True for a secret key, False for a plain one, None when the key is not set."""
        row = self._conn.execute("SELECT secret FROM attune.kv WHERE key = %s", (key,)).fetchone()
        return None if row is None else bool(row[0])

    def has_secret(self, key: str) -> bool:
        """True if `key` is set and marked secret."""
        return self.is_secret(key) is True

    def get(self, key: str, default: Json = None) -> Json:
        found, value, secret = self._read(key)
        if found and secret:
            from attune_pg.errors import TemplateError

            raise TemplateError(f"kv key {key!r} is secret; use kv.get_secret")
        return value if found else default

    def get_secret(self, key: str) -> Json:
        found, value, _ = self._read(key)
        if not found:
            raise KeyError(f"kv key {key!r} is not set")
        return value


def registered_actions(conn: psycopg.Connection) -> dict[str, ActionSpec]:
    return {
        row[0]["ref"]: ActionSpec.from_dict(row[0])
        for row in conn.execute("SELECT spec FROM attune.action")
    }


def registered_action_refs(conn: psycopg.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT ref FROM attune.action")}


def register_packs(
    conn: psycopg.Connection, packs: list[PackSpec], sources: Mapping[str, str]
) -> None:
    """Write validated packs in the caller's transaction: all of them or none.

    Each pack replaces its previous registration wholesale (actions and workflows
    that disappeared from the files are removed). Running executions are untouched:
    they carry their own definition snapshot.
    """
    for pack in packs:
        conn.execute(
            "INSERT INTO attune.pack"
            " (ref, label, description, version, config_schema, config, path)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (ref) DO UPDATE SET label = EXCLUDED.label,"
            " description = EXCLUDED.description, version = EXCLUDED.version,"
            " config_schema = EXCLUDED.config_schema, config = EXCLUDED.config,"
            " path = EXCLUDED.path, updated_at = now()",
            (
                pack.ref,
                pack.label,
                pack.description,
                pack.version,
                None if pack.config_schema is None else Jsonb(pack.config_schema),
                Jsonb(pack.config),
                pack.path,
            ),
        )
        conn.execute("DELETE FROM attune.action WHERE pack_ref = %s", (pack.ref,))
        conn.execute("DELETE FROM attune.workflow_definition WHERE pack_ref = %s", (pack.ref,))
        for action in pack.actions:
            conn.execute(
                "INSERT INTO attune.action (ref, pack_ref, name, description, runner, entry_point,"
                " parameters, output_schema, timeout, spec)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    action.ref,
                    pack.ref,
                    action.name,
                    action.description,
                    action.runner,
                    action.entry_point,
                    Jsonb(action.parameters),
                    None if action.output_schema is None else Jsonb(action.output_schema),
                    action.timeout,
                    Jsonb(action.to_dict()),
                ),
            )
        for workflow in pack.workflows:
            conn.execute(
                "INSERT INTO attune.workflow_definition"
                " (ref, pack_ref, label, description, version,"
                " parameters, definition, source, source_file)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    workflow.ref,
                    pack.ref,
                    workflow.label,
                    workflow.description,
                    workflow.version,
                    Jsonb(workflow.parameters),
                    Jsonb(workflow.to_dict()),
                    sources.get(workflow.ref, ""),
                    workflow.source_file,
                ),
            )
