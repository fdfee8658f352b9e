"""Built-in actions, run in the worker: no subprocess, nothing heavy per call. The instant
ones (INSTANT: noop, echo) run on the loop's own thread, sleep on an action thread.

- `noop`: does nothing. Input `exit_code` (int, default 0): non-zero fails it with result
  `{"exit_code": n}` and error `NonZeroExit: exit code n`. Result `{}`.
- `echo`: result `{"message": message}`. Prints nothing.
- `sleep`: waits `seconds` (default 1) on the cancel event, so a cancel ends it at once and
  an attempt timeout shorter than `seconds` ends it as `timed_out`. Result `{"seconds": s}`.

`inquiry` (core.inquiry, core.ask) is not run by a worker: the engine parks the task on an
inquiry instead. Asking `run` for it, or for an unknown name, raises ActionError.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from attune_pg.actions.outcome import (
    ActionContext,
    ActionOutcome,
    canceled,
    checked,
    failed,
    succeeded,
    timed_out,
)
from attune_pg.errors import ActionError

if TYPE_CHECKING:  # the model's import cost stays out of every python action's start-up
    from attune_pg.spec.model import ActionSpec

Builtin = Callable[[dict[str, Any], ActionContext, threading.Event], ActionOutcome]

#: Builtin names the engine handles itself; a worker never runs them.
ENGINE_HANDLED = frozenset({"inquiry", "workflow"})

_NOOP_OK = ActionOutcome("succeeded", {}, None)


def noop(input: dict[str, Any], context: ActionContext, cancel: threading.Event) -> ActionOutcome:
    code = input.get("exit_code", 0)
    if not code:  # 0, None, False: the common case costs one dict lookup
        return _NOOP_OK
    if isinstance(code, bool) or not isinstance(code, int):
        return failed("InvalidInput", f"exit_code must be an integer, got {code!r}")
    return failed("NonZeroExit", f"exit code {code}", {"exit_code": code})


def echo(input: dict[str, Any], context: ActionContext, cancel: threading.Event) -> ActionOutcome:
    message = input.get("message")
    if input.get("uppercase") and isinstance(message, str):
        message = message.upper()
    return checked(succeeded({"message": message}))


def sleep(input: dict[str, Any], context: ActionContext, cancel: threading.Event) -> ActionOutcome:
    seconds = input.get("seconds", 1)
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        return failed("InvalidInput", f"seconds must be a non-negative number, got {seconds!r}")
    limit = context.timeout
    if limit is not None and limit < seconds:
        if cancel.wait(max(0.0, limit)):
            return canceled()
        return timed_out(limit)
    if cancel.wait(seconds):
        return canceled()
    return succeeded({"seconds": seconds})


BUILTINS: dict[str, Builtin] = {"noop": noop, "echo": echo, "sleep": sleep}

#: Builtins that return at once without blocking or I/O: the worker's loop calls them
#: itself (runners.start_action) instead of handing each call to an action thread, whose
#: hand-off costs far more than the call (docs/actions.md).
INSTANT: frozenset[Builtin] = frozenset({noop, echo})


def resolve(action: ActionSpec) -> Builtin:
    """The function behind a builtin action (by `entry_point`, else by its name)."""
    name = action.entry_point or action.ref.rpartition(".")[2]
    func = BUILTINS.get(name)
    if func is not None:
        return func
    if name in ENGINE_HANDLED:
        raise ActionError(
            f"action {action.ref}: builtin {name!r} is handled by the engine, not run by a worker"
        )
    raise ActionError(
        f"action {action.ref}: unknown builtin {name!r} (known: {', '.join(sorted(BUILTINS))})"
    )
