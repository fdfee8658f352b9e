"""A real worker process: its /metrics agree with the tables, its JSON log has one line per
state change with the execution's trace id."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import start, wait_done

pytestmark = pytest.mark.e2e


def _log_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))  # every JSON-looking line must parse
    return out


def _metrics_port(log: Path) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in _log_lines(log):
            if "metrics at http://" in line["message"]:
                return int(line["message"].rsplit(":", 1)[1].split("/")[0])
        time.sleep(0.1)
    raise AssertionError(f"no metrics line in {log}:\n{log.read_text() if log.exists() else ''}")


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _by(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, *labels: str):  # type: ignore[no-untyped-def]
    out: dict[tuple[str, ...], float] = {}
    for (sample, pairs), value in samples.items():
        if sample == name:
            d = dict(pairs)
            out[tuple(d[label] for label in labels)] = value
    return out


def test_metrics_and_json_logs_of_a_worker_agree_with_the_tables(
    conn: psycopg.Connection, register, worker_procs, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    register("opspack")
    worker_procs(
        concurrency=4,
        lease_seconds=10.0,
        extra=("--log-format", "json", "--metrics-port", "0", "--metrics-host", "127.0.0.1"),
    )
    log = tmp_path / "worker-0.log"
    port = _metrics_port(log)

    before = _scrape(port)
    assert before[("attune_queue_up", ())] == 1.0
    assert before[("attune_worker_slots", ())] == 4.0
    assert before[("attune_worker_slots_free", ())] == 4.0

    ids = [start(conn, "opspack.mixed") for _ in range(5)]
    ids += [start(conn, "opspack.mixed", {"code": 3}) for _ in range(2)]
    ids.append(start(conn, "opspack.mixed", {"items": []}))
    rows = [wait_done(conn, i, timeout=60) for i in ids]
    assert Counter(r["status"] for r in rows) == {"succeeded": 6, "failed": 2}
    time.sleep(1.1)  # the queue gauges are sampled at most once a second
    samples = _scrape(port)

    # Executions: started and finished, by workflow and status, as in the table.
    table = dict(
        conn.execute(
            "SELECT status, count(*) FROM attune.workflow_execution GROUP BY status"
        ).fetchall()
    )
    finished = _by(samples, "attune_executions_finished_total", "workflow", "status")
    assert finished == {("opspack.mixed", s): float(n) for s, n in table.items()}
    assert _by(samples, "attune_executions_started_total", "workflow") == {
        ("opspack.mixed",): float(len(ids))
    }

    # Task attempts by action and status; one duration observation per attempt.
    attempts = {
        (a, s): float(n)
        for a, s, n in conn.execute(
            "SELECT action_ref, status, count(*) FROM attune.task_execution GROUP BY 1, 2"
        ).fetchall()
    }
    assert attempts[("core.noop", "failed")] == 2.0
    assert _by(samples, "attune_tasks_finished_total", "action", "status") == attempts
    durations = _by(samples, "attune_task_duration_seconds_count", "action")
    assert durations == {("core.noop",): sum(attempts.values())}
    # Every claim is observed: from the queue (`claims`) and rows created claimed by the
    # worker whose transaction made them (schema 0015: their trail starts running).
    (claims,) = conn.execute("SELECT sum(claims) FROM attune.task_execution").fetchone()  # type: ignore[misc]
    (made,) = conn.execute(  # type: ignore[misc]
        "SELECT count(*) FROM attune.execution_event WHERE kind = 'task_status'"
        " AND from_status IS NULL AND to_status = 'running'"
    ).fetchone()
    claims += made
    assert samples[("attune_claim_latency_seconds_count", ())] == float(claims)
    assert _by(samples, "attune_tasks_claimed_total", "action") == {("core.noop",): float(claims)}
    assert samples[("attune_leases_reaped_total", ())] == 0.0

    # Nothing left in the queue; every slot free again.
    for gauge in (
        "attune_queue_ready_tasks",
        "attune_queue_running_tasks",
        "attune_queue_requested_executions",
        "attune_queue_oldest_ready_age_seconds",
        "attune_tasks_running",
    ):
        assert samples[(gauge, ())] == 0.0, gauge
    assert samples[("attune_worker_slots_free", ())] == 4.0

    # The JSON log: one line per claim and per attempt's end, one per execution change,
    # each with the execution's trace id.
    lines = _log_lines(log)
    traces = dict(conn.execute("SELECT id, trace_id FROM attune.workflow_execution").fetchall())
    task_lines = [line for line in lines if line.get("event") == "task"]
    ends = Counter(
        (line["action"], line["status"]) for line in task_lines if line["status"] != "running"
    )
    assert {k: float(v) for k, v in ends.items()} == attempts
    assert sum(1 for line in task_lines if line["status"] == "running") == claims
    for line in task_lines:
        assert line["trace_id"] == traces[line["execution"]]
        assert line["worker"] and line["task"] and line["attempt"] >= 1
        if line["status"] == "failed":
            assert line["error_type"] and line["duration"] is not None
    execution_lines = [line for line in lines if line.get("event") == "execution"]
    assert sorted(line["execution"] for line in execution_lines if line["from"] == "requested") == (
        sorted(ids)
    )
    ended = {line["execution"]: line for line in execution_lines if line["from"] == "running"}
    assert {i: line["status"] for i, line in ended.items()} == {r["id"]: r["status"] for r in rows}
    assert all(line["duration"] is not None for line in ended.values())
    assert {line["error_type"] for line in ended.values()} == {None, "TaskFailed"}
    for line in execution_lines:
        assert line["trace_id"] == traces[line["execution"]]
        assert line["workflow"] == "opspack.mixed"
    assert all(line["level"] and line["ts"] for line in lines)


def test_a_busy_metrics_port_is_one_clear_error(dsn: str) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [
                *(sys.executable, "-m", "attune_pg.cli.worker_entry", "--dsn", dsn),
                *("--metrics-port", str(port), "--metrics-host", "127.0.0.1"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    )
