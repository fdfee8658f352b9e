"""The SQL of `attune-pg bench --prune`: old history to prune, a steady load, counts."""

from __future__ import annotations

from datetime import datetime

import psycopg

from attune_pg.store.queries import Q


def seed_history(conn: psycopg.Connection, ref: str, n: int, k: int, days: int) -> None:
    """`n` finished executions of `ref` with `k` task rows each, finished `days` ago: one
    transaction, every row through the state-machine triggers (so with its audit rows)."""
    with conn.transaction():
        ids = [row[0] for row in conn.execute(Q.bench_history_start, {"ref": ref, "n": n})]
        args = {"ids": ids, "k": k, "days": days}
        for query in (
            Q.bench_history_run,
            Q.bench_history_tasks,
            Q.bench_history_claim,
            Q.bench_history_finish,
            Q.bench_history_states,
            Q.bench_history_end,
            Q.bench_history_age,
        ):
            conn.execute(query, args)


def backlog(conn: psycopg.Connection) -> int:
    row = conn.execute(Q.bench_load_backlog).fetchone()
    return int(row[0]) if row else 0


def add_load(conn: psycopg.Connection, ref: str, n: int) -> None:
    conn.execute(Q.bench_load_add, {"ref": ref, "n": n})


def clock(conn: psycopg.Connection) -> datetime:
    row = conn.execute(Q.bench_clock).fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


def steps_between(conn: psycopg.Connection, t0: datetime, t1: datetime) -> int:
    row = conn.execute(Q.bench_steps_between, {"t0": t0, "t1": t1}).fetchone()
    return int(row[0]) if row else 0


def analyze(conn: psycopg.Connection) -> None:
    """Fresh statistics after seeding, as autovacuum would give a real history."""
    conn.execute(Q.bench_analyze_executions)
    conn.execute(Q.bench_analyze_tasks)
