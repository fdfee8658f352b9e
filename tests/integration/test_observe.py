"""Trace ids (root, children, actions), the metrics' queue sample, OpenTelemetry spans."""

from __future__ import annotations

import re
import time

import psycopg
import pytest

from attune_pg.store import observe
from tests.helpers import start, wait_done

TRACE = re.compile(r"^[0-9a-f]{32}$")


def test_children_and_actions_share_the_root_trace_id(
    conn: psycopg.Connection, register, worker_thread
) -> None:  # type: ignore[no-untyped-def]
    register("opspack")
    worker_thread()
    root = wait_done(conn, start(conn, "opspack.family"), timeout=60)
    assert root["status"] == "succeeded", root["error"]
    assert TRACE.match(root["trace_id"])
    child = conn.execute(
        "SELECT trace_id, root_id FROM attune.workflow_execution WHERE parent_task_id IS NOT NULL"
    ).fetchone()
    assert child == (root["trace_id"], root["id"])
    # A python action and a command (core.local) both get it as ATTUNE_TRACE_ID.
    assert root["output"] == {
        "root": root["trace_id"],
        "child": root["trace_id"],
        "child_shell": root["trace_id"],
    }
    other = wait_done(conn, start(conn, "opspack.family"), timeout=60)
    assert other["trace_id"] != root["trace_id"]


def test_a_client_passes_its_own_trace_id_and_a_bad_one_is_refused(
    conn: psycopg.Connection, register, worker_thread
) -> None:  # type: ignore[no-untyped-def]
    register("opspack")
    mine = "4bf92f3577b34da6a3ce929d0e0e4736"
    (eid,) = conn.execute(
        "INSERT INTO attune.workflow_execution (workflow_ref, trace_id) VALUES"
        " ('opspack.family', %s) RETURNING id",
        (mine,),
    ).fetchone()  # type: ignore[misc]
    worker_thread()
    row = wait_done(conn, eid, timeout=60)
    assert row["output"] == {"root": mine, "child": mine, "child_shell": mine}
    for bad in ("4BF92F3577B34DA6A3CE929D0E0E4736", "abc", "0" * 32):
        with pytest.raises(psycopg.errors.CheckViolation, match="trace_id_format"):
            conn.execute(
                "INSERT INTO attune.workflow_execution (workflow_ref, trace_id)"
                " VALUES ('opspack.family', %s)",
                (bad,),
            )


def test_rows_from_before_trace_ids_get_a_stable_family_id(
    conn: psycopg.Connection, register
) -> None:  # type: ignore[no-untyped-def]
    """Executions created before migration 0010 have no trace id: the worker uses one
    derived from the root id, the same for the root and its children."""
    from attune_pg.store import lock

    register("opspack")
    eid = start(conn, "opspack.family")
    conn.execute("UPDATE attune.workflow_execution SET trace_id = NULL WHERE id = %s", (eid,))
    with conn.transaction():
        (execution,), _ = lock.lock_executions(conn, [eid])
    assert execution.trace_id == f"{eid:032x}"


def _task_row(conn: psycopg.Connection, execution_id: int, priority: int, age: float) -> None:
    conn.execute(
        "INSERT INTO attune.task_execution (workflow_execution_id, task_name, action_ref,"
        " status, priority, run_at, attempt)"
        " VALUES (%s, 't', 'core.noop', 'scheduled', %s, now() - make_interval(secs => %s),"
        " (SELECT coalesce(max(attempt), 0) + 1 FROM attune.task_execution))",
        (execution_id, priority, age),
    )


