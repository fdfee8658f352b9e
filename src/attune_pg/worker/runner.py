"""Runs claimed tasks outside any transaction: python calls through the host pool's pump
(no thread of their own), every other runner on a thread pool."""

from __future__ import annotations

import functools
import json
import queue
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from attune_pg import jsonbounds
from attune_pg.actions.runners import (
    MAX_RESULT_BYTES,
    ActionContext,
    ActionOutcome,
    run_action,
    start_action,
)
from attune_pg.actions.runners import shutdown as stop_action_runners
from attune_pg.errors import AttuneError
from attune_pg.machine import TaskStatus
from attune_pg.secrets import neutralize_tokens, redact_secrets
from attune_pg.settings import Settings
from attune_pg.spec.model import ActionSpec
from attune_pg.store.claims import ClaimedTask
from attune_pg.store.fence import Finished

# Runners the worker does not execute as processes: the engine parks these tasks.
ENGINE_RUNNERS = frozenset({"workflow"})
ENGINE_BUILTINS = frozenset({"inquiry"})
#: How long shutdown waits for started python calls to end (a canceled one takes up to
#: TERM_GRACE + DRAIN_GRACE, under a second; this is the bound if something hangs).
STARTED_WAIT = 10.0


def parks_as(action: ActionSpec | None) -> str | None:
    """'inquiry' or 'workflow' when the engine handles the task by waiting, not running."""
    if action is None:
        return None
    if action.runner in ENGINE_RUNNERS:
        return "workflow"
    if action.runner == "builtin" and action.entry_point in ENGINE_BUILTINS:
        return "inquiry"
    return None


@dataclass
class Running:
    task: ClaimedTask
    cancel: threading.Event = field(default_factory=threading.Event)
    hand_back: bool = False  # graceful stop: give the row back instead of recording an outcome
    submitted: float = field(default_factory=time.monotonic)  # when it went to its thread
    # The input with secret tokens resolved, and the secret texts to mask afterwards.
    input: dict[str, Any] | None = None
    secrets: set[str] = field(default_factory=set)
    ended: bool = False  # its outcome is in the done queue (set under TaskRunner._lock)

    @property
    def given(self) -> dict[str, Any]:
        """The input the action gets: resolved, if it had secret tokens."""
        return self.input if self.input is not None else self.task.input


