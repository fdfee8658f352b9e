"""A worker SIGKILLed while it runs a task holding a concurrency slot: the slot is not
lost or doubled. The task's lease expires, another worker runs it (the slot goes with
it), the waiter runs after it, never alongside, and every counter ends at zero."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psycopg
import pytest

from attune_pg import packs
from tests.helpers import start, wait_done

pytestmark = pytest.mark.e2e


def test_a_killed_worker_neither_leaks_nor_doubles_a_slot(
    conn: psycopg.Connection,
    worker_procs,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    pack = tmp_path / "lim"
    (pack / "policies").mkdir(parents=True)
    (pack / "pack.yaml").write_text('ref: lim\nversion: "1"\n')
    (pack / "policies" / "one_nap.yaml").write_text(
        "name: one_nap\nresource_ref: core.sleep\npolicy_type: action.concurrency\n"
        "parameters: {threshold: 1, action: delay}\n"
    )
    packs.register(conn, pack)
    victim = worker_procs(concurrency=2, lease_seconds=2.0)
    first = start(conn, "core.sleep", {"seconds": 1.5})
    second = start(conn, "core.sleep", {"seconds": 0.2})
    deadline = time.monotonic() + 30
    while conn.execute(
        "SELECT count(*) FROM attune.task_execution WHERE status = 'running'"
    ).fetchone() != (1,):
        assert time.monotonic() < deadline, "the victim never started the first task"
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert conn.execute("SELECT used FROM attune.concurrency_slot").fetchone() == (1,)
    worker_procs(concurrency=2, lease_seconds=2.0)
    for execution in (first, second):
        row = wait_done(conn, execution, timeout=60)
        assert row["status"] == "succeeded", row["error"]
    rows = conn.execute(
        "SELECT workflow_execution_id, claims, started_at, finished_at FROM attune.task_execution"
        " ORDER BY workflow_execution_id"
    ).fetchall()
    (_, claims_first, _, finished_first), (_, claims_second, started_second, _) = rows
    assert claims_first == 2  # reclaimed after the kill, slot and all
    assert claims_second == 1
    assert started_second >= finished_first  # the waiter never ran alongside
    assert conn.execute("SELECT used FROM attune.concurrency_slot").fetchone() == (0,)
