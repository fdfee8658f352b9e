"""`attune-pg bench --scenario`: every scenario runs end to end and reports its costs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from attune_pg import db, packs
from attune_pg.cli import bench_account
from attune_pg.cli.bench_history import run_history
from attune_pg.cli.bench_snapshot import run_snapshot
from attune_pg.cli.bench_suite import run_suite, suite_pack

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _quick_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real 11 s wait makes the tuple counts exact; these tests check the rest.
    monkeypatch.setattr(bench_account, "SETTLE_SECONDS", 0.1)


def test_the_local_scenarios_report_rates_latency_and_costs(dsn: str) -> None:
    result = run_suite(
        dsn,
        ["single", "three", "python", "items", "wakeup"],
        workflows=12,
        workers=1,
        concurrency=4,
        idle_samples=3,
    )
    assert result.ok, result.report()
    by = {s.name: s for s in result.scenarios}
    assert (by["single"].steps, by["three"].steps, by["python"].steps) == (12, 12, 12)
    assert (by["three"].workflows, by["items"].steps, by["wakeup"].steps) == (4, 12, 3)
    for scenario in result.scenarios:
        cost = scenario.cost
        assert cost is not None and cost.wal_bytes > 0 and cost.worker_cpu >= 0, scenario.name
        assert scenario.latency_ms is not None and scenario.latency_ms[0] >= 0
    # CPU is read in clock ticks (10 ms): one small scenario may round to zero, the five
    # together cannot.
    assert sum(s.cost.worker_cpu for s in result.scenarios if s.cost is not None) > 0
    text = result.report()
    assert "python / builtin no-op:" in text and "items/s" in text
    # The pair runs in halves, single python python single, reported as one each.
    assert [s.name for s in result.scenarios] == ["single", "three", "python", "items", "wakeup"]
    assert text.count("in halves: single python python single") == 2
    assert text.count("(pairs: ") == 1
    assert len(set(by["single"].ids)) == len(set(by["python"].ids)) == 12
    assert by["wakeup"].start_ms is not None and by["wakeup"].start_ms[0] > 0
    assert text.count("per step:") == 5 and "CPU ms: workers" in text


def test_history_compares_with_an_empty_database_and_drops_both(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    pack = suite_pack(tmp_path)
    packs.register(conn, pack)
    result = run_history(
        conn, dsn, pack, rows=30, rounds=1, workflows=8, workers=1, concurrency=4, timeout=120
    )
    assert result.ok and result.steps == 8, result.report()
    text = "\n".join(result.report())
    assert "30 finished task rows loaded" in text and "with history / empty" in text
    left = conn.execute(
        "SELECT count(*) FROM pg_database WHERE datname LIKE %s",
        (conn.info.dbname + "_bench_%",),
    ).fetchone()
    assert left == (0,)


def test_snapshot_is_held_then_released(conn: psycopg.Connection, dsn: str, tmp_path: Path) -> None:
    packs.register(conn, suite_pack(tmp_path))
    result = run_snapshot(
        conn, dsn, hold_seconds=3, workers=1, concurrency=4, before=2, after=2, window=1
    )
    assert result.ok and result.steps > 0, result.report()
    text = "\n".join(result.report())
    assert "snapshot held, per 1s window" in text and "after release" in text
    # Nothing is left holding a snapshot.
    with db.connect(dsn) as other:
        idle = other.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state = 'idle in transaction'"
        ).fetchone()
    assert idle == (0,)


def test_an_unknown_scenario_is_one_clear_line(dsn: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "attune_pg.cli.entry", "bench", "--scenario", "single,fast",
         "--dsn", dsn],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "fast: choose from single, three, python, items, wakeup, history, snapshot" in (
        done.stderr
    )
