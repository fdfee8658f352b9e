"""Discover, validate and register packs: all files of all packs, or nothing."""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg

from attune_pg.spec.model import PackSpec
from attune_pg.spec.packfiles import load_packs
from attune_pg.spec.recursion import unbounded_self_calls
from attune_pg.store import catalog

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
        catalog.register_packs(conn, packs, sources)
    for warning in unbounded_self_calls(packs):
        log.warning("%s", warning)
    return packs
