"""Packs, actions, workflow definitions and kv: registration and lookups."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from attune_pg.spec.model import ActionSpec, PackSpec, WorkflowSpec
from attune_pg.store.queries import Q

Json = Any
Row = dict[str, Any]


class ActionCatalog(Mapping[str, ActionSpec]):
    """Actions by ref, loaded once and refreshed when an unknown ref is resolved.

    A worker keeps one; registration of a new pack while it runs is picked up by the
    first `resolve` that misses, and the worker refreshes it when it hears
    `attune_catalog` (sent by every registration that changed something), so changed
    actions need no restart. Reading it (`catalog[ref]`, `get`) never runs SQL: the
    advance resolves what an execution needs before the conductor runs. Retired actions
    (of unregistered packs) stay in it: a task of an execution that was already running
    still finds the action it calls.
    """

    def __init__(self, dsn_conn: psycopg.Connection) -> None:
        self._conn = dsn_conn
        self._actions: dict[str, ActionSpec] = {}
        self.refresh()

    def refresh(self) -> None:
        rows = self._conn.execute(Q.action_catalog).fetchall()
        self._actions = {row[0]["ref"]: ActionSpec.from_dict(row[0]) for row in rows}

    def resolve(self, refs: Iterable[str]) -> dict[str, ActionSpec]:
        """The actions among `refs`, refreshing once if one is not known yet."""
        wanted = set(refs)
        if not wanted <= self._actions.keys():
            self.refresh()
        return {ref: self._actions[ref] for ref in wanted if ref in self._actions}

    def __getitem__(self, ref: str) -> ActionSpec:
        return self._actions[ref]

    def __iter__(self) -> Iterator[str]:
        return iter(self._actions)

    def __len__(self) -> int:
        return len(self._actions)


# ----------------------------------------------------------------- registration
#
# `attune_pg.packs` decides what to write; these functions only read the registered
# state and write rows, in the caller's transaction. Triggers, rules and policies will
# get functions of the same shape (state, upsert, retire) beside these.

REGISTRATION_LOCK_ID = 0x617474756E66  # next to the migration lock's number


def lock_registration(conn: psycopg.Connection) -> None:
    conn.execute(Q.registration_lock, {"lock": REGISTRATION_LOCK_ID})


def notify_changed(conn: psycopg.Connection, pack: str) -> None:
    """Workers reload their action catalogue after this transaction commits."""
    conn.execute(Q.catalog_notify, {"pack": pack})


@dataclass(frozen=True)
class PackState:
    content_hash: str | None
    path: str | None
    retired: bool


def pack_state(conn: psycopg.Connection, refs: Sequence[str]) -> dict[str, PackState]:
    rows = conn.execute(Q.pack_state, {"refs": list(refs)}).fetchall()
    return {ref: PackState(h, path, retired) for ref, h, path, retired in rows}


def action_state(
    conn: psycopg.Connection, packs: Sequence[str]
) -> dict[str, tuple[str | None, str | None]]:
    """Registered actions of `packs`: ref -> (content hash, source file)."""
    rows = conn.execute(Q.action_state, {"packs": list(packs)}).fetchall()
    return {ref: (h, source) for ref, h, source in rows}


def workflow_state(conn: psycopg.Connection, packs: Sequence[str]) -> dict[str, str | None]:
    """Registered workflows of `packs`: ref -> content hash."""
    rows = conn.execute(Q.workflow_state, {"packs": list(packs)}).fetchall()
    return {ref: h for ref, h in rows}


def action_specs(conn: psycopg.Connection, refs: Iterable[str]) -> dict[str, ActionSpec]:
    """The registered (not retired) actions among `refs`."""
    rows = conn.execute(Q.action_specs, {"refs": sorted(set(refs))}).fetchall()
    return {row[0]["ref"]: ActionSpec.from_dict(row[0]) for row in rows}


def action_refs(conn: psycopg.Connection) -> set[str]:
    """Every registered (not retired) action ref, workflows included."""
    return {row[0] for row in conn.execute(Q.action_refs)}


def workflow_users(
    conn: psycopg.Connection, refs: Iterable[str], exclude: Iterable[str] = ()
) -> list[tuple[str, str, str]]:
    """(workflow ref, its pack, the ref it calls) for registered workflows calling `refs`."""
    rows = conn.execute(
        Q.workflow_users, {"refs": sorted(set(refs)), "exclude": sorted(set(exclude))}
    ).fetchall()
    return [(ref, pack, called) for ref, pack, called in rows]


def upsert_pack(conn: psycopg.Connection, pack: PackSpec, content_hash: str) -> None:
    conn.execute(
        Q.pack_upsert,
        {
            "ref": pack.ref,
            "label": pack.label,
            "description": pack.description,
            "version": pack.version,
            "config_schema": None if pack.config_schema is None else Jsonb(pack.config_schema),
            "config": Jsonb(pack.config),
            "path": pack.path,
            "content_hash": content_hash,
        },
    )


def upsert_actions(
    conn: psycopg.Connection, pack: str, actions: Sequence[tuple[ActionSpec, str]]
) -> None:
    """Insert or replace actions (and workflows-as-actions) with their content hashes."""
    if not actions:
        return
    with conn.cursor() as cur:
        cur.executemany(
            Q.action_upsert,
            [
                {
                    "ref": a.ref,
                    "pack_ref": pack,
                    "name": a.name,
                    "description": a.description,
                    "runner": a.runner,
                    "entry_point": a.entry_point,
                    "parameters": Jsonb(a.parameters),
                    "output_schema": None if a.output_schema is None else Jsonb(a.output_schema),
                    "timeout": a.timeout,
                    "spec": Jsonb(a.to_dict()),
                    "content_hash": h,
                }
                for a, h in actions
            ],
        )


def upsert_workflows(
    conn: psycopg.Connection, pack: str, workflows: Sequence[tuple[WorkflowSpec, str, str]]
) -> None:
    """Insert or replace workflow definitions: (spec, source text, content hash)."""
    if not workflows:
        return
    with conn.cursor() as cur:
        cur.executemany(
            Q.workflow_upsert,
            [
                {
                    "ref": wf.ref,
                    "pack_ref": pack,
                    "label": wf.label,
                    "description": wf.description,
                    "version": wf.version,
                    "parameters": Jsonb(wf.parameters),
                    "definition": Jsonb(wf.to_dict()),
                    "source": source,
                    "source_file": wf.source_file,
                    "content_hash": h,
                }
                for wf, source, h in workflows
            ],
        )


def retire_actions(conn: psycopg.Connection, refs: Iterable[str]) -> None:
    refs = sorted(set(refs))
    if refs:
        conn.execute(Q.action_retire, {"refs": refs})


def delete_workflows(conn: psycopg.Connection, refs: Iterable[str]) -> list[str]:
    """Delete definitions and retire their workflow-actions; the refs that existed."""
    refs = sorted(set(refs))
    if not refs:
        return []
    deleted = [row[0] for row in conn.execute(Q.workflow_delete, {"refs": refs})]
    retire_actions(conn, refs)
    return deleted


def retire_pack(conn: psycopg.Connection, ref: str) -> list[str]:
    """Unregister a whole pack; returns its workflows' refs (empty list if none)."""
    workflows = [row[0] for row in conn.execute(Q.workflow_delete_pack, {"pack": ref})]
    conn.execute(Q.action_retire_pack, {"pack": ref})
    conn.execute(Q.pack_retire, {"ref": ref})
    return workflows


def packs_under(conn: psycopg.Connection, path: str) -> list[str]:
    """Registered packs whose directory is `path` or below it."""
    prefix = path.rstrip("/") + "/"
    rows = conn.execute(Q.pack_under_path, {"path": path, "prefix": prefix}).fetchall()
    return [row[0] for row in rows]


def set_workflow_enabled(conn: psycopg.Connection, ref: str, enabled: bool) -> bool:
    """False if no such workflow is registered."""
    return (
        conn.execute(Q.workflow_set_enabled, {"ref": ref, "enabled": enabled}).fetchone()
        is not None
    )


# ----------------------------------------------------------------- listings


def list_packs(conn: psycopg.Connection, *, include_unregistered: bool = False) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(Q.pack_list, {"all": include_unregistered}).fetchall()


def list_workflows(
    conn: psycopg.Connection,
    *,
    pack: str | None = None,
    tag: str | None = None,
    enabled: bool | None = None,
    search: str | None = None,
) -> list[Row]:
    """Registered workflows; each filter that is not None narrows the list."""
    params = {"pack": pack, "tag": tag, "enabled": enabled, "search": search}
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(Q.workflow_list, params).fetchall()
