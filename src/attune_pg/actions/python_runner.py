"""The python runner: call `function(**input)` from `<pack>/actions/<file>.py` in a child.

`entry_point` is `"file.py:function"` (a bare `"file.py"` means function `run`), relative to
the pack's `actions/` directory. The call happens in a fresh interpreter
(`python -u -P -m attune_pg.actions.python_host <fd>`, its own session), so a timeout or a
cancel can kill it with everything it started, and nothing the action does (sys.exit,
os._exit, BaseException, a segfault, a leaked thread) can take the worker down.

The result travels over a dedicated pipe, never stdout: actions may print freely. Their
stdout and stderr (the last `OUTPUT_TAIL_BYTES` of each) are attached to the error of any
outcome that is not a success. The child's environment is the worker's plus
`ATTUNE_IDEMPOTENCY_KEY`, `ATTUNE_EXECUTION_ID`, `ATTUNE_TASK_EXECUTION_ID`,
`ATTUNE_TASK_NAME` and `ATTUNE_ATTEMPT`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

from attune_pg.actions.outcome import (
    MAX_RESULT_BYTES,
    ActionContext,
    ActionOutcome,
    canceled,
    checked,
    decode_output,
    failed,
    limit_text,
    make_error,
    succeeded,
    timed_out,
)
from attune_pg.actions.process import action_env, pack_file, run_process, signal_name
from attune_pg.spec.model import ActionSpec

#: How much of the action's stdout and stderr (each, last bytes) an error keeps.
OUTPUT_TAIL_BYTES = 64 * 1024
HOST_MODULE = "attune_pg.actions.python_host"


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
    try:
        path, function = resolve(action, context)
    except ValueError as exc:
        return failed("ActionError", str(exc))
    try:
        request = json.dumps({"file": path, "function": function, "input": input})
    except (TypeError, ValueError) as exc:
        return failed("InvalidInput", f"input is not JSON: {exc}")
    try:
        proc = run_process(
            [sys.executable, "-u", "-P", "-m", HOST_MODULE],
            cancel=cancel,
            timeout=context.timeout,
            env=action_env(context),
            stdin=request.encode("utf-8"),
            output_limit=OUTPUT_TAIL_BYTES,
            keep="tail",
            result_channel=True,
            result_limit=MAX_RESULT_BYTES + 64 * 1024,
        )
    except OSError as exc:
        return failed("ActionError", f"cannot start the python interpreter: {exc}")

    logs = {"stdout": decode_output(proc.stdout.data), "stderr": decode_output(proc.stderr.data)}
    if proc.ended_by == "cancel":
        return canceled(**logs)
    if proc.ended_by == "timeout":
        assert context.timeout is not None
        return timed_out(context.timeout, **logs)
    assert proc.result is not None
    if proc.result.truncated:
        return failed("ResultTooLarge", f"result is over the {limit_text()} limit", **logs)
    payload = proc.result.data
    if not payload:
        code = proc.return_code
        how = f"{code} ({signal_name(code)})" if code is not None and code < 0 else str(code)
        return failed(
            "ActionCrashed", f"action process exited with code {how} without a result", **logs
        )
    try:
        message = json.loads(payload)
        ok = bool(message["ok"])
    except (ValueError, KeyError, TypeError) as exc:
        return failed("ActionError", f"the python host wrote an unreadable result: {exc}", **logs)
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
            **{**detail, **logs},
        ),
    )
