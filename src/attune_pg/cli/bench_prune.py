"""`attune-pg bench --prune N`: what pruning costs the workers while it runs.

Seeds N finished executions of the chain workflow (K tasks each, finished 40 days ago,
written through the same triggers as real runs, so with their audit rows), starts the
workers and keeps them saturated with new chain executions. Then it alternates windows of
`window` seconds without and with pruning (`attune.prune` batches on a connection of its
own, throttled by `duty` like `attune-pg prune`, paused between batches during the windows
without) until all N are gone, ending with a window without. Alternating makes the slow
drifts of a shared machine fall on both kinds of window alike. Reported: task steps/s over
all windows without and over all windows with pruning, their ratio, and the prune rate.
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

from attune_pg import db, packs, shipped
from attune_pg.cli.bench import _bench_pack, _settings, _wait_workers
from attune_pg.store import benchdata, migrate, retention
from attune_pg.worker.procs import start_worker, stop_worker

SEED_CHUNK = 5000


@dataclass
class PruneBenchResult:
    history: int
    tasks: int
    workers: int
    concurrency: int
    batch: int
    duty: float
    # (pruning?, seconds, task steps) per window, in order
    windows: list[tuple[bool, float, int]]
    pruned: int
    settings: dict[str, str]

    def _rate(self, pruning: bool) -> float:
        chosen = [(s, n) for on, s, n in self.windows if on is pruning]
        return sum(n for _, n in chosen) / max(sum(s for s, _ in chosen), 1e-9)

    @property
    def baseline_rate(self) -> float:
        return self._rate(False)

    @property
    def prune_rate(self) -> float:
        return self._rate(True)

    @property
    def prune_seconds(self) -> float:
        return sum(s for on, s, _ in self.windows if on)

    def report(self) -> str:
        ratio = self.prune_rate / self.baseline_rate
        on = sum(1 for w in self.windows if w[0])
        return "\n".join(
            [
                f"server: fsync={self.settings['fsync']} synchronous_commit="
                f"{self.settings['synchronous_commit']} ({self.settings['version']})",
                f"history: {self.history:,} finished executions x {self.tasks} tasks;"
                f" load: chain of {self.tasks} no-ops, {self.workers} workers x concurrency"
                f" {self.concurrency}",
                f"windows: {len(self.windows)} alternating, {on} pruning,"
                f" {len(self.windows) - on} not",
                f"without pruning: {self.baseline_rate:,.1f} task steps/s",
                f"while pruning:   {self.prune_rate:,.1f} task steps/s",
                f"pruned {self.pruned:,} executions in {self.prune_seconds:.1f}s of pruning"
                f" windows ({self.pruned / max(self.prune_seconds, 1e-9):,.0f}/s,"
                f" batch {self.batch}, duty {self.duty:g})",
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
    window: float = 10.0,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> PruneBenchResult:
    resolved = db.resolve_dsn(dsn)
    report = on_progress or (lambda _stage, _done, _total: None)
    with db.connect(resolved) as conn, tempfile.TemporaryDirectory() as tmp:
        migrate.migrate(conn)
        packs.register(conn, shipped.pack_dir("core"))
        packs.register(conn, _bench_pack(Path(tmp), tasks))
        settings = _settings(conn)
        seeded = 0
        while seeded < history:
            n = min(SEED_CHUNK, history - seeded)
            benchdata.seed_history(conn, "bench.chain", n, tasks, days=40)
            seeded += n
            report("seeding history", seeded, history)
        benchdata.analyze(conn)
        since = benchdata.clock(conn)
        procs = [start_worker(resolved, concurrency=concurrency) for _ in range(workers)]
        go = threading.Event()
        pruner = _Pruner(resolved, batch, duty, go)
        try:
            _wait_workers(conn, since, workers)
            target = workers * concurrency * 4
            _load_for(conn, target, 3.0)  # warm-up: workers busy, caches warm
            pruner.start()
            spans: list[tuple[bool, datetime, datetime]] = []
            pruning = False
            while True:
                # Alternate windows with and without pruning, so that slow drifts of a
                # shared machine fall on both alike; end with a window without.
                if pruning:
                    go.set()
                else:
                    go.clear()
                t0 = benchdata.clock(conn)
                began = time.monotonic()
                while time.monotonic() - began < window:
                    if pruning and not pruner.is_alive():
                        break
                    _load_for(conn, target, 0.5)
                    report("pruning under load", pruner.deleted, history)
                spans.append((pruning, t0, benchdata.clock(conn)))
                if not pruning and not pruner.is_alive():
                    break
                pruning = not pruning
            if pruner.failure is not None:
                raise pruner.failure
            windows = [
                (on, _seconds(t0, t1), benchdata.steps_between(conn, t0, t1))
                for on, t0, t1 in spans
            ]
        finally:
            go.set()
            pruner.stop = True
            for proc in procs:
                stop_worker(proc)
            pruner.join(timeout=60)
    return PruneBenchResult(
        history, tasks, workers, concurrency, batch, duty, windows, pruner.deleted, settings
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


class _Pruner(threading.Thread):
    """`retention.prune_all` on a connection of its own, paused while `go` is clear."""

    def __init__(self, dsn: str, batch: int, duty: float, go: threading.Event) -> None:
        super().__init__(name="attune-bench-prune", daemon=True)
        self.dsn, self.batch, self.duty, self.go = dsn, batch, duty, go
        self.deleted = 0
        self.stop = False
        self.failure: BaseException | None = None

    def _between(self, deleted: int) -> None:
        self.deleted = deleted
        self.go.wait()
        if self.stop:
            raise InterruptedError("benchmark over")

    def run(self) -> None:
        try:
            self.go.wait()
            with db.connect(self.dsn, name="attune_bench_prune") as conn:
                retention.prune_all(
                    conn, 30 * 86400, self.batch, duty=self.duty, on_batch=self._between
                )
        except InterruptedError:
            pass
        except BaseException as exc:  # re-raised by the benchmark
            self.failure = exc
