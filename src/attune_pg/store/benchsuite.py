"""The SQL of `attune-pg bench --scenario`: server counters, loads, windows, history.

Nothing here commits on its own except where the caller's connection is in autocommit
(the bench's connections are); `load_history` owns its transaction.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from attune_pg.store.queries import Q


@dataclass(frozen=True)
class ServerCounters:
    """Cumulative counters of the server (pg_stat_database, pg_stat_user_tables, WAL)."""

    commits: int
    rollbacks: int
    inserted: int
    updated: int
    deleted: int
    hot_updated: int
    wal_bytes: int
    wal_fpi: int  # full-page images (the first change of a page after a checkpoint)
    backend_pid: int


def counters(conn: psycopg.Connection) -> ServerCounters:
    row = conn.execute(Q.bench_counters).fetchone()
    assert row is not None
    return ServerCounters(*(int(v) for v in row))


def dead_tuples(conn: psycopg.Connection) -> tuple[int, int]:
    """(dead row versions in the hot tables, pages of the claimable partial index)."""
    row = conn.execute(Q.bench_dead_tuples).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def start_workflows(conn: psycopg.Connection, ref: str, n: int, tag: str) -> list[int]:
    rows = conn.execute(Q.bench_workflows_start, {"ref": ref, "n": n, "tag": tag}).fetchall()
    return [int(r[0]) for r in rows]


class Backlog:
    """The bench's executions that have not ended yet, polled cheaply."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = sorted(ids)
        self.contiguous = bool(ids) and self.ids[-1] - self.ids[0] + 1 == len(ids)
        self.lo = self.ids[0] if ids else 0

    def left(self, conn: psycopg.Connection) -> int:
        """How many have not ended; for a range of ids (one INSERT, nobody else's rows in
        between) those from the first unfinished one on, an upper bound that reaches 0
        exactly when all have ended."""
        if not self.ids:
            return 0
        if not self.contiguous:
            row = conn.execute(Q.bench_workflows_unfinished, {"ids": self.ids}).fetchone()
            return int(row[0]) if row else 0
        hi = self.ids[-1]
        row = conn.execute(Q.bench_range_first_unfinished, {"lo": self.lo, "hi": hi}).fetchone()
        if row is None:
            self.lo = hi + 1
            return 0
        self.lo = int(row[0])
        return hi - self.lo + 1


def window(conn: psycopg.Connection, ids: list[int]) -> tuple[float | None, int, int]:
    """(seconds from the first created to the last finished, succeeded, task steps)."""
    row = conn.execute(Q.bench_workflows_window, {"ids": ids}).fetchone()
    assert row is not None
    return (None if row[0] is None else float(row[0])), int(row[1]), int(row[2])


def claim_latency(conn: psycopg.Connection, ids: list[int]) -> tuple[float, float, float]:
    row = conn.execute(Q.bench_claim_latency, {"ids": ids}).fetchone()
    if row is None or row[0] is None:
        return (0.0, 0.0, 0.0)
    p50, p95, p99 = row[0]
    return float(p50), float(p95), float(p99)


def start_latency(conn: psycopg.Connection, ids: list[int]) -> tuple[float, float, float]:
    row = conn.execute(Q.bench_start_latency, {"ids": ids}).fetchone()
    if row is None or row[0] is None:
        return (0.0, 0.0, 0.0)
    p50, p95, p99 = row[0]
    return float(p50), float(p95), float(p99)


def finished_between(conn: psycopg.Connection, tag: str, t0: datetime, t1: datetime) -> int:
    """Executions of the load tagged `tag` that succeeded in [t0, t1) (DB clock)."""
    row = conn.execute(Q.bench_finished_between, {"tag": tag, "t0": t0, "t1": t1}).fetchone()
    return int(row[0]) if row else 0


def still_open(conn: psycopg.Connection, ids: list[int]) -> list[int]:
    rows = conn.execute(Q.bench_workflows_open, {"ids": ids}).fetchall()
    return [int(r[0]) for r in rows]


def hold_snapshot(conn: psycopg.Connection) -> None:
    """Take a REPEATABLE READ snapshot on `conn` and leave its transaction open (idle in
    transaction) until the caller rolls back."""
    conn.autocommit = False
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.execute(Q.bench_snapshot_hold).fetchone()


def history_counts(conn: psycopg.Connection) -> tuple[int, int]:
    """(succeeded task rows, succeeded executions)."""
    row = conn.execute(Q.bench_history_counts).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def load_history(conn: psycopg.Connection, ref: str, n: int, k: int, days: int) -> int:
    """`n` finished executions of `ref` with `k` task rows each, in one transaction,
    written in bulk with the row triggers off (session_replication_role = replica, which
    needs the owner or a superuser). Returns the task rows written."""
    with conn.transaction():
        conn.execute(Q.bench_triggers_off)
        row = conn.execute(
            Q.bench_history_load, {"ref": ref, "n": n, "k": k, "days": days}
        ).fetchone()
    assert row is not None
    return int(row[1])


def table_sizes(conn: psycopg.Connection) -> dict[str, int]:
    row = conn.execute(Q.bench_table_sizes).fetchone()
    assert row is not None
    names = ("task_execution", "execution_event", "workflow_execution", "task_state")
    return dict(zip(names, (int(v) for v in row), strict=True))


# Utility statements cannot be named queries (the named-query check PREPAREs each one, and
# PostgreSQL prepares no DDL); they are composed here, identifiers quoted by psycopg.


def recreate_database(conn: psycopg.Connection, name: str) -> None:
    """Drop (closing its sessions) and create a scratch database; `conn` in autocommit."""
    ident = sql.Identifier(name)
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
    conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))


def drop_database(conn: psycopg.Connection, name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def vacuum_analyze(conn: psycopg.Connection) -> None:
    """What autovacuum and the checkpointer would long have done to old history (`conn` in
    autocommit): vacuumed and analysed, and written out, so that a measurement right after
    a bulk load does not pay for the load's checkpoints. CHECKPOINT needs a superuser or
    pg_checkpoint; without, the next automatic checkpoint does it (later, inside a window)."""
    for table in ("workflow_execution", "task_execution", "task_state", "execution_event"):
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier("attune", table)))
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute(sql.SQL("CHECKPOINT"))
