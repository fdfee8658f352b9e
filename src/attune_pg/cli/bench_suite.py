"""`attune-pg bench --scenario …`: every scenario of the performance issue, with costs.

Scenarios (a comma list, or `all`):
- `single`: N workflows of one builtin no-op task (the queue's job);
- `three`: N/3 workflows of three sequential no-ops (steps of a real workflow);
- `python`: N workflows of one trivial python action, reported against `single`; with
  both, the two run in halves, single python python single (`_paired`): a scenario that
  runs after another pays for its garbage (autovacuum, checkpoints) and loses by half;
- `items`: one with-items task over N no-op items;
- `wakeup`: single workflows submitted one at a time to idle workers (NOTIFY path);
- `history`: `single` on a database holding a million finished task rows, against an
  empty one, alternating (bench_history.py);
- `snapshot`: a steady load while an idle REPEATABLE READ session holds its snapshot
  for minutes, and after (bench_snapshot.py).

Each throughput scenario runs on the same W warm workers after a warm-up of W x C
workflows of its kind, and reports workflows/s, task steps/s (DB clock, first INSERT to
last finish), claim latency, and per task step: commits, tuples written, WAL bytes and CPU
ms in the workers and in PostgreSQL (bench_account.py). The submitting INSERT is part of
the cost (one statement for all N); the bench's own polls are not.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from attune_pg import db, packs, shipped
from attune_pg.cli.bench import _settings, _wait_workers, bench_pack_skeleton
from attune_pg.cli.bench_account import Cost, Meter
from attune_pg.store import benchsuite, migrate
from attune_pg.store.queries import Q
from attune_pg.worker.procs import start_worker, stop_worker

SCENARIOS = ("single", "three", "python", "items", "wakeup", "history", "snapshot")
TAG = "bench-suite"

Progress = Callable[[str, int, int], None]


def suite_pack(root: Path) -> Path:
    """The scenarios' pack: `bench.single`, `bench.three`, `bench.python`, `bench.items`."""
    pack = bench_pack_skeleton(root)
    head = 'label: {label}\nversion: "1.0.0"\n'
    (pack / "workflows" / "single.yaml").write_text(
        head.format(label="One no-op") + "tasks:\n  - name: t0\n    action: core.noop\n"
    )
    (pack / "workflows" / "three.yaml").write_text(
        head.format(label="Three no-ops in a row")
        + "tasks:\n"
        + "  - name: t0\n    action: core.noop\n    on_success: t1\n"
        + "  - name: t1\n    action: core.noop\n    on_success: t2\n"
        + "  - name: t2\n    action: core.noop\n"
    )
    (pack / "workflows" / "python.yaml").write_text(
        head.format(label="One trivial python action")
        + "tasks:\n  - name: t0\n    action: bench.nop\n    input: {seq: 7}\n"
    )
    (pack / "workflows" / "items.yaml").write_text(
        head.format(label="One with-items task")
        + "parameters:\n  items: {type: array}\n"
        + "tasks:\n  - name: each\n    action: core.noop\n"
        + '    with_items: "{{ parameters.items }}"\n'
    )
    return pack


@dataclass
class ScenarioResult:
    name: str
    what: str
    workflows: int = 0
    steps: int = 0
    seconds: float = 0.0
    succeeded: int = 0
    latency_ms: tuple[float, float, float] | None = None
    # submitted -> first task started (the wake-up scenario's figure)
    start_ms: tuple[float, float, float] | None = None
    cost: Cost | None = None
    notes: list[str] = field(default_factory=list)
    ok: bool = True
    ids: list[int] = field(default_factory=list, repr=False)  # the measured workflows

    @property
    def workflows_per_s(self) -> float:
        return self.workflows / self.seconds if self.seconds else 0.0

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0

    def report(self) -> list[str]:
        lines = [f"[{self.name}] {self.what}"]
        if self.seconds and self.name == "items":
            lines.append(
                f"  {self.succeeded}/{self.workflows} succeeded in {self.seconds:.2f}s:"
                f" {self.steps_per_s:,.1f} items/s"
            )
        elif self.seconds:
            lines.append(
                f"  {self.succeeded}/{self.workflows} succeeded in {self.seconds:.2f}s:"
                f" {self.workflows_per_s:,.1f} workflows/s, {self.steps_per_s:,.1f} task steps/s"
            )
        if self.latency_ms is not None:
            p50, p95, p99 = self.latency_ms
            lines.append(
                f"  claimable->started: p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms"
            )
        if self.start_ms is not None:
            p50, p95, p99 = self.start_ms
            lines.append(
                f"  submitted->first task started: p50 {p50:.2f} ms, p95 {p95:.2f} ms,"
                f" p99 {p99:.2f} ms"
            )
        if self.cost is not None:
            lines.append("  " + self.cost.line())
        lines.extend("  " + note for note in self.notes)
        return lines


@dataclass
class SuiteResult:
    settings: dict[str, str]
    workers: int
    concurrency: int
    scenarios: list[ScenarioResult]

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.scenarios)

    def report(self) -> str:
        lines = [
            f"server: fsync={self.settings['fsync']} synchronous_commit="
            f"{self.settings['synchronous_commit']} ({self.settings['version']});"
            f" {self.workers} workers x concurrency {self.concurrency}"
        ]
        for scenario in self.scenarios:
            lines.extend(scenario.report())
        return "\n".join(lines)