def test_queue_sample_counts_live_rows_and_finds_the_oldest_ready_across_priorities(
    conn: psycopg.Connection, register
) -> None:  # type: ignore[no-untyped-def]
    register("opspack")
    empty = observe.queue_sample(conn, 1000)
    assert empty == {
        "ready": 0.0,
        "delayed": 0.0,
        "running": 0.0,
        "waiting": 0.0,
        "requested": 0.0,
        "oldest_ready_age": 0.0,
    }
    eid = start(conn, "opspack.mixed")
    start(conn, "opspack.mixed")
    # The oldest ready row has the lowest claim priority (5): only a scan of every
    # priority finds it. A delayed row (negative age) is not ready.
    for priority, age in ((0, 2.0), (0, 1.0), (-3, 5.0), (5, 120.0), (5, -300.0)):
        _task_row(conn, eid, priority, age)
    sample = observe.queue_sample(conn, 1000)
    assert (sample["ready"], sample["delayed"], sample["requested"]) == (4.0, 1.0, 2.0)
    assert 119.0 < sample["oldest_ready_age"] < 200.0
    # Counts are bounded: the cap is what a scrape reads at most.
    capped = observe.queue_sample(conn, 3)
    assert capped["ready"] == 3.0 and capped["requested"] == 2.0


def test_opentelemetry_spans_per_attempt_in_the_execution_trace(
    conn: psycopg.Connection, register, worker_thread
) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from attune_pg.worker.tracing import execution_span_id

    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        # The application's provider is respected: attune_pg never sets one, the test does.
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[attr-defined]

    register("opspack")
    worker_thread()
    ok = wait_done(conn, start(conn, "opspack.mixed"), timeout=60)
    bad = wait_done(conn, start(conn, "opspack.mixed", {"code": 2}), timeout=60)
    deadline = time.monotonic() + 10
    ours: list = []  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        ours = [
            s
            for s in exporter.get_finished_spans()
            if s.attributes and s.attributes.get("attune.execution.id") in (ok["id"], bad["id"])
        ]
        if len(ours) == 10:
            break
        time.sleep(0.05)
    assert len(ours) == 10  # 5 attempts each: first, 3 items, last
    for span in ours:
        execution = ok if span.attributes["attune.execution.id"] == ok["id"] else bad
        assert span.context.trace_id == int(execution["trace_id"], 16)
        assert span.parent is not None
        assert span.parent.span_id == execution_span_id(execution["id"])
        assert span.name.startswith("attune.task ")
        assert span.end_time >= span.start_time
    failed = [s for s in ours if s.attributes["attune.status"] == "failed"]
    assert len(failed) == 1 and failed[0].status.status_code.name == "ERROR"
    assert failed[0].attributes["attune.execution.id"] == bad["id"]
    exporter.clear()


def test_timer_ticks_and_their_events_are_counted_by_the_worker_that_fires_them(
    conn: psycopg.Connection, worker_thread, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from attune_pg import packs

    pack = tmp_path / "clock"
    (pack / "rules").mkdir(parents=True)
    (pack / "pack.yaml").write_text('ref: clock\nlabel: Clock\nversion: "1.0.0"\n')
    (pack / "rules" / "tick.yaml").write_text(
        "trigger_ref: core.intervaltimer\n"
        "trigger_params: {unit: seconds, interval: 1}\n"
        "action_ref: core.noop\n"
    )
    packs.register(conn, pack)
    worker = worker_thread(metrics_port=0, metrics_host="127.0.0.1")
    deadline = time.monotonic() + 30
    while True:
        (fired,) = conn.execute(
            "SELECT count(*) FROM attune.event WHERE rule_ref = 'clock.tick'"
        ).fetchone()  # type: ignore[misc]
        if fired >= 2:
            break
        assert time.monotonic() < deadline, "the timer did not fire"
        time.sleep(0.1)
    conn.execute("UPDATE attune.timer SET next_fire_at = NULL")  # no more ticks
    time.sleep(1.5)
    (fired,) = conn.execute(
        "SELECT count(*) FROM attune.event WHERE rule_ref = 'clock.tick'"
    ).fetchone()  # type: ignore[misc]
    while worker.observe.metrics_port is None:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{worker.observe.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("attune_timers_fired_total", (("timer", "clock.tick"),))] == fired
    assert samples[("attune_events_emitted_total", (("trigger", "core.intervaltimer"),))] == fired
