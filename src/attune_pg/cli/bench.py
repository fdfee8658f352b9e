"""`attune-pg bench`: size a deployment by measuring this engine on your server.

N workflows of K sequential tasks run on W worker processes. The tasks run the builtin
no-op (`--action noop`, the default), a trivial python action shipped with the bench pack
(`python`: `def nop(seq): return {"seq": seq}`, checked against its input), or
`core.local ["true"]` (`local`); several actions run back to back, each on fresh workers,
and are reported as ratios to the first. Before the timed run, a warm-up of W x C
workflows lets each worker reach its steady state (python hosts started, catalogues
loaded); it is not counted. Reports
workflows/s and task steps/s (wall clock, from the first INSERT to the last
workflow finishing, DB clock), and the latency from a task becoming claimable
(`run_at`, stamped when the advance transaction scheduled it) to a worker
starting it (`started_at`). A second phase measures idle wake-up latency: single
workflows submitted one at a time to idle workers, so every claim rides a NOTIFY.

Durability settings (fsync, synchronous_commit) are printed with the figures:
numbers measured with them off are not comparable.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from attune_pg import db, packs, shipped
from attune_pg.store import benchsuite, migrate
from attune_pg.store.queries import Q
from attune_pg.worker.procs import start_worker, stop_worker

_WORKFLOW = """\
label: Benchmark chain of {k} tasks
version: "1.0.0"
tasks:
{tasks}
"""

#: What a benchmark task runs, by `--action`: (action ref, input as YAML flow).
ACTIONS: dict[str, tuple[str, str]] = {
    "noop": ("core.noop", ""),
    "python": ("bench.nop", "{seq: 7}"),
    "local": ("core.local", '{cmd: ["true"]}'),
}
_EXPECTED_RESULT: dict[str, Any] = {"python": {"seq": 7}}

_NOP_ACTION = """\
name: nop
description: The trivial python action of the benchmark.
runner: python
entry_point: nop.py:nop
parameters:
  seq: {type: integer}
