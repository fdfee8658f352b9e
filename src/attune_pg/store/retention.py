"""Retention: delete finished executions in short batches (attune.prune, schema/0010)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
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
    many top-level executions and events went."""
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


def prune_all(
    conn: psycopg.Connection,
    older_than: float,
    batch: int,
    statuses: Sequence[str] | None = None,
    *,
    duty: float = 1.0,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Prune batch after batch until none is left; return the executions deleted.

    Each batch commits on its own (`conn` must be in autocommit), so locks and WAL stay
    small. `duty` < 1 throttles: after a batch that took t seconds it sleeps
    t * (1 - duty) / duty, so pruning uses at most that share of one database session's
    time and leaves the rest of the server to the workers.
    """
    if not conn.autocommit:
        raise ValueError("prune_all commits each batch: give it an autocommit connection")
    if not 0 < duty <= 1:
        raise ValueError(f"duty must be in (0, 1], got {duty}")
    deleted = 0
    while True:
        began = time.monotonic()
        n = prune_batch(conn, older_than, batch, statuses)
        deleted += n
        if on_batch is not None:
            on_batch(deleted)
        if n == 0:
            return deleted
        if duty < 1:
            time.sleep((time.monotonic() - began) * (1 - duty) / duty)
