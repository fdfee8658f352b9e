"""What a runner is given (`ActionContext`) and what it gives back (`ActionOutcome`).

Also the checks every result goes through before it can be stored: it must be JSON
(strict: no NaN/Infinity, no NUL characters, which PostgreSQL `jsonb` refuses) and its
JSON text must fit in `MAX_RESULT_BYTES`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

OutcomeStatus = Literal["succeeded", "failed", "timed_out", "canceled"]

#: The largest result (its JSON text, UTF-8) an action may return.
MAX_RESULT_BYTES = 1024 * 1024

#: Longest `error["message"]`; longer messages are cut with an ellipsis.
MAX_MESSAGE_CHARS = 2000

_MB = 1024 * 1024
# A JSON escape of U+0000 that is not itself an escaped backslash followed by "u0000".
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


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


def clean_text(text: str) -> str:
    """`text` without what PostgreSQL text/jsonb refuses (NUL, lone surrogates)."""
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "\ufffd")


def decode_output(data: bytes) -> str:
    """Process output as text: UTF-8 with replacement characters, storable."""
    return clean_text(data.decode("utf-8", "replace"))


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` on one line (line breaks become spaces), at most `limit` characters."""
    flat = " ".join(part.strip() for part in text.splitlines() if part.strip())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return clean_text(flat)


def make_error(type_: str, message: str, **detail: Any) -> dict[str, Any]:
    """An error dict: one-line `message`, plus the non-empty `detail` entries."""
    error: dict[str, Any] = {"type": type_, "message": one_line(message) or type_}
    for key, value in detail.items():
        if value not in (None, "", [], {}):
            error[key] = clean_text(value) if isinstance(value, str) else value
    return error


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


def size_text(nbytes: int) -> str:
    """`nbytes` in MB with one decimal ("2.3 MB")."""
    return f"{nbytes / _MB:.1f} MB"


def human_size(nbytes: int) -> str:
    """`nbytes` as "512 bytes", "3.5 KB" or "2.3 MB"."""
    if nbytes < 1024:
        return f"{nbytes} bytes"
    if nbytes < _MB:
        return f"{nbytes / 1024:.1f} KB"
    return size_text(nbytes)


def limit_text() -> str:
    return f"{MAX_RESULT_BYTES / _MB:g} MB"


def result_problem(result: Any) -> tuple[str, str] | None:
    """Why `result` cannot be stored, as (error type, message); None if it can."""
    try:
        text = json.dumps(result, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return "ResultNotJSON", f"result is not JSON: {exc}"
    return text_problem(text)


def text_problem(text: str) -> tuple[str, str] | None:
    """Why the JSON text of a result cannot be stored; None if it can."""
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        return (
            "ResultNotJSON",
            "result is not JSON: it contains a NUL character (\\u0000), "
            "which PostgreSQL jsonb cannot store",
        )
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            return "ResultNotJSON", "result is not JSON: it contains a lone surrogate character"
    if size > MAX_RESULT_BYTES:
        return "ResultTooLarge", f"result is {size_text(size)}, over the {limit_text()} limit"
    return None


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
