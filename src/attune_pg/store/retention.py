"""Retention: delete finished executions in short batches (attune.prune, schema/0010)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from attune_pg.store.queries import Q


def prune_batch(
    conn: psycopg.Connection,
    older_than: float,
    batch: int,
    statuses: Sequence[str] | None = None,
) -> int:
    """Delete one batch (its own transaction when `conn` is in autocommit); return how
    many top-level executions went."""
    row = conn.execute(
        Q.prune_batch,
        {"seconds": older_than, "batch": batch, "statuses": list(statuses) if statuses else None},
    ).fetchone()
    return int(row[0]) if row else 0


def prune_preview(
    conn: psycopg.Connection, older_than: float, statuses: Sequence[str] | None = None
) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            Q.prune_preview,
            {"seconds": older_than, "statuses": list(statuses) if statuses else None},
        ).fetchone()
    assert row is not None
    return row