class Poller:
    """The bench's own queries on its connection, counted (they are not the engine's)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.transactions = 0

    def wait_all(
        self, ids: list[int], timeout: float, tick: Callable[[int], None] | None = None
    ) -> None:
        deadline = time.monotonic() + timeout
        backlog = benchsuite.Backlog(ids)
        while time.monotonic() < deadline:
            left = backlog.left(self.conn)
            self.transactions += 1
            if tick is not None:
                tick(len(ids) - left)
            if left == 0:
                return
            time.sleep(0.05)
        raise TimeoutError(f"benchmark workflows did not finish within {timeout:.0f}s")

    def start(self, ref: str, n: int, tag: str = TAG) -> list[int]:
        self.transactions += 1
        return benchsuite.start_workflows(self.conn, ref, n, tag)

    def start_items(self, n: int) -> list[int]:
        self.transactions += 1
        row = self.conn.execute(
            Q.bench_items_start, {"items": Jsonb({"items": list(range(n))}), "tag": TAG}
        ).fetchone()
        assert row is not None
        return [int(row[0])]


def measure(
    conn: psycopg.Connection,
    meter: Meter,
    start: Callable[[Poller], list[int]],
    *,
    name: str,
    what: str,
    timeout: float,
    progress: Progress | None = None,
) -> ScenarioResult:
    """One measured load: readings before and after (settled), the DB-clock window."""
    poller = Poller(conn)
    meter.settle()
    before = meter.read()
    ids = start(poller)
    total = len(ids)
    poller.wait_all(
        ids, timeout, None if progress is None else (lambda done: progress(name, done, total))
    )
    meter.settle()
    after = meter.read()
    seconds, succeeded, steps = benchsuite.window(conn, ids)
    result = ScenarioResult(
        name,
        what,
        workflows=len(ids),
        steps=steps,
        seconds=seconds or 0.0,
        succeeded=succeeded,
        latency_ms=benchsuite.claim_latency(conn, ids),
        cost=meter.cost(before, after, steps, poller.transactions),
        ok=succeeded == len(ids),
        ids=ids,
    )
    return result


def _joined(conn: psycopg.Connection, a: ScenarioResult, b: ScenarioResult) -> ScenarioResult:
    """Two measured halves of one scenario as one result: totals, and the claim latency
    of all their workflows."""
    ids = a.ids + b.ids
    return ScenarioResult(
        a.name,
        a.what,
        workflows=a.workflows + b.workflows,
        steps=a.steps + b.steps,
        seconds=a.seconds + b.seconds,
        succeeded=a.succeeded + b.succeeded,
        latency_ms=benchsuite.claim_latency(conn, ids),
        cost=None if a.cost is None or b.cost is None else a.cost + b.cost,
        ok=a.ok and b.ok,
        ids=ids,
    )


THROUGHPUT = {
    "single": ("bench.single", "workflows of one builtin no-op"),
    "three": ("bench.three", "workflows of three sequential no-ops"),
    "python": ("bench.python", "workflows of one trivial python action (warm hosts)"),
}


def _paired(
    conn: psycopg.Connection, run: Callable[[str, int], ScenarioResult], workflows: int
) -> tuple[ScenarioResult, ScenarioResult]:
    """`single` and `python` in halves, in the order single, python, python, single, each
    joined into one result, with the python / no-op ratio of the whole and of each
    adjacent pair. Run one after the other, the second paid for the first's garbage
    (autovacuum and checkpoints count in PostgreSQL's CPU): on 2026-12-04 one run of
    each order gave 0.47x and 1.12x. In ABBA order that drift cancels."""
    first, second = workflows // 2, workflows - workflows // 2
    s1 = run("single", first)
    p1 = run("python", first)
    p2 = run("python", second)
    s2 = run("single", second)
    single, python = _joined(conn, s1, s2), _joined(conn, p1, p2)
    for result, ref in ((single, "single"), (python, "python")):
        result.what = f"{workflows} {THROUGHPUT[ref][1]}, in halves: single python python single"
    if single.workflows_per_s and s1.workflows_per_s and s2.workflows_per_s:
        python.notes.append(
            f"python / builtin no-op: {python.workflows_per_s / single.workflows_per_s:.2f}x"
            f" (pairs: {p1.workflows_per_s / s1.workflows_per_s:.2f}x,"
            f" {p2.workflows_per_s / s2.workflows_per_s:.2f}x)"
        )
    return single, python


def warm_up(conn: psycopg.Connection, ref: str, n: int, timeout: float) -> None:
    poller = Poller(conn)
    poller.wait_all(poller.start(ref, n, "bench-warmup"), timeout)


def run_suite(
    dsn: str | None,
    names: list[str],
    *,
    workflows: int,
    workers: int,
    concurrency: int,
    idle_samples: int = 50,
    history_rows: int = 1_000_000,
    history_rounds: int = 2,
    hold_seconds: float = 300.0,
    timeout: float = 900.0,
    progress: Progress | None = None,
) -> SuiteResult:
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ValueError(
            f"unknown scenario {', '.join(unknown)}: choose from {', '.join(SCENARIOS)}"
        )
    resolved = db.resolve_dsn(dsn)
    results: list[ScenarioResult] = []
    local = [n for n in names if n not in ("history", "snapshot")]
    with db.connect(resolved) as conn, tempfile.TemporaryDirectory() as tmp:
        migrate.migrate(conn)
        packs.register(conn, shipped.pack_dir("core"))
        pack = suite_pack(Path(tmp))
        packs.register(conn, pack)
        settings = _settings(conn)
        if local:
            results.extend(
                _run_local(
                    conn,
                    resolved,
                    local,
                    workflows=workflows,
                    workers=workers,
                    concurrency=concurrency,
                    idle_samples=idle_samples,
                    timeout=timeout,
                    progress=progress,
                )
            )
        if "history" in names:
            from attune_pg.cli.bench_history import run_history

            results.append(
                run_history(
                    conn,
                    resolved,
                    pack,
                    rows=history_rows,
                    rounds=history_rounds,
                    workflows=workflows,
                    workers=workers,
                    concurrency=concurrency,
                    timeout=timeout,
                    progress=progress,
                )
            )
        if "snapshot" in names:
            from attune_pg.cli.bench_snapshot import run_snapshot

            results.append(
                run_snapshot(
                    conn,
                    resolved,
                    hold_seconds=hold_seconds,
                    workers=workers,
                    concurrency=concurrency,
                    progress=progress,
                )
            )
    return SuiteResult(settings, workers, concurrency, results)


def start_workers(conn: psycopg.Connection, dsn: str, workers: int, concurrency: int) -> list[Any]:
    since = conn.execute(Q.bench_clock).fetchone()[0]  # type: ignore[index]
    procs = [start_worker(dsn, concurrency=concurrency) for _ in range(workers)]
    try:
        _wait_workers(conn, since, workers)
    except BaseException:
        for proc in procs:
            stop_worker(proc)
        raise
    return procs


def _run_local(
    conn: psycopg.Connection,
    dsn: str,
    names: list[str],
    *,
    workflows: int,
    workers: int,
    concurrency: int,
    idle_samples: int,
    timeout: float,
    progress: Progress | None,
) -> list[ScenarioResult]:
    out: list[ScenarioResult] = []
    procs = start_workers(conn, dsn, workers, concurrency)
    warm = workers * concurrency
    try:
        meter = Meter(conn, [p.pid for p in procs])
        by_name: dict[str, ScenarioResult] = {}

        def run(name: str, n: int) -> ScenarioResult:
            ref, what = THROUGHPUT[name]
            warm_up(conn, ref, warm, timeout)
            return measure(
                conn,
                meter,
                lambda p: p.start(ref, n),
                name=name,
                what=f"{n} {what}",
                timeout=timeout,
                progress=progress,
            )

        paired = "single" in names and "python" in names
        for name in names:
            if name in by_name:
                continue  # the other half of the pair, run with it
            if paired and name in ("single", "python"):
                single, python = _paired(conn, run, workflows)
                by_name.update(single=single, python=python)
                out.extend((single, python))
                continue
            if name == "wakeup":
                result = _wakeup(conn, meter, idle_samples)
            elif name == "items":
                warm_up(conn, "bench.single", warm, timeout)
                result = measure(
                    conn,
                    meter,
                    lambda p: p.start_items(workflows),
                    name=name,
                    what=f"one with-items task over {workflows} no-op items (all at once)",
                    timeout=timeout,
                    progress=progress,
                )
            else:
                result = run(name, max(workflows // 3, 1) if name == "three" else workflows)
            by_name[name] = result
            out.append(result)
        # The pair ran together: report every scenario in the order asked.
        out.sort(key=lambda s: names.index(s.name))
    finally:
        for proc in procs:
            stop_worker(proc)
    return out


def _wakeup(conn: psycopg.Connection, meter: Meter, samples: int) -> ScenarioResult:
    """Single workflows one at a time to idle workers: every claim rides a NOTIFY."""
    poller = Poller(conn)
    warm_up(conn, "bench.single", 1, 30)
    meter.settle()
    before = meter.read()
    ids: list[int] = []
    for _ in range(samples):
        one = poller.start("bench.single", 1)
        poller.wait_all(one, 30)
        ids.extend(one)
        time.sleep(0.02)  # the workers go back to sleep on LISTEN
    meter.settle()
    after = meter.read()
    _, succeeded, steps = benchsuite.window(conn, ids)
    return ScenarioResult(
        "wakeup",
        f"{samples} single workflows submitted one at a time to idle workers",
        workflows=len(ids),
        steps=steps,
        succeeded=succeeded,
        latency_ms=benchsuite.claim_latency(conn, ids),
        start_ms=benchsuite.start_latency(conn, ids),
        cost=meter.cost(before, after, steps, poller.transactions),
        notes=["(costs include the idle workers' polls and heartbeats over the run)"],
        ok=succeeded == len(ids),
    )
