"""Discover, validate and register packs: all files of all packs, or nothing."""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg

from attune_pg.spec.automation import load_automation
from attune_pg.spec.model import PackSpec
from attune_pg.spec.packfiles import all_actions, load_packs
from attune_pg.spec.recursion import unbounded_self_calls
from attune_pg.store import automation, catalog

log = logging.getLogger("attune_pg.packs")


def register(conn: psycopg.Connection, path: str | Path) -> list[PackSpec]:
    """Validate every pack under `path` and register them in one transaction.

    Validation happens before the transaction opens; a file that fails raises a
    SpecError naming file, line and field, and the database is not touched.
    """
    with conn.transaction():
        known = catalog.registered_actions(conn)
        packs = load_packs(Path(path), set(known), known)
        sources: dict[str, str] = {}
        for pack in packs:
            for workflow in pack.workflows:
                if workflow.source_file:
                    sources[workflow.ref] = Path(workflow.source_file).read_text(encoding="utf-8")
        # Triggers, rules and policies (spec/automation.py): checked against every action
        # known after this registration, written in the same transaction. (A schema older
        # than 0009 has no place for them: registered again after `attune-pg init`.)
        rules = None
        if automation.schema_present(conn):
            rules = load_automation(
                packs,
                {**known, **all_actions(packs)},
                automation.registered_triggers(conn),
                automation.registered_policies(conn),
            )
        catalog.register_packs(conn, packs, sources)
        if rules is not None:
            automation.register(conn, rules)
    for warning in unbounded_self_calls(packs):
        log.warning("%s", warning)
    return packs
