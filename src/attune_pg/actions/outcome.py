"""What a runner is given (`ActionContext`) and what it gives back (`ActionOutcome`).

Also the checks every result goes through before it can be stored: it must be JSON
(strict: no NaN/Infinity, no NUL characters, which PostgreSQL `jsonb` refuses) and its
JSON text must fit in `MAX_RESULT_BYTES` (`result_problem`, `checked`). The checks on JSON
text and the error shape live in `results`, which every python host imports too; they are
re-exported here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from attune_pg.actions.results import (
    MAX_MESSAGE_CHARS,
    MAX_RESULT_BYTES,
    clean_text,
    limit_text,
    make_error,
    one_line,
    size_text,
    text_problem,
)

__all__ = [
    "MAX_MESSAGE_CHARS",
    "MAX_RESULT_BYTES",
    "ActionContext",
    "ActionOutcome",
    "OutcomeStatus",
    "canceled",
    "checked",
    "clean_text",
    "decode_output",
    "failed",
    "human_size",
    "limit_text",
    "make_error",
    "one_line",
    "result_problem",
    "size_text",
    "succeeded",
    "text_problem",
    "timed_out",
    "timeout_message",
]

OutcomeStatus = Literal["succeeded", "failed", "timed_out", "canceled"]

_MB = 1024 * 1024


@dataclass(frozen=True)
class ActionContext:
    """Facts about the attempt an action runs for (all from the claimed task row)."""

    execution_id: int
    task_execution_id: int
    task_name: str
    attempt: int
    idempotency_key: str  # "<workflow_execution_id>:<task_execution_id>"
    timeout: float | None = None  # seconds for this attempt; None means no limit
    pack_path: str | None = None  # directory of the action's pack
    trace_id: str | None = None  # the root execution's trace id (ATTUNE_TRACE_ID)


@dataclass(frozen=True)
class ActionOutcome:
    """How one attempt ended. `error` is None exactly when `status` is "succeeded"."""

    status: OutcomeStatus
    result: Any = None  # JSON value
    error: dict[str, Any] | None = None  # {"type": ..., "message": ..., optional detail keys}

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


def decode_output(data: bytes) -> str:
    """Process output as text: UTF-8 with replacement characters, storable."""
    return clean_text(data.decode("utf-8", "replace"))


def succeeded(result: Any) -> ActionOutcome:
    return ActionOutcome("succeeded", result, None)


def failed(type_: str, message: str, result: Any = None, **detail: Any) -> ActionOutcome:
    return ActionOutcome("failed", result, make_error(type_, message, **detail))


def timed_out(timeout: float, result: Any = None, **detail: Any) -> ActionOutcome:
    return ActionOutcome(
        "timed_out", result, make_error("Timeout", timeout_message(timeout), **detail)
    )


def canceled(result: Any = None, **detail: Any) -> ActionOutcome:
    return ActionOutcome(
        "canceled", result, make_error("Canceled", "action was canceled", **detail)
    )


def timeout_message(timeout: float) -> str:
    return f"action timed out after {timeout:g} s"


def human_size(nbytes: int) -> str:
    """`nbytes` as "512 bytes", "3.5 KB" or "2.3 MB"."""
    if nbytes < 1024:
        return f"{nbytes} bytes"
    if nbytes < _MB:
        return f"{nbytes / 1024:.1f} KB"
    return size_text(nbytes)


def result_problem(result: Any) -> tuple[str, str] | None:
    """Why `result` cannot be stored, as (error type, message); None if it can."""
    try:
        text = json.dumps(result, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return "ResultNotJSON", f"result is not JSON: {exc}"
    return text_problem(text)


def checked(outcome: ActionOutcome) -> ActionOutcome:
    """`outcome` if its result can be stored.

    Otherwise a success becomes a failure naming the problem; any other outcome keeps
    its status and error, loses its result and notes why under `error["result_error"]`.
    """
    problem = result_problem(outcome.result)
    if problem is None:
        return outcome
    if outcome.status == "succeeded" or outcome.error is None:
        return failed(*problem)
    return ActionOutcome(outcome.status, None, {**outcome.error, "result_error": problem[1]})
