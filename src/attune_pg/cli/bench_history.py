"""`attune-pg bench --scenario history`: does a step cost more once history is large?

Two scratch databases on the same server, `<db>_bench_empty` and `<db>_bench_history`;
the second gets `rows` finished task rows (executions of the three-step workflow, with
their task states and the audit rows a real run writes: about 6 per task), loaded fast in
bulk as the owner with the row triggers off, then vacuumed and analysed as autovacuum
would have long done. Then the `single` scenario runs on fresh workers on each database
in turn, `rounds` times, alternating (so the slow drifts of a shared machine fall on both
alike); reported: the ratio of task steps/s with history to without, per round and over
all rounds. Both databases are dropped at the end. Needs CREATEDB (the embedded server's
owner has it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from attune_pg import db, packs, shipped
from attune_pg.cli.bench_account import Meter
from attune_pg.cli.bench_suite import ScenarioResult, measure, start_workers, warm_up
from attune_pg.store import benchsuite, migrate
from attune_pg.worker.procs import stop_worker

CHUNK = 20_000  # executions per load transaction (x3 task rows)

Progress = Callable[[str, int, int], None]


def _dsn_for(dsn: str, name: str) -> str:
    return make_conninfo(dsn, dbname=name)


def _prepare(dsn: str, pack: Path) -> None:
    with db.connect(dsn) as conn:
        migrate.migrate(conn)
        packs.register(conn, shipped.pack_dir("core"))
        packs.register(conn, pack)


def load(dsn: str, rows: int, progress: Progress | None = None) -> tuple[int, float]:
    """Load `rows` finished task rows (in executions of 3); (rows loaded, seconds)."""
    began = time.monotonic()
    executions = -(-rows // 3)
    done = 0
    with db.connect(dsn) as conn:
        while done < executions:
            n = min(CHUNK, executions - done)
            benchsuite.load_history(conn, "bench.three", n, 3, days=40)
            done += n
            if progress is not None:
                progress("loading history (task rows)", done * 3, executions * 3)
        benchsuite.vacuum_analyze(conn)
        loaded, _ = benchsuite.history_counts(conn)
    return loaded, time.monotonic() - began


def run_history(
    conn: psycopg.Connection,
    dsn: str,
    pack: Path,
    *,
    rows: int,
    rounds: int,
    workflows: int,
    workers: int,
    concurrency: int,
    timeout: float,
    progress: Progress | None = None,
) -> ScenarioResult:
    base = conninfo_to_dict(dsn).get("dbname") or "attune"
    empty, full = f"{base}_bench_empty", f"{base}_bench_history"
    dsns = {empty: _dsn_for(dsn, empty), full: _dsn_for(dsn, full)}
    result = ScenarioResult(
        "history",
        f"{workflows} single no-op workflows with {rows:,} finished task rows in the tables"
        f" vs an empty database, {rounds} alternating rounds",
    )
    try:
        for name in (empty, full):
            benchsuite.recreate_database(conn, name)
            _prepare(dsns[name], pack)
        loaded, seconds = load(dsns[full], rows, progress)
        with db.connect(dsns[full]) as hconn:
            sizes = benchsuite.table_sizes(hconn)
        result.notes.append(
            f"history: {loaded:,} finished task rows loaded in {seconds:.1f}s;"
            f" task_execution {sizes['task_execution'] / 2**20:,.0f} MiB,"
            f" execution_event {sizes['execution_event'] / 2**20:,.0f} MiB,"
            f" workflow_execution {sizes['workflow_execution'] / 2**20:,.0f} MiB"
        )
        rates: dict[str, list[tuple[int, float]]] = {empty: [], full: []}
        for r in range(rounds):
            for name in (empty, full):
                with db.connect(dsns[name]) as dconn:
                    procs = start_workers(dconn, dsns[name], workers, concurrency)
                    try:
                        warm_up(dconn, "bench.single", workers * concurrency, timeout)
                        one = measure(
                            dconn,
                            Meter(dconn, [p.pid for p in procs]),
                            lambda p: p.start("bench.single", workflows),
                            name="history",
                            what="",
                            timeout=timeout,
                        )
                    finally:
                        for proc in procs:
                            stop_worker(proc)
                rates[name].append((one.steps, one.seconds))
                result.ok = result.ok and one.ok
                if name == full:
                    result.cost = one.cost  # the per-step costs with history
                    result.latency_ms = one.latency_ms
            e_steps, e_secs = rates[empty][-1]
            h_steps, h_secs = rates[full][-1]
            result.notes.append(
                f"round {r + 1}: empty {e_steps / e_secs:,.1f} steps/s, with history"
                f" {h_steps / h_secs:,.1f} steps/s = {(h_steps / h_secs) / (e_steps / e_secs):.2f}x"
            )
        e_rate = sum(s for s, _ in rates[empty]) / sum(t for _, t in rates[empty])
        h_rate = sum(s for s, _ in rates[full]) / sum(t for _, t in rates[full])
        result.workflows = result.succeeded = sum(s for s, _ in rates[full])
        result.steps = result.workflows
        result.seconds = sum(t for _, t in rates[full])
        result.notes.append(
            f"with history / empty over all rounds: {h_rate / e_rate:.2f}x"
            f" ({h_rate:,.1f} vs {e_rate:,.1f} steps/s); costs above: with history"
        )
    finally:
        for name in (empty, full):
            benchsuite.drop_database(conn, name)
    return result