"""
_NOP_PY = '''"""The trivial python action of `attune-pg bench --action python`."""


def nop(seq):
    return {"seq": seq}
'''


@dataclass
class BenchResult:
    action: str
    workflows: int
    tasks_per_workflow: int
    workers: int
    concurrency: int
    seconds: float
    succeeded: int
    latency_ms: tuple[float, float, float]
    idle_latency_ms: tuple[float, float, float] | None
    settings: dict[str, str]
    wrong_results: int | None = None  # tasks whose result was not the expected one

    @property
    def ok(self) -> bool:
        return self.succeeded == self.workflows and not self.wrong_results

    @property
    def workflows_per_s(self) -> float:
        return self.workflows / self.seconds

    @property
    def tasks_per_s(self) -> float:
        return self.workflows * self.tasks_per_workflow / self.seconds

    def _results_line(self) -> list[str]:
        if self.wrong_results is None:
            return []
        expected = _EXPECTED_RESULT[self.action]
        if self.wrong_results:
            return [f"results: {self.wrong_results} tasks did not return {expected}"]
        return [f"results: every task returned {expected}"]

    def report(self) -> str:
        p50, p95, p99 = self.latency_ms
        lines = [
            f"server: fsync={self.settings['fsync']} synchronous_commit="
            f"{self.settings['synchronous_commit']} ({self.settings['version']})",
            f"load: {self.workflows} workflows x {self.tasks_per_workflow} {self.action} tasks"
            f" ({ACTIONS[self.action][0]}),"
            f" {self.workers} workers x concurrency {self.concurrency}",
            f"succeeded: {self.succeeded}/{self.workflows} in {self.seconds:.2f}s",
            *self._results_line(),
            f"throughput: {self.workflows_per_s:,.1f} workflows/s,"
            f" {self.tasks_per_s:,.1f} task steps/s",
            f"claimable->started under load: p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms",
        ]
        if self.idle_latency_ms:
            i50, i95, i99 = self.idle_latency_ms
            lines.append(
                f"idle wake-up (claimable->started): p50 {i50:.2f} ms,"
                f" p95 {i95:.2f} ms, p99 {i99:.2f} ms"
            )
        return "\n".join(lines)


def bench_pack_skeleton(root: Path) -> Path:
    """The `bench` pack with its trivial python action `bench.nop`; workflows go in after."""
    pack = root / "bench"
    (pack / "workflows").mkdir(parents=True)
    (pack / "actions").mkdir()
    (pack / "pack.yaml").write_text('ref: bench\nlabel: Benchmark\nversion: "1.0.0"\n')
    (pack / "actions" / "nop.yaml").write_text(_NOP_ACTION)
    (pack / "actions" / "nop.py").write_text(_NOP_PY)
    return pack


def _bench_pack(root: Path, k: int, action: str = "noop") -> Path:
    pack = bench_pack_skeleton(root)
    ref, input = ACTIONS[action]
    with_input = f"\n    input: {input}" if input else ""
    steps = []
    for i in range(k):
        nxt = f"\n    on_success: t{i + 1}" if i + 1 < k else ""
        steps.append(f"  - name: t{i}\n    action: {ref}{with_input}{nxt}")
    (pack / "workflows" / "chain.yaml").write_text(_WORKFLOW.format(k=k, tasks="\n".join(steps)))
    (pack / "workflows" / "single.yaml").write_text(
        _WORKFLOW.format(k=1, tasks="  - name: t0\n    action: core.noop")
    )
    (pack / "workflows" / "items.yaml").write_text(
        'label: One with-items task\nversion: "1.0.0"\n'
        "parameters:\n  items: {type: array}\n  window: {type: integer, default: 0}\n"
        "tasks:\n  - name: each\n    action: core.noop\n"
        '    with_items: "{{ parameters.items }}"\n'
    )
    (pack / "workflows" / "items_window.yaml").write_text(
        'label: One with-items task with a concurrency window\nversion: "1.0.0"\n'
        "parameters:\n  items: {type: array}\n"
        "tasks:\n  - name: each\n    action: core.noop\n"
        '    with_items: "{{ parameters.items }}"\n    concurrency: 50\n'
    )
    return pack


def _percentiles(conn: psycopg.Connection, ids: list[int]) -> tuple[float, float, float]:
    row = conn.execute(Q.bench_claim_latency, {"ids": ids}).fetchone()
    assert row is not None and row[0] is not None
    p50, p95, p99 = row[0]
    return float(p50), float(p95), float(p99)


def _wait_all(
    conn: psycopg.Connection,
    ids: list[int],
    timeout: float,
    on_progress: Callable[[int, int], None] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    backlog = benchsuite.Backlog(ids)
    while time.monotonic() < deadline:
        left = backlog.left(conn)
        if on_progress is not None:
            on_progress(len(ids) - left, len(ids))
        if left == 0:
            return
        time.sleep(0.05)
    raise TimeoutError(f"benchmark workflows did not finish within {timeout:.0f}s")


def _wait_workers(conn: psycopg.Connection, since: Any, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = conn.execute(Q.bench_workers_started, {"since": since}).fetchone()
        if row is not None and row[0] >= count:
            time.sleep(0.3)  # let their listeners connect
            return
        time.sleep(0.05)
    raise TimeoutError("benchmark workers did not start")


def run_bench(
    dsn: str | None,
    *,
    workflows: int,
    tasks: int,
    workers: int,
    concurrency: int,
    idle_samples: int = 50,
    timeout: float = 600,
    action: str = "noop",
    warmup: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> BenchResult:
    """One timed run. `warmup` workflows (default W x C) run first, uncounted."""
    if action not in ACTIONS:
        raise ValueError(f"--action must be one of {', '.join(ACTIONS)}, got {action!r}")
    resolved = db.resolve_dsn(dsn)
    with db.connect(resolved) as conn, tempfile.TemporaryDirectory() as tmp:
        migrate.migrate(conn)
        packs.register(conn, shipped.pack_dir("core"))
        packs.register(conn, _bench_pack(Path(tmp), tasks, action))
        settings = _settings(conn)
        since = conn.execute(Q.bench_clock).fetchone()[0]  # type: ignore[index]
        procs = [start_worker(resolved, concurrency=concurrency) for _ in range(workers)]
        try:
            _wait_workers(conn, since, workers)
            warm = workers * concurrency if warmup is None else warmup
            if warm:
                _wait_all(conn, _start_chains(conn, warm), timeout)
            idle = _idle_latency(conn, idle_samples) if idle_samples else None
            t0 = time.monotonic()
            ids = _start_chains(conn, workflows)
            _wait_all(conn, ids, timeout, on_progress)
            wall = time.monotonic() - t0
            row = conn.execute(Q.bench_run_totals, {"ids": ids}).fetchone()
            assert row is not None
            seconds = float(row[0]) if row[0] else wall
            latency = _percentiles(conn, ids)
            wrong = _wrong_results(conn, ids, action)
        finally:
            for proc in procs:
                stop_worker(proc)
    return BenchResult(
        action,
        workflows,
        tasks,
        workers,
        concurrency,
        seconds,
        int(row[1]),
        latency,
        idle,
        settings,
        wrong,
    )


def _start_chains(conn: psycopg.Connection, n: int) -> list[int]:
    return [row[0] for row in conn.execute(Q.bench_start_chains, {"n": n}).fetchall()]


def _wrong_results(conn: psycopg.Connection, ids: list[int], action: str) -> int | None:
    """A fast wrong answer is no answer: how many tasks did not return the expected result
    (None when the action's result is not checked)."""
    expected = _EXPECTED_RESULT.get(action)
    if expected is None:
        return None
    params = {"expected": Jsonb(expected), "ids": ids}
    row = conn.execute(Q.bench_result_mismatches, params).fetchone()
    assert row is not None
    return int(row[0])


def compare(results: list[BenchResult], per_round: int) -> str:
    """Each round's rates (`per_round` runs each) as ratios to that round's first run."""
    if per_round < 2:
        return ""
    lines = ["ratios of workflows/s to the first action of each round:"]
    for start in range(0, len(results), per_round):
        group = results[start : start + per_round]
        base = group[0].workflows_per_s
        parts = [
            f"{r.action} {r.workflows_per_s:,.1f}/s = {r.workflows_per_s / base:.2f}" for r in group
        ]
        lines.append(f"  round {start // per_round + 1}: " + ", ".join(parts))
    return "\n".join(lines)


@dataclass
class ItemsResult:
    counts: list[int]
    seconds: dict[tuple[int, str], float]
    settings: dict[str, str]

    def report(self) -> str:
        lines = [
            f"server: fsync={self.settings['fsync']} synchronous_commit="
            f"{self.settings['synchronous_commit']} ({self.settings['version']})"
        ]
        for mode in ("all at once", "window 50"):
            for n in self.counts:
                s = self.seconds[(n, mode)]
                lines.append(
                    f"with-items {mode:>11}: {n:>6} items in {s:6.2f}s"
                    f" = {n / s:8,.0f} items/s, {s / n * 1000:.3f} ms/item"
                )
            small, big = self.counts[0], self.counts[-1]
            ratio = (self.seconds[(big, mode)] / big) / (self.seconds[(small, mode)] / small)
            lines.append(f"  cost per item at {big} vs {small} items: x{ratio:.2f} (1.0 = linear)")
        return "\n".join(lines)


def run_items_bench(dsn: str | None, *, items: int, workers: int, concurrency: int) -> ItemsResult:
    """One with-items task over `items` no-ops (and a tenth of that), all released at
    once and through a window of 50: the cost per item must not grow with the count."""
    resolved = db.resolve_dsn(dsn)
    counts = [max(1, items // 10), items]
    seconds: dict[tuple[int, str], float] = {}
    with db.connect(resolved) as conn, tempfile.TemporaryDirectory() as tmp:
        migrate.migrate(conn)
        packs.register(conn, shipped.pack_dir("core"))
        packs.register(conn, _bench_pack(Path(tmp), 1))
        settings = _settings(conn)
        since = conn.execute(Q.bench_clock).fetchone()[0]  # type: ignore[index]
        procs = [start_worker(resolved, concurrency=concurrency) for _ in range(workers)]
        try:
            _wait_workers(conn, since, workers)
            for mode, ref in (("all at once", "bench.items"), ("window 50", "bench.items_window")):
                for n in counts:
                    parameters = Jsonb({"items": list(range(n))})
                    row = conn.execute(
                        Q.bench_start_items, {"ref": ref, "parameters": parameters}
                    ).fetchone()
                    assert row is not None
                    _wait_all(conn, [row[0]], 3600)
                    took = conn.execute(Q.bench_execution_seconds, {"id": row[0]}).fetchone()
                    assert took is not None and took[1] == "succeeded", took
                    seconds[(n, mode)] = float(took[0])
        finally:
            for proc in procs:
                stop_worker(proc)
    return ItemsResult(counts, seconds, settings)


def _settings(conn: psycopg.Connection) -> dict[str, str]:
    settings = {
        name: str(conn.execute(Q.bench_server_setting, {"name": name}).fetchone()[0])  # type: ignore[index]
        for name in ("fsync", "synchronous_commit", "server_version")
    }
    settings["version"] = "PostgreSQL " + settings.pop("server_version")
    return settings


def _idle_latency(conn: psycopg.Connection, samples: int) -> tuple[float, float, float]:
    ids = []
    for _ in range(samples):
        row = conn.execute(Q.bench_start_single).fetchone()
        assert row is not None
        ids.append(row[0])
        _wait_all(conn, [row[0]], 30)
        time.sleep(0.02)  # workers go back to sleep on LISTEN
    return _percentiles(conn, ids)
