"""OpenTelemetry spans, when the `otel` extra is installed (`pip install 'attune-pg[otel]'`).

One span per task attempt a worker runs (`attune.task <name>`, from claim to finish),
in the trace of its root execution: the trace id is the execution's `trace_id`, the
same one the logs and ATTUNE_TRACE_ID carry, so a client that started the execution
with its own trace id sees the workflow's tasks inside its trace. All spans of one
execution share a parent span id derived from the execution id (the execution itself is
not a span: it may outlive any worker), so trace views group them per execution.

The tracer comes from the global tracer provider: attune_pg never installs one. Set it
up in the embedding application, or run the worker under `opentelemetry-instrument`;
without a provider the API's no-op tracer makes this free.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceFlags

from attune_pg import __version__
from attune_pg.engine.state import Attempt
from attune_pg.machine import TaskStatus

_MASK64 = (1 << 64) - 1


def execution_span_id(execution_id: int) -> int:
    """A stable, non-zero 64-bit span id for an execution (the parent of its task spans)."""
    return ((execution_id * 0x9E3779B97F4A7C15) & _MASK64) or 1


class Spans:
    def __init__(self) -> None:
        self._tracer = trace.get_tracer("attune_pg", __version__)

    def task(
        self, attempt: Attempt, trace_id: str | None, start_ns: int, end_ns: int, worker: str
    ) -> None:
        if not trace_id or isinstance(
            trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
        ):
            return  # nobody set up a provider: skip the no-op span work on the hot path
        try:
            trace_int = int(trace_id, 16)
        except ValueError:
            return
        parent = SpanContext(
            trace_id=trace_int,
            span_id=execution_span_id(attempt.execution_id),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        context = trace.set_span_in_context(NonRecordingSpan(parent))
        span = self._tracer.start_span(
            f"attune.task {attempt.task_name}",
            context=context,
            kind=SpanKind.INTERNAL,
            start_time=start_ns,
            attributes={
                "attune.execution.id": attempt.execution_id,
                "attune.task.name": attempt.task_name,
                "attune.task.id": attempt.task_execution_id,
                "attune.task.attempt": attempt.attempt,
                "attune.task.item": -1 if attempt.item_index is None else attempt.item_index,
                "attune.action": attempt.action_ref,
                "attune.status": attempt.status,
                "attune.worker": worker,
            },
        )
        if attempt.status != TaskStatus.SUCCEEDED:
            error = attempt.error if isinstance(attempt.error, dict) else {}
            span.set_status(Status(StatusCode.ERROR, str(error.get("type") or attempt.status)))
        span.end(end_time=end_ns)
