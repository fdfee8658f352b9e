"""Timers across worker processes: a 1-second interval timer fires exactly once per tick
while 3 workers race for it and one is SIGKILLed; while no worker runs, the missed ticks
are coalesced into the first event after; a 6-field cron timer fires on its schedule.
Bounded: about 16 seconds."""

from __future__ import annotations

import itertools
import os
import signal
import textwrap
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from attune_pg import packs

pytestmark = pytest.mark.e2e


def _events(conn: psycopg.Connection, rule: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT e.id, e.payload, f.workflow_execution_id FROM attune.event e"
            " LEFT JOIN attune.enforcement f ON f.event_id = e.id"
            " WHERE e.rule_ref = %s ORDER BY e.id",
            (rule,),
        ).fetchall()
    for row in rows:
        p = row["payload"]
        row["scheduled"] = datetime.fromisoformat(p["scheduled_at"])
        row["missed"] = p["missed_ticks"]
    return rows


def _chain(events: list[dict[str, Any]], step: timedelta) -> int:
    """Each event's tick follows the last one's (and the ticks it stood for) exactly:
    no tick twice, none skipped. Returns how many ticks the events stand for."""
    for before, after in itertools.pairwise(events):
        assert after["scheduled"] == before["scheduled"] + step * (1 + before["missed"]), (
            before["payload"],
            after["payload"],
        )
    counts = [e["payload"]["execution_count"] for e in events]
    assert counts == list(range(1, len(events) + 1))
    return sum(1 + e["missed"] for e in events)


def test_timers_fire_once_per_tick_across_workers_and_a_kill(
    conn: psycopg.Connection,
    worker_procs,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    pack = tmp_path / "clock"
    (pack / "rules").mkdir(parents=True)
    (pack / "pack.yaml").write_text('ref: clock\nversion: "1"\n')
    (pack / "rules" / "second.yaml").write_text(
        textwrap.dedent(
            """\
            trigger_ref: core.intervaltimer
            trigger_params: {unit: seconds, interval: 1}
            action_ref: core.noop
            """
        )
    )
    (pack / "rules" / "cron.yaml").write_text(
        textwrap.dedent(
            """\
            trigger_ref: core.crontimer
            trigger_params: {expression: "*/3 * * * * *", timezone: Asia/Kolkata}
            action_ref: core.noop
            """
        )
    )
    workers = [worker_procs(concurrency=4, lease_seconds=2.0) for _ in range(3)]
    deadline = time.monotonic() + 30
    while conn.execute(
        "SELECT count(*) FROM attune.worker WHERE stopped_at IS NULL"
    ).fetchone() != (3,):
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.05)
    packs.register(conn, pack)  # the first tick comes 1 s from now, workers waiting for it
    time.sleep(4.5)
    os.kill(workers[0].pid, signal.SIGKILL)  # mid-run, whatever it was doing
    workers[0].wait()
    time.sleep(4.5)
    for survivor in workers[1:]:  # now no worker runs at all
        assert survivor.poll() is None
        os.kill(survivor.pid, signal.SIGKILL)
        survivor.wait()
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    gap_start: datetime = row[0]
    time.sleep(3.2)
    worker_procs(concurrency=4, lease_seconds=2.0)  # one comes back and catches up
    time.sleep(3.5)

    ticks = _events(conn, "clock.second")
    assert len(ticks) >= 8, [t["payload"] for t in ticks]
    covered = _chain(ticks, timedelta(seconds=1))
    assert covered >= 14
    # While no worker ran, the ticks that passed came as one event that counts them
    # (with workers up, a tick is at most a moment late: nothing to coalesce).
    coalesced = [t for t in ticks if t["missed"] > 0]
    assert coalesced, [t["payload"] for t in ticks]
    assert max(t["missed"] for t in coalesced) >= 2
    assert all(t["scheduled"] >= gap_start - timedelta(seconds=1) for t in coalesced), (
        gap_start,
        [(t["payload"], t["id"]) for t in ticks],
    )
    # Every event started exactly one execution, and each finished.
    ids = [t["workflow_execution_id"] for t in ticks]
    assert None not in ids and len(set(ids)) == len(ids)
    unfinished = conn.execute(
        "SELECT count(*) FROM attune.workflow_execution WHERE id = ANY(%s)"
        " AND status <> 'succeeded'",
        (ids[:-2],),  # the newest may still be running
    ).fetchone()
    assert unfinished == (0,)

    # The 6-field cron (seconds first) fired on its schedule: every 3 s, on the second.
    # Its events and its timer row are read in one snapshot: a tick that comes due
    # between two reads (and is fired a moment later) would make either look wrong.
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        crons = _events(conn, "clock.cron")
        timer = conn.execute(
            "SELECT fire_count, next_fire_at FROM attune.timer WHERE rule_ref = 'clock.cron'"
        ).fetchone()
    assert len(crons) >= 3
    for event in crons:
        assert event["scheduled"].second % 3 == 0 and event["scheduled"].microsecond == 0
    assert _chain(crons, timedelta(seconds=3)) >= 5
    assert timer is not None and timer[0] == len(crons)  # every fire counted, once
    assert timer[1] > crons[-1]["scheduled"]  # moved on past the last tick it fired
