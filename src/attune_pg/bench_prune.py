"""`attune-pg bench --prune N`: what pruning costs the workers while it runs.

Seeds N finished executions of the chain workflow (K tasks each, finished 40 days ago,
written through the same triggers as real runs, so with their audit rows), starts the
workers and keeps them saturated with new chain executions. Then it measures task steps
per second twice over the same load: for `baseline` seconds without pruning, then for as
long as pruning all N takes (`attune.prune` batches on a connection of its own, throttled
by `duty` like `attune-pg prune`), then for `baseline` seconds again: the windows around
the pruning one cancel out slow drifts of a shared machine. Reported: the rates without
(both windows together) and while pruning, their ratio, and the prune rate.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg

from attune_pg import db, packs
from attune_pg.bench import _bench_pack, _settings, _wait_workers
from attune_pg.demo import packs_dir
from attune_pg.store import benchdata, migrate, retention
from attune_pg.workerproc import start_worker, stop_worker

SEED_CHUNK = 5000


@dataclass
class PruneBenchResult:
    history: int
    tasks: int
    workers: int
    concurrency: int
    batch: int
    baseline_seconds: float
    baseline_steps: int
    prune_seconds: float
    prune_steps: int
    pruned: int
    settings: dict[str, str]
    duty: float = 1.0
    after_seconds: float = 0.0
    after_steps: int = 0

    @property
    def baseline_rate(self) -> float:
        """Steps/s without pruning: the windows before and after it together."""
        return (self.baseline_steps + self.after_steps) / (
            self.baseline_seconds + self.after_seconds
        )

    @property
    def prune_rate(self) -> float:
        return self.prune_steps / self.prune_seconds

    def report(self) -> str:
        ratio = self.prune_rate / self.baseline_rate
        return "\n".join(
            [
                f"server: fsync={self.settings['fsync']} synchronous_commit="
                f"{self.settings['synchronous_commit']} ({self.settings['version']})",
                f"history: {self.history:,} finished executions x {self.tasks} tasks;"
                f" load: chain of {self.tasks} no-ops, {self.workers} workers x concurrency"
                f" {self.concurrency}",
                f"without pruning: {self.baseline_rate:,.1f} task steps/s"
                f" ({self.baseline_steps:,} in {self.baseline_seconds:.1f}s before,"
                f" {self.after_steps:,} in {self.after_seconds:.1f}s after)",
                f"while pruning:   {self.prune_rate:,.1f} task steps/s"
                f" ({self.prune_steps:,} in {self.prune_seconds:.1f}s)",
                f"pruned {self.pruned:,} executions in {self.prune_seconds:.1f}s"
                f" ({self.pruned / self.prune_seconds:,.0f}/s, batch {self.batch},"
                f" duty {self.duty:g})",
                f"throughput while pruning: {ratio:.1%} of without ({1 - ratio:+.1%} cost)",
            ]
        )


def run_prune_bench(
    dsn: str | None,
    *,
    history: int,
    tasks: int,
    workers: int,
    concurrency: int,
    batch: int = 1000,
    duty: float = 1.0,
    baseline: float = 20.0,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> PruneBenchResult:
    resolved = db.resolve_dsn(dsn)
    report = on_progress or (lambda _stage, _done, _total: None)
    with db.connect(resolved) as conn, tempfile.TemporaryDirectory() as tmp:
        migrate.migrate(conn)
        packs.register(conn, packs_dir() / "core")
        packs.register(conn, _bench_pack(Path(tmp), tasks))
        settings = _settings(conn)
        seeded = 0
        while seeded < history:
            n = min(SEED_CHUNK, history - seeded)
            benchdata.seed_history(conn, "bench.chain", n, tasks, days=40)
            seeded += n
            report("seeding history", seeded, history)
        conn.execute("VACUUM ANALYZE attune.workflow_execution")
        conn.execute("VACUUM ANALYZE attune.task_execution")
        since = benchdata.clock(conn)
        procs = [start_worker(resolved, concurrency=concurrency) for _ in range(workers)]
        try:
            _wait_workers(conn, since, workers)
            target = workers * concurrency * 4
            _load_for(conn, target, 3.0)  # warm-up: workers busy, caches warm
            t0 = benchdata.clock(conn)
            _load_for(conn, target, baseline, lambda s: report("baseline", int(s), int(baseline)))
            t1 = benchdata.clock(conn)
            pruned: list[int] = []
            failure: list[BaseException] = []
            thread = threading.Thread(
                target=_prune_all, args=(resolved, batch, duty, pruned, failure), daemon=True
            )
            p0 = benchdata.clock(conn)
            thread.start()
            while thread.is_alive():
                _load_for(conn, target, 0.5)
                report("pruning under load", pruned[-1] if pruned else 0, history)
            p1 = benchdata.clock(conn)
            if failure:
                raise failure[0]
            _load_for(conn, target, baseline, lambda s: report("after", int(s), int(baseline)))
            a1 = benchdata.clock(conn)
            base_steps = benchdata.steps_between(conn, t0, t1)
            after_steps = benchdata.steps_between(conn, p1, a1)
            prune_steps = benchdata.steps_between(conn, p0, p1)
        finally:
            for proc in procs:
                stop_worker(proc)
    return PruneBenchResult(
        history,
        tasks,
        workers,
        concurrency,
        batch,
        _seconds(t0, t1),
        base_steps,
        _seconds(p0, p1),
        prune_steps,
        pruned[-1] if pruned else 0,
        settings,
        duty,
        _seconds(p1, a1),
        after_steps,
    )


def _seconds(t0: datetime, t1: datetime) -> float:
    return max((t1 - t0).total_seconds(), 1e-6)


def _load_for(
    conn: psycopg.Connection,
    target: int,
    seconds: float,
    tick: Callable[[float], None] | None = None,
) -> None:
    """Keep `target` executions of the load in flight for `seconds`."""
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        missing = target - benchdata.backlog(conn)
        if missing > target // 4:
            benchdata.add_load(conn, "bench.chain", missing)
        if tick is not None:
            tick(elapsed)
        time.sleep(0.05)


def _prune_all(
    dsn: str, batch: int, duty: float, pruned: list[int], failure: list[BaseException]
) -> None:
    try:
        with db.connect(dsn, name="attune_bench_prune") as conn:
            retention.prune_all(
                conn, 30 * 86400, batch, duty=duty, on_batch=lambda n: pruned.append(n)
            )
    except BaseException as exc:  # re-raised by the caller
        failure.append(exc)
