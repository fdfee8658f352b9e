"""Python hosts live and die with a real `attune-worker` process."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psycopg
import pytest

from tests.helpers import start, wait_done
from tests.unit.test_actions_python import gone, wait_gone

pytestmark = pytest.mark.e2e

_ACTION_PY = """
import os, subprocess, time


def pid():
    return os.getpid()


def tree(pidfile):
    child = subprocess.Popen(["sleep", "60"])
    with open(pidfile + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    os.rename(pidfile + ".tmp", pidfile)
    time.sleep(60)
"""


def _pack(root: Path) -> Path:
    pack = root / "hosts"
    (pack / "actions").mkdir(parents=True)
    (pack / "workflows").mkdir()
    (pack / "pack.yaml").write_text('ref: hosts\nlabel: Hosts\nversion: "1.0.0"\n')
    (pack / "actions" / "act.py").write_text(_ACTION_PY)
    for name, params in (("pid", ""), ("tree", "\nparameters:\n  pidfile: {type: string}")):
        (pack / "actions" / f"{name}.yaml").write_text(
            f"name: {name}\nrunner: python\nentry_point: act.py:{name}{params}\n"
        )
    (pack / "workflows" / "run_pid.yaml").write_text(
        'label: pid\nversion: "1.0.0"\ntasks:\n  - name: t\n    action: hosts.pid\n'
    )
    (pack / "workflows" / "run_tree.yaml").write_text(
        'label: tree\nversion: "1.0.0"\nparameters:\n  pidfile: {type: string}\n'
        "tasks:\n  - name: t\n    action: hosts.tree\n"
        '    input: {pidfile: "{{ parameters.pidfile }}"}\n'
    )
    return pack


def _host_pid(conn: psycopg.Connection) -> int:
    row = wait_done(conn, start(conn, "hosts.run_pid"), timeout=30)
    assert row["status"] == "succeeded", row["error"]
    result = conn.execute(
        "SELECT result FROM attune.task_execution WHERE workflow_execution_id = %s", (row["id"],)
    ).fetchone()
    assert result is not None
    return int(result[0])


def test_hosts_are_reused_and_stop_with_the_worker(
    conn: psycopg.Connection, register, worker_procs, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    register(_pack(tmp_path))
    worker = worker_procs(concurrency=2)
    first = _host_pid(conn)
    assert _host_pid(conn) == first  # the same warm host served both
    worker.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
    assert worker.wait(15) == 0  # type: ignore[attr-defined]
    assert wait_gone(first, within=5)


def test_a_sigkilled_worker_takes_its_action_processes_along(
    conn: psycopg.Connection, register, worker_procs, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    register(_pack(tmp_path))
    worker = worker_procs(concurrency=2, lease_seconds=30.0)
    pidfile = tmp_path / "pids"
    start(conn, "hosts.run_tree", {"pidfile": str(pidfile)})
    deadline = time.monotonic() + 30
    while not pidfile.exists():
        assert time.monotonic() < deadline, "the action never started"
        time.sleep(0.05)
    host, child = map(int, pidfile.read_text().split())
    assert not gone(host) and not gone(child)
    os.kill(worker.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    worker.wait()  # type: ignore[attr-defined]
    assert wait_gone(host, child, within=5)


def test_bench_compares_the_python_action_with_the_noop(dsn: str) -> None:
    from tests.e2e.test_worker_lifecycle import _cli

    done = _cli(
        dsn, "bench", "-n", "20", "-k", "2", "-w", "1", "-c", "2", "--idle-samples", "0",
        "--action", "noop,python", timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("succeeded: 20/20") == 2
    assert "x 2 python tasks (bench.nop)" in done.stdout
    assert "results: every task returned {'seq': 7}" in done.stdout
    assert "round 1: noop" in done.stdout and ", python " in done.stdout
    bad = _cli(dsn, "bench", "-n", "1", "--action", "noop,perl")
    assert bad.returncode != 0 and "perl" in bad.stderr and "--action" in bad.stderr