class TaskRunner:
    def __init__(self, concurrency: int, wake: threading.Event) -> None:
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="attune-action")
        # Outcomes from the action threads, read by collect and gather (the loop's thread).
        self._done: queue.SimpleQueue[tuple[Running, ActionOutcome]] = queue.SimpleQueue()
        self._wake = wake
        self._started = 0  # calls handed to start_action whose outcome has not come yet
        self._started_cond = threading.Condition()
        # What `gather` waits for: the ids of young tasks still running, and the event
        # the last of them to end sets, so the loop wakes once a turn, not once a call
        # (each wake would take the GIL from the pump that is taking the next answers).
        self._lock = threading.Lock()
        self._awaited: set[int] = set()
        self._awaited_in = threading.Event()
        self.running: dict[int, Running] = {}
        self.max_depth = Settings().json_max_depth  # setting json_max_depth
        self.max_result_bytes = Settings().max_result_bytes  # setting max_result_bytes

    def submit(
        self,
        task: ClaimedTask,
        actions: Mapping[str, ActionSpec],
        resolved: dict[str, Any] | None = None,
        secrets: set[str] | None = None,
    ) -> None:
        entry = Running(task, input=resolved, secrets=secrets or set())
        self.running[task.id] = entry
        action = actions.get(task.action_ref)
        if action is not None and not parks_as(action):
            self._count_started(1)  # before: the outcome may come before start_action returns
            ended = functools.partial(self._ended, entry, started=True)
            if start_action(action, entry.given, _context(task, action), entry.cancel, ended):
                return
            self._count_started(-1)
        self._pool.submit(self._run, entry, action)

    def _run(self, entry: Running, action: ActionSpec | None) -> None:
        task = entry.task
        try:
            if action is None:
                outcome = ActionOutcome(
                    "failed",
                    None,
                    {
                        "type": "UnknownAction",
                        "message": f"action {task.action_ref!r} is not registered",
                    },
                )
            elif parks_as(action):
                raise AssertionError("parked tasks never reach the runner")
            else:
                outcome = run_action(action, entry.given, _context(task, action), entry.cancel)
        except AttuneError as exc:
            outcome = ActionOutcome(
                "failed", None, {"type": type(exc).__name__, "message": str(exc)}
            )
        except BaseException as exc:
            outcome = ActionOutcome(
                "failed", None, {"type": type(exc).__name__, "message": str(exc)[:1000]}
            )
        self._ended(entry, outcome)

    def _ended(self, entry: Running, outcome: ActionOutcome, *, started: bool = False) -> None:
        """An outcome, from an action thread or the python pump: to the loop."""
        with self._lock:
            entry.ended = True
            if self._awaited:
                self._awaited.discard(entry.task.id)
                if not self._awaited:
                    self._awaited_in.set()
        self._done.put((entry, outcome))
        self._wake.set()
        if started:
            self._count_started(-1)

    def _count_started(self, delta: int) -> None:
        with self._started_cond:
            self._started += delta
            self._started_cond.notify_all()

    def has_outcomes(self) -> bool:
        """Whether an outcome waits for `collect`."""
        return not self._done.empty()

    def collect(self, pending: list[Finished], hand_back: list[int]) -> None:
        """Take every outcome in the done queue: onto `pending` as it will be stored, or,
        for a task handed back on a graceful stop, its id onto `hand_back`."""
        while True:
            try:
                self._take(pending, hand_back, *self._done.get_nowait())
            except queue.Empty:
                return

    def gather(self, pending: list[Finished], hand_back: list[int], window: float) -> None:
        """As `collect`, after waiting (`window` seconds at most) for the tasks that went
        to their threads less than `window` ago (worker/loop.py, GATHER): until the last
        of them ends, or the youngest is `window` old."""
        now = time.monotonic()
        with self._lock:
            young = [e for e in self.running.values() if not e.ended and now - e.submitted < window]
            self._awaited = {e.task.id for e in young}
            self._awaited_in.clear()
        if young:
            until = max(e.submitted for e in young) + window
            self._awaited_in.wait(until - now)
            with self._lock:
                self._awaited = set()
        self.collect(pending, hand_back)

    def _take(
        self, pending: list[Finished], hand_back: list[int], entry: Running, outcome: ActionOutcome
    ) -> None:
        if entry.hand_back:
            self.running.pop(entry.task.id, None)
            hand_back.append(entry.task.id)
        else:
            pending.append(self.finished(entry, outcome))

    def finished(self, entry: Running, outcome: ActionOutcome) -> Finished:
        """The outcome as stored: secrets masked, token look-alikes defused."""
        self.running.pop(entry.task.id, None)
        result, error = outcome.result, outcome.error
        status = TaskStatus(outcome.status)
        if jsonbounds.depth_over(result, self.max_depth):
            # Bounded where it enters: a result no reader could decode is never stored.
            message = (
                f"result is nested deeper than {self.max_depth} levels (setting json_max_depth)"
            )
            if status == TaskStatus.SUCCEEDED or error is None:
                status, error = TaskStatus.FAILED, {"type": "ResultTooDeep", "message": message}
            else:
                error = {**error, "result_error": message}
            result = None
        elif result is not None and self.max_result_bytes < MAX_RESULT_BYTES:
            # The runners stop at MAX_RESULT_BYTES; the owner may allow less than that.
            size = len(json.dumps(result, ensure_ascii=False, default=str).encode())
            if size > self.max_result_bytes:
                message = (
                    f"result is {size:,} bytes of JSON, over the limit of"
                    f" {self.max_result_bytes:,} bytes (setting max_result_bytes)"
                )
                if status == TaskStatus.SUCCEEDED or error is None:
                    status, error = (
                        TaskStatus.FAILED,
                        {"type": "ResultTooLarge", "message": message},
                    )
                else:
                    error = {**error, "result_error": message}
                result = None
        if entry.secrets:
            result = redact_secrets(result, entry.secrets)
            error = redact_secrets(error, entry.secrets)
        return Finished(entry.task, status, neutralize_tokens(result), error)

    def cancel_all(self, hand_back: bool) -> None:
        for entry in self.running.values():
            entry.hand_back = hand_back
            entry.cancel.set()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._started_cond:  # as the threads: a started call ends (canceled, if so)
            self._started_cond.wait_for(lambda: self._started <= 0, timeout=STARTED_WAIT)
        stop_action_runners()  # idle python hosts go with the worker


def _context(task: ClaimedTask, action: ActionSpec) -> ActionContext:
    limits = [t for t in (task.timeout, action.timeout) if t]
    return ActionContext(
        execution_id=task.workflow_execution_id,
        task_execution_id=task.id,
        task_name=task.task_name,
        attempt=task.attempt,
        idempotency_key=f"{task.workflow_execution_id}:{task.id}",
        timeout=min(limits) if limits else None,
        pack_path=action.pack_path,
        trace_id=task.trace_id,
    )
