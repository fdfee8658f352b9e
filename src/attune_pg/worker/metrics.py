"""Prometheus metrics of one worker (`attune-worker --metrics-port P`).

Everything the worker itself does is an in-process counter or histogram, incremented
from what the loop already has in hand (claim rows, fenced attempts, the conductor's
execution writes): no SQL per task. The queue gauges are the one exception: they
describe the shared queue, not this worker, so they are read from the database when
Prometheus scrapes, by a bounded query over the partial indexes of live rows (never a
count over history), on a connection of their own, at most once a second.

Each Worker has its own registry, so several workers in one process (tests, an
embedding application) do not mix their numbers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from attune_pg import __version__, db
from attune_pg.store import observe
from attune_pg.store.queries import Q

log = logging.getLogger("attune_pg.worker")

# Seconds. Task durations span no-ops to hour-long actions; claim latency is
# sub-millisecond when idle and grows with the backlog.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# Queue gauges count at most this many rows each (a bounded query); past it they read
# the cap, which already says "far too few workers".
QUEUE_CAP = 100_000


class WorkerMetrics:
    """The counters, histograms and gauges of one worker, in their own registry."""

    def __init__(self, worker_id: str, concurrency: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Gauge(
            "attune_worker_info", "This worker (always 1).", ["worker", "version"], registry=r
        ).labels(worker_id, __version__).set(1)
        Gauge("attune_worker_slots", "Actions this worker runs at once.", registry=r).set(
            concurrency
        )
        self.running = Gauge("attune_tasks_running", "Tasks this worker is running.", registry=r)
        self.free = Gauge("attune_worker_slots_free", "Slots free for claims.", registry=r)
        self.executions_started = Counter(
            "attune_executions_started",
            "Executions this worker started (requested -> running).",
            ["workflow"],
            registry=r,
        )
        self.executions_finished = Counter(
            "attune_executions_finished",
            "Executions this worker ended, by final status.",
            ["workflow", "status"],
            registry=r,
        )
        self.tasks_claimed = Counter(
            "attune_tasks_claimed", "Task rows this worker claimed.", ["action"], registry=r
        )
        self.tasks_finished = Counter(
            "attune_tasks_finished",
            "Task attempts this worker finished, by final status (waiting tasks count when"
            " their inquiry or child ends).",
            ["action", "status"],
            registry=r,
        )
        self.task_duration = Histogram(
            "attune_task_duration_seconds",
            "Claim to finish of the task attempts this worker ran.",
            ["action"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.claim_latency = Histogram(
            "attune_claim_latency_seconds",
            "From a task becoming claimable (run_at) to this worker claiming it (DB clock).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.leases_reaped = Counter(
            "attune_leases_reaped",
            "Tasks of dead workers this worker handed back to the queue, or closed as their"
            " execution had ended (expired leases).",
            registry=r,
        )
        self.handed_back = Counter(
            "attune_tasks_handed_back", "Tasks given back on a graceful stop.", registry=r
        )
        self.stale_results = Counter(
            "attune_stale_results",
            "Results dropped because the lease had passed to another worker.",
            registry=r,
        )
        self.reconnects = Counter(
            "attune_db_reconnects",
            "Database connections re-established after a failure.",
            ["connection"],
            registry=r,
        )
        # Hooks for the automation (triggers, rules, timers): the code that fires a timer
        # or emits an event calls WorkerMetrics.timer_fired / event_emitted.
        self.timers_fired = Counter(
            "attune_timers_fired", "Timer ticks this worker fired.", ["timer"], registry=r
        )
        self.events_emitted = Counter(
            "attune_events_emitted", "Events this worker emitted.", ["trigger"], registry=r
        )
        for connection in ("main", "listen"):
            self.reconnects.labels(connection)

    def timer_fired(self, timer: str, ticks: int = 1) -> None:
        self.timers_fired.labels(timer).inc(ticks)

    def event_emitted(self, trigger: str, count: int = 1) -> None:
        self.events_emitted.labels(trigger).inc(count)

    def watch_slots(self, running: Callable[[], int], concurrency: int) -> None:
        """Read the running count from the worker at scrape time (no bookkeeping)."""
        self.running.set_function(lambda: float(running()))
        self.free.set_function(lambda: float(max(concurrency - running(), 0)))


class QueueCollector(Collector):
    """The shared queue, read at scrape time: bounded counts over partial indexes."""

    _GAUGES = (
        ("ready", "attune_queue_ready_tasks", "Tasks claimable now (scheduled and due)."),
        ("delayed", "attune_queue_delayed_tasks", "Tasks scheduled for later (delay, retry)."),
        ("running", "attune_queue_running_tasks", "Tasks running on any worker."),
        ("waiting", "attune_queue_waiting_tasks", "Tasks waiting on an inquiry or a child."),
        ("requested", "attune_queue_requested_executions", "Executions waiting to start."),
        (
            "oldest_ready_age",
            "attune_queue_oldest_ready_age_seconds",
            "How long the oldest claimable task has waited (0 when none).",
        ),
    )

    def __init__(self, dsn: str, min_interval: float = 1.0) -> None:
        self._dsn = dsn
        self._min_interval = min_interval
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._sample: dict[str, float] | None = None
        self._taken = 0.0
        self.errors = 0

    def describe(self) -> Iterator[Any]:
        return iter(())  # unknown until the database answers: never sampled at register

    def collect(self) -> Iterator[Any]:
        sample = self._read()
        ok = GaugeMetricFamily(
            "attune_queue_up", "1 if the last queue sample from the database succeeded."
        )
        ok.add_metric([], 1.0 if sample is not None else 0.0)
        yield ok
        if sample is None:
            return
        for key, name, doc in self._GAUGES:
            family = GaugeMetricFamily(name, doc)
            family.add_metric([], sample[key])
            yield family

    def _read(self) -> dict[str, float] | None:
        with self._lock:
            if self._sample is not None and time.monotonic() - self._taken < self._min_interval:
                return self._sample
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = db.connect(self._dsn, name="attune_worker_metrics")
                    self._conn.execute(Q.session_statement_timeout, {"timeout": "5s"})
                self._sample = observe.queue_sample(self._conn, QUEUE_CAP)
            except Exception as exc:  # a scrape never takes the worker down
                self.errors += 1
                if self.errors == 1 or self.errors % 100 == 0:
                    log.warning("metrics: cannot sample the queue: %s", str(exc).strip()[:200])
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                self._sample = None
            self._taken = time.monotonic()
            return self._sample

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class MetricsServer:
    """The HTTP endpoint (`/metrics`) of one worker, with the queue collector."""

    def __init__(self, metrics: WorkerMetrics, dsn: str, host: str, port: int) -> None:
        self._queue = QueueCollector(dsn)
        metrics.registry.register(self._queue)
        self._server, self._thread = start_http_server(port, host, metrics.registry)
        self.host = host
        self.port = int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._queue.close()
