"""Instant builtins (noop, echo) run on the loop's thread when submitted: the outcome is
waiting before `submit` returns and no action thread is involved. Everything else still
goes to an action thread (no database: the runner alone)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from attune_pg.actions.runners import ActionOutcome, start_action
from attune_pg.spec.model import ActionSpec
from attune_pg.store.claims import ClaimedTask
from attune_pg.store.fence import Finished
from attune_pg.worker.runner import TaskRunner, _context

ACTIONS = {
    "core.noop": ActionSpec("core.noop", "builtin", "noop"),
    "core.echo": ActionSpec("core.echo", "builtin", "echo"),
    "core.sleep": ActionSpec("core.sleep", "builtin", "sleep"),
    "core.nosuch": ActionSpec("core.nosuch", "builtin", "nosuch"),
}


def _task(task_id: int, ref: str, input: dict[str, Any]) -> ClaimedTask:
    return ClaimedTask(task_id, 1, "t", 1, None, 1, ref, input, None, 0.0, 0.0)


@pytest.fixture
def runner() -> Iterator[TaskRunner]:
    r = TaskRunner(4, threading.Event())
    yield r
    r.shutdown()


def _outcomes(runner: TaskRunner) -> list[Finished]:
    pending: list[Finished] = []
    runner.collect(pending, [])
    return pending


def test_noop_and_echo_end_before_submit_returns_without_an_action_thread(
    runner: TaskRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_thread(*args: object) -> None:
        raise AssertionError("an instant builtin went to an action thread")

    monkeypatch.setattr(runner._pool, "submit", no_thread)
    runner.submit(_task(1, "core.noop", {}), ACTIONS)
    runner.submit(_task(2, "core.echo", {"message": "hi", "uppercase": True}), ACTIONS)
    runner.submit(_task(3, "core.noop", {"exit_code": 3}), ACTIONS)
    assert runner.has_outcomes()
    done = {f.task.id: (f.status, f.result, f.error) for f in _outcomes(runner)}
    assert done[1] == ("succeeded", {}, None)
    assert done[2] == ("succeeded", {"message": "HI"}, None)
    status, result, error = done[3]
    assert (status, result) == ("failed", {"exit_code": 3})
    assert isinstance(error, dict) and error["type"] == "NonZeroExit"
    assert runner.running == {}


def test_a_canceled_instant_builtin_ends_canceled_without_running() -> None:
    task = _task(1, "core.noop", {"exit_code": 5})
    noop = ACTIONS["core.noop"]
    cancel = threading.Event()
    cancel.set()
    seen: list[ActionOutcome] = []
    assert start_action(noop, task.input, _context(task, noop), cancel, seen.append)
    assert [o.status for o in seen] == ["canceled"]  # not "failed": exit_code 5 never ran


def test_sleep_and_unknown_builtins_still_run_on_an_action_thread(runner: TaskRunner) -> None:
    threads: list[str] = []
    original = runner._pool.submit

    def spy(fn: Any, *args: Any) -> Any:
        threads.append(args[0].task.action_ref)
        return original(fn, *args)

    runner._pool.submit = spy  # type: ignore[method-assign]
    runner.submit(_task(1, "core.sleep", {"seconds": 0}), ACTIONS)
    runner.submit(_task(2, "core.nosuch", {}), ACTIONS)
    runner._pool.shutdown(wait=True)
    done = {f.task.id: (f.status, f.error) for f in _outcomes(runner)}
    assert threads == ["core.sleep", "core.nosuch"]
    assert done[1] == ("succeeded", None)
    status, error = done[2]
    assert status == "failed" and isinstance(error, dict) and "nosuch" in str(error["message"])
