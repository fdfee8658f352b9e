"""Action runners: run one attempt of an action and say how it ended.

The worker calls, in a worker thread and outside any database transaction::

    outcome = run_action(action, input, context, cancel)

`run_action` never raises for a failing action: errors, crashes, bad results, timeouts and
cancels all come back as an `ActionOutcome`. It raises `ActionError` only when the action
cannot be run by a worker at all (an unknown builtin, or an `inquiry`/`workflow` action,
which the engine handles itself).

Runners, by `ActionSpec.runner`: `builtin` (in-process: noop, echo, sleep), `python` (a
function in the pack, in a warm host process of the worker's pool), `shell` (a command,
argv only, never a shell) and `http` (one request). The attempt's timeout is the smaller
of `context.timeout` and the action's own `timeout`. Results must be JSON and at most
`MAX_RESULT_BYTES` as JSON text.

Only the builtin runner is imported eagerly; the others load on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from attune_pg.actions import builtin
from attune_pg.actions.outcome import (
    MAX_RESULT_BYTES,
    ActionContext,
    ActionOutcome,
    OutcomeStatus,
    canceled,
    failed,
)
from attune_pg.errors import ActionError

if TYPE_CHECKING:  # annotations only
    from attune_pg.spec.model import ActionSpec

__all__ = [
    "MAX_RESULT_BYTES",
    "ActionContext",
    "ActionError",
    "ActionOutcome",
    "OutcomeStatus",
    "run_action",
    "shutdown",
    "start_action",
]

Runner = Callable[["ActionSpec", dict[str, Any], ActionContext, threading.Event], ActionOutcome]


def run_action(
    action: ActionSpec,
    input: dict[str, Any],
    context: ActionContext,
    cancel: threading.Event,
) -> ActionOutcome:
    """Run one attempt of `action` with `input`; see the module docstring."""
    if action.timeout is not None and (context.timeout is None or action.timeout < context.timeout):
        context = replace(context, timeout=action.timeout)
    if action.runner == "builtin":
        func = builtin.resolve(action)
        if cancel.is_set():
            return canceled()
        try:
            return func(input, context, cancel)
        except Exception as exc:
            return _crashed(action, exc)
    runner = _runner(action)
    if cancel.is_set():
        return canceled()
    try:
        return runner(action, input, context, cancel)
    except Exception as exc:
        return _crashed(action, exc)


def start_action(
    action: ActionSpec,
    input: dict[str, Any],
    context: ActionContext,
    cancel: threading.Event,
    done: Callable[[ActionOutcome], None],
) -> bool:
    """Start `action` without a thread of its own where its runner can (python: the pool's
    pump takes the answer) and return True: `done` gets the outcome once, later, on the
    runner's thread (or at once on this one). False for the other runners: `run_action`
    them on a thread. Like `run_action`, it never raises for a failing action. An
    instant builtin (builtin.INSTANT) runs here, at once."""
    if action.runner == "builtin":
        try:
            instant = builtin.resolve(action) in builtin.INSTANT
        except ActionError:
            return False  # run_action, on a thread, reports it
        if instant:
            done(run_action(action, input, context, cancel))
        return instant
    if action.runner != "python":
        return False
    if action.timeout is not None and (context.timeout is None or action.timeout < context.timeout):
        context = replace(context, timeout=action.timeout)
    if cancel.is_set():
        done(canceled())
        return True
    from attune_pg.actions import python_runner

    try:
        python_runner.start(action, input, context, cancel, done)
    except Exception as exc:
        done(_crashed(action, exc))
    return True


def shutdown() -> None:
    """Stop what runners keep between calls (idle python hosts). Calls may still follow:
    they start afresh. A worker calls this once its action threads are done."""
    import sys

    pool = sys.modules.get("attune_pg.actions.python_pool")
    if pool is not None:  # never imported: nothing to stop
        pool.shutdown()


def _runner(action: ActionSpec) -> Runner:
    if action.runner == "python":
        from attune_pg.actions import python_runner

        return python_runner.run
    if action.runner == "shell":
        from attune_pg.actions import shell

        return shell.run
    if action.runner == "http":
        from attune_pg.actions import http

        return http.run
    if action.runner == "workflow":
        raise ActionError(
            f"action {action.ref} is a workflow: the engine starts it as a child execution, "
            "a worker does not run it"
        )
    raise ActionError(f"action {action.ref}: unknown runner {action.runner!r}")


def _crashed(action: ActionSpec, exc: Exception) -> ActionOutcome:
    """A runner bug must not take the worker down: report it as the attempt's failure."""
    import traceback

    return failed(
        type(exc).__name__,
        f"the {action.runner} runner failed running {action.ref}: {exc}",
        traceback="".join(traceback.format_exception(exc))[-65536:],
    )
