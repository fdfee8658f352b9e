"""What a worker tells the outside: one log line per state change, Prometheus metrics,
OpenTelemetry spans. The loop calls in with what it already holds (claimed rows, the
advance's statistics); nothing here touches the database.

State changes are logged on `attune_pg.state` at INFO: a claim (`running`), an attempt's
end (`succeeded`, `failed`, `timed_out`, `canceled`, or `waiting` when it parks), and
every execution status change this worker writes. With `--log-format json` each line
carries `event`, `execution`, `workflow`, `task`, `task_id`, `item`, `attempt`, `action`,
`status`, `from`, `duration`, `worker`, `error_type` and `trace_id`. The complete history,
including what other workers and SQL functions did, stays in attune.execution_event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from attune_pg.advance import AdvanceStats
from attune_pg.engine.state import Attempt
from attune_pg.errors import ServiceError
from attune_pg.machine import TASK_TERMINAL, WORKFLOW_TERMINAL, TaskStatus, WorkflowStatus
from attune_pg.store.claims import ClaimedTask

state_log = logging.getLogger("attune_pg.state")
log = logging.getLogger("attune_pg.worker")

_TASK_END = TASK_TERMINAL - {TaskStatus.SKIPPED}


@dataclass
class _Claim:
    monotonic: float
    wall_ns: int
    trace_id: str | None


class Observer:
    """Logs, metrics and spans of one worker."""

    def __init__(
        self,
        worker_id: str,
        concurrency: int,
        *,
        metrics_port: int | None = None,
        metrics_host: str = "0.0.0.0",
    ) -> None:
        self.worker_id = worker_id
        self._concurrency = concurrency
        self._metrics_port = metrics_port
        self._metrics_host = metrics_host
        self._claims: dict[int, _Claim] = {}
        self.metrics: Any = None  # WorkerMetrics when --metrics-port is given
        self._server: Any = None
        self._spans = _spans()

    # ------------------------------------------------------------ lifecycle

    def start(self, dsn: str, running: Callable[[], int]) -> None:
        """Open the metrics endpoint, if asked for."""
        if self._metrics_port is None:
            return
        from attune_pg.worker.metrics import MetricsServer, WorkerMetrics

        self.metrics = WorkerMetrics(self.worker_id, self._concurrency)
        self.metrics.watch_slots(running, self._concurrency)
        try:
            self._server = MetricsServer(self.metrics, dsn, self._metrics_host, self._metrics_port)
        except OSError as exc:
            raise ServiceError(
                f"cannot serve metrics on {self._metrics_host}:{self._metrics_port}:"
                f" {exc.strerror or exc}"
            ) from exc
        log.info(
            "worker %s: metrics at http://%s:%d/metrics",
            self.worker_id,
            self._server.host,
            self._server.port,
        )

    @property
    def metrics_port(self) -> int | None:
        return None if self._server is None else int(self._server.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    # ------------------------------------------------------------ events from the loop

    def claimed(self, tasks: Sequence[ClaimedTask]) -> None:
        if not tasks:
            return
        now, wall = time.monotonic(), time.time_ns()
        for task in tasks:
            self._claims[task.id] = _Claim(now, wall, task.trace_id)
        if self.metrics is not None:
            for task in tasks:
                self.metrics.tasks_claimed.labels(task.action_ref).inc()
                self.metrics.claim_latency.observe(max(task.claimed_at - task.ready_at, 0.0))
        if state_log.isEnabledFor(logging.INFO):
            for task in tasks:
                fields = self._task_fields(task.workflow_execution_id, task.task_name, task.id)
                fields.update(
                    item=task.item_index,
                    attempt=task.attempt,
                    action=task.action_ref,
                    status=TaskStatus.RUNNING,
                    trace_id=task.trace_id,
                    wait=round(max(task.claimed_at - task.ready_at, 0.0), 6),
                )
                state_log.info(
                    "execution %s task %s attempt %s: running",
                    task.workflow_execution_id,
                    _task_label(task.task_name, task.item_index),
                    task.attempt,
                    extra={"attune": fields},
                )

    def advanced(self, stats: AdvanceStats) -> None:
        """After a committed advance, request pass or start."""
        if stats.attempts:
            self._attempts(stats.attempts)
        if stats.executions:
            self._executions(stats)
        if stats.stale and self.metrics is not None:
            self.metrics.stale_results.inc(stats.stale)

    def reaped(self, count: int) -> None:
        if count and self.metrics is not None:
            self.metrics.leases_reaped.inc(count)

    def handed_back(self, task_ids: Sequence[int]) -> None:
        for task_id in task_ids:
            self._claims.pop(task_id, None)
        if task_ids and self.metrics is not None:
            self.metrics.handed_back.inc(len(task_ids))

    def timers(self, rules: Sequence[str], triggers: Sequence[str]) -> None:
        """Timer ticks this worker fired (by rule) and the events they emitted."""
        for rule in rules:
            self.timer_fired(rule)
        for trigger in triggers:
            self.event_emitted(trigger)

    def timer_fired(self, timer: str, ticks: int = 1) -> None:
        """The automation's hook: this worker fired `ticks` ticks of timer `timer`."""
        if self.metrics is not None:
            self.metrics.timer_fired(timer, ticks)

    def event_emitted(self, trigger: str, count: int = 1) -> None:
        """The automation's hook: this worker emitted `count` events of `trigger`."""
        if self.metrics is not None:
            self.metrics.event_emitted(trigger, count)

    def reconnected(self, connection: str) -> None:
        """The main ("main") or LISTEN ("listen") connection is back after a failure."""
        if self.metrics is not None:
            self.metrics.reconnects.labels(connection).inc()

    # ------------------------------------------------------------ internals

    def _attempts(self, attempts: Sequence[Attempt]) -> None:
        now, wall = time.monotonic(), time.time_ns()
        logging_on = state_log.isEnabledFor(logging.INFO)
        for a in attempts:
            # A parked task (waiting) is done with this worker too: its wait ends elsewhere.
            claim = self._claims.pop(a.task_execution_id, None)
            seconds = None if claim is None else now - claim.monotonic
            error_type = a.error.get("type") if isinstance(a.error, dict) else None
            if self.metrics is not None and a.status in _TASK_END:
                self.metrics.tasks_finished.labels(a.action_ref, a.status).inc()
                if seconds is not None:
                    self.metrics.task_duration.labels(a.action_ref).observe(seconds)
            if self._spans is not None and claim is not None and a.status != TaskStatus.WAITING:
                self._spans.task(a, claim.trace_id, claim.wall_ns, wall, self.worker_id)
            if logging_on:
                fields = self._task_fields(a.execution_id, a.task_name, a.task_execution_id)
                fields.update(
                    item=a.item_index,
                    attempt=a.attempt,
                    action=a.action_ref,
                    status=a.status,
                    duration=None if seconds is None else round(seconds, 6),
                    error_type=error_type,
                    trace_id=None if claim is None else claim.trace_id,
                )
                took = "" if seconds is None else f" in {seconds:.3f}s"
                why = f" ({error_type})" if error_type else ""
                state_log.info(
                    "execution %s task %s attempt %s: %s%s%s",
                    a.execution_id,
                    _task_label(a.task_name, a.item_index),
                    a.attempt,
                    a.status,
                    took,
                    why,
                    extra={"attune": fields},
                )
        if len(self._claims) > 100_000:  # rows claimed but never reported (bugs): bounded
            self._claims.clear()

    def _executions(self, stats: AdvanceStats) -> None:
        logging_on = state_log.isEnabledFor(logging.INFO)
        for change in stats.executions:
            if self.metrics is not None:
                if change.before == WorkflowStatus.REQUESTED:
                    self.metrics.executions_started.labels(change.workflow).inc()
                if change.status in WORKFLOW_TERMINAL:
                    self.metrics.executions_finished.labels(change.workflow, change.status).inc()
            if logging_on:
                fields: dict[str, Any] = {
                    "event": "execution",
                    "execution": change.id,
                    "workflow": change.workflow,
                    "from": change.before,
                    "status": change.status,
                    "duration": None if change.seconds is None else round(change.seconds, 6),
                    "error_type": change.error_type,
                    "worker": self.worker_id,
                    "trace_id": change.trace_id,
                }
                why = f" ({change.error_type})" if change.error_type else ""
                took = (
                    f" after {change.seconds:.3f}s"
                    if change.seconds is not None and change.status in WORKFLOW_TERMINAL
                    else ""
                )
                state_log.info(
                    "execution %s (%s): %s -> %s%s%s",
                    change.id,
                    change.workflow,
                    change.before,
                    change.status,
                    took,
                    why,
                    extra={"attune": fields},
                )

    def _task_fields(self, execution_id: int, task_name: str, task_id: int) -> dict[str, Any]:
        return {
            "event": "task",
            "execution": execution_id,
            "task": task_name,
            "task_id": task_id,
            "worker": self.worker_id,
        }


def _task_label(name: str, item: int | None) -> str:
    return name if item is None else f"{name}[{item}]"


def _spans() -> Any:
    """The OpenTelemetry span writer when the `otel` extra is installed, else None."""
    try:
        from attune_pg.worker.tracing import Spans
    except ImportError:
        return None
    return Spans()
