"""The python runner: call `function(**input)` from `<pack>/actions/<file>.py` in a warm host.

`entry_point` is `"file.py:function"` (a bare `"file.py"` means function `run`), relative to
the pack's `actions/` directory. The call runs in a `python_host` process of the worker's
pool (`python_pool`): an interpreter of its own, in its own session, that imported the file
once and serves many calls, one at a time. A timeout or a cancel kills the host with
everything it started; nothing the action does (sys.exit, os._exit, BaseException, a
segfault, a leaked thread or process) can take the worker down or reach the next call on
that host. docs/actions.md says exactly what calls on one host share.

The result travels over a dedicated pipe, never stdout: actions may print freely. Their
stdout and stderr (the last `OUTPUT_TAIL_BYTES` of each) are attached to the error of any
outcome that is not a success. The host's environment is the worker's plus, for each call,
`ATTUNE_IDEMPOTENCY_KEY`, `ATTUNE_EXECUTION_ID`, `ATTUNE_TASK_EXECUTION_ID`,
`ATTUNE_TASK_NAME` and `ATTUNE_ATTEMPT`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from typing import Any

from attune_pg.actions.host_output import OUTPUT_TAIL_BYTES
from attune_pg.actions.host_process import CallResult
from attune_pg.actions.outcome import (
    ActionContext,
    ActionOutcome,
    canceled,
    checked,
    decode_output,
    failed,
    make_error,
    succeeded,
    timed_out,
)
from attune_pg.actions.process import attempt_env, pack_file, signal_name
from attune_pg.actions.python_pool import default_pool
from attune_pg.spec.model import ActionSpec

__all__ = ["OUTPUT_TAIL_BYTES", "resolve", "run", "start"]


def resolve(action: ActionSpec, context: ActionContext) -> tuple[str, str]:
    """(absolute file, function) of a python action. Raises ValueError naming the action."""
    entry = (action.entry_point or "").strip()
    file, _, function = entry.partition(":")
    function = function.strip() or "run"
    if not file.endswith(".py") or not function.isidentifier():
        raise ValueError(
            f"action {action.ref}: entry_point must be 'file.py:function', got {entry!r}"
        )
    path = pack_file(context.pack_path or action.pack_path, file.strip(), action.ref)
    if not os.path.isfile(path):
        raise ValueError(f"action {action.ref}: {path} does not exist")
    return path, function


def run(
    action: ActionSpec, input: dict[str, Any], context: ActionContext, cancel: threading.Event
) -> ActionOutcome:
    """Run one call and wait for its outcome (the worker uses `start`, which does not)."""
    outcomes: list[ActionOutcome] = []
    ended = threading.Event()

    def done(outcome: ActionOutcome) -> None:
        outcomes.append(outcome)
        ended.set()

    start(action, input, context, cancel, done)
    ended.wait()
    return outcomes[0]


def start(
    action: ActionSpec,
    input: dict[str, Any],
    context: ActionContext,
    cancel: threading.Event,
    done: Callable[[ActionOutcome], None],
) -> None:
    """Start one call on a warm host and return: `done` gets its outcome once, from the
    pool's pump thread (or from this thread when the call cannot start)."""
    try:
        path, function = resolve(action, context)
    except ValueError as exc:
        done(failed("ActionError", str(exc)))
        return
    try:
        request = json.dumps(
            {"file": path, "function": function, "input": input, "env": attempt_env(context)}
        ).encode("utf-8")
    except (TypeError, ValueError) as exc:
        done(failed("InvalidInput", f"input is not JSON: {exc}"))
        return
    try:
        pool = default_pool()
    except ValueError as exc:
        done(failed("ActionError", f"cannot run python actions: {exc}"))
        return

    def ended(ending: CallResult | Exception) -> None:
        try:
            outcome = _outcome(ending, context)
        except Exception as exc:  # never leave a call without an outcome
            outcome = failed("ActionError", f"the python runner failed: {exc}")
        done(outcome)

    pool.submit(os.path.dirname(path), request, cancel, context.timeout, ended)


def _outcome(call: CallResult | Exception, context: ActionContext) -> ActionOutcome:
    """What a call's ending means for its task."""
    if isinstance(call, OSError):
        return failed("ActionError", f"cannot start the python interpreter: {call}")
    if isinstance(call, Exception):
        return failed("ActionError", f"the python runner failed: {type(call).__name__}: {call}")
    if call.ended_by == "cancel":
        return canceled(**_logs(call))
    if call.ended_by == "timeout":
        assert context.timeout is not None
        return timed_out(context.timeout, **_logs(call))
    if call.garbled:
        return failed("ActionError", "the python host wrote an unreadable result", **_logs(call))
    payload = call.answer
    if payload is None:
        code = call.return_code
        how = f"{code} ({signal_name(code)})" if code is not None and code < 0 else str(code)
        message = f"action process exited with code {how} without a result"
        return failed("ActionCrashed", message, **_logs(call))
    try:
        message = json.loads(payload)
        ok = bool(message["ok"])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        return failed(
            "ActionError", f"the python host wrote an unreadable result: {exc}", **_logs(call)
        )
    if ok:
        return checked(succeeded(message.get("result")))
    error = message.get("error")
    if not isinstance(error, dict):
        error = {}
    detail = {k: v for k, v in error.items() if k not in ("type", "message")}
    return ActionOutcome(
        "failed",
        None,
        make_error(
            str(error.get("type") or "ActionError"),
            str(error.get("message") or "action failed"),
            **{**detail, **_logs(call)},
        ),
    )


def _logs(call: CallResult) -> dict[str, str]:
    """What the call printed, for the error of an outcome that is not a success."""
    return {"stdout": decode_output(call.stdout.data), "stderr": decode_output(call.stderr.data)}
