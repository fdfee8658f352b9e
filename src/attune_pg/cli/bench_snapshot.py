"""`attune-pg bench --scenario snapshot`: throughput while an old snapshot is held.

An idle `REPEATABLE READ` session (a report, a forgotten psql, a replica's feedback…)
keeps vacuum from removing any row version deleted after its snapshot, so every claim,
every index scan of the hot tables walks past more dead versions as the load goes on.
The workers are kept saturated with single no-op workflows (a backlog of 4 x W x C);
task steps/s is sampled in windows of `window` seconds: `before` seconds without the
snapshot (the baseline), `hold` seconds with it, and `after` seconds once it is released
(does the engine recover when vacuum can work again?). Reported: each phase's windows as
ratios to the baseline, the dead row versions at the end of the hold, and the per-step
costs during the hold.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

import psycopg

from attune_pg.cli.bench_account import Meter
from attune_pg.cli.bench_suite import Poller, ScenarioResult, start_workers
from attune_pg.store import benchdata, benchsuite
from attune_pg.worker.procs import stop_worker

TAG = "bench-snapshot"

Progress = Callable[[str, int, int], None]


class _Load:
    """Keeps `target` executions of the load unfinished (the workers never run dry),
    following the ones it submitted by id (no scan of the live index, which a held
    snapshot fills with dead entries)."""

    def __init__(self, conn: psycopg.Connection, target: int) -> None:
        self.poller = Poller(conn)
        self.conn = conn
        self.target = target
        self.open: list[int] = []

    def keep(self, seconds: float, tick: Callable[[], None] | None = None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.open:
                self.open = benchsuite.still_open(self.conn, self.open)
                self.poller.transactions += 1
            missing = self.target - len(self.open)
            if missing > self.target // 4:
                self.open += self.poller.start("bench.single", missing, TAG)
            if tick is not None:
                tick()
            time.sleep(0.05)


def _phase(
    conn: psycopg.Connection,
    load: _Load,
    name: str,
    seconds: float,
    window: float,
    progress: Progress | None,
) -> list[tuple[str, datetime, datetime]]:
    spans = []
    began = time.monotonic()
    while (elapsed := time.monotonic() - began) < seconds - 1e-3:
        t0 = benchdata.clock(conn)
        length = min(window, seconds - elapsed)
        tick = None
        if progress is not None:
            tick = lambda: progress(name, int(time.monotonic() - began), int(seconds))  # noqa: E731
        load.keep(length, tick)
        spans.append((name, t0, benchdata.clock(conn)))
    return spans


def run_snapshot(
    conn: psycopg.Connection,
    dsn: str,
    *,
    hold_seconds: float,
    workers: int,
    concurrency: int,
    before: float = 30.0,
    after: float = 60.0,
    window: float = 10.0,
    progress: Progress | None = None,
) -> ScenarioResult:
    result = ScenarioResult(
        "snapshot",
        f"saturated single no-op load; an idle REPEATABLE READ snapshot held {hold_seconds:.0f}s"
        f" (after {before:.0f}s without), then {after:.0f}s after its release",
    )
    procs = start_workers(conn, dsn, workers, concurrency)
    holder: psycopg.Connection | None = None
    try:
        meter = Meter(conn, [p.pid for p in procs])
        load = _Load(conn, workers * concurrency * 4)
        load.keep(3.0)  # warm-up: workers busy, caches warm
        spans = _phase(conn, load, "without snapshot", before, window, progress)
        dead_before, pages_before = benchsuite.dead_tuples(conn)
        # The session must not be cut off by the idle-in-transaction timeout workers use.
        holder = psycopg.connect(
            dsn, options="-c idle_in_transaction_session_timeout=0", application_name="bench"
        )
        benchsuite.hold_snapshot(holder)
        start_reading = meter.read()
        own_before = load.poller.transactions
        spans += _phase(conn, load, "snapshot held", hold_seconds, window, progress)
        end_reading = meter.read()
        own = load.poller.transactions - own_before
        dead_held, pages_held = benchsuite.dead_tuples(conn)
        holder.rollback()
        holder.close()
        holder = None
        spans += _phase(conn, load, "after release", after, window, progress)
        dead_after, pages_after = benchsuite.dead_tuples(conn)
        rates = []
        for name, t0, t1 in spans:
            seconds = max((t1 - t0).total_seconds(), 1e-6)
            rates.append((name, benchsuite.finished_between(conn, TAG, t0, t1) / seconds))
        held_steps = sum(
            benchsuite.finished_between(conn, TAG, t0, t1)
            for name, t0, t1 in spans
            if name == "snapshot held"
        )
        result.cost = meter.cost(start_reading, end_reading, held_steps, own)
    finally:
        if holder is not None:
            holder.close()
        for proc in procs:
            stop_worker(proc)
    base = [r for name, r in rates if name == "without snapshot"]
    baseline = sum(base) / max(len(base), 1)
    held = [r for name, r in rates if name == "snapshot held"]
    later = [r for name, r in rates if name == "after release"]
    result.steps = result.workflows = result.succeeded = held_steps
    result.seconds = hold_seconds

    def ratios(values: list[float]) -> str:
        return " ".join(f"{v / baseline:.2f}" for v in values) if baseline else "-"

    result.notes += [
        f"baseline (without snapshot): {baseline:,.1f} steps/s",
        f"snapshot held, per {window:.0f}s window (x baseline): {ratios(held)}",
        f"  min {min(held, default=0) / baseline:.2f}x, mean"
        f" {sum(held) / max(len(held), 1) / baseline:.2f}x, last {held[-1] / baseline:.2f}x"
        if held and baseline
        else "  (no windows)",
        f"after release (x baseline): {ratios(later)}",
        f"dead row versions in the hot tables: {dead_before:,} before the hold,"
        f" {dead_held:,} at its end, {dead_after:,} at the end;"
        f" claimable index pages {pages_before:,} -> {pages_held:,} -> {pages_after:,}",
        "(costs above: per step during the hold)",
    ]
    if held and baseline:
        result.ok = True
    return result
