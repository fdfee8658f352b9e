"""The loop's gather (TaskRunner.gather): a turn that advances what finished waits a few
milliseconds for the tasks just sent to their threads, and never for older ones (no
database: the loop's own queue of outcomes, fed by hand)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from attune_pg.actions.runners import ActionOutcome
from attune_pg.store.claims import ClaimedTask
from attune_pg.worker import loop
from attune_pg.worker.loop import Worker
from attune_pg.worker.runner import Running


def _task(task_id: int) -> ClaimedTask:
    return ClaimedTask(task_id, 1, "t", 1, None, 1, "core.noop", {}, None, 0.0, 0.0)


@pytest.fixture
def worker() -> Iterator[Worker]:
    w = Worker("postgresql://unused", name="gather-test")
    yield w
    w._runner.shutdown()


def _running(w: Worker, task_id: int, age: float) -> Running:
    entry = Running(_task(task_id), submitted=time.monotonic() - age)
    w._runner.running[task_id] = entry
    return entry


def _collect(w: Worker) -> None:
    w._runner.collect(w._pending, w._hand_back)


def _gather(w: Worker, window: float) -> None:
    w._runner.gather(w._pending, w._hand_back, window)


def _finish_later(w: Worker, entry: Running, delay: float) -> threading.Thread:
    def finish() -> None:
        time.sleep(delay)
        w._runner._ended(entry, ActionOutcome("succeeded", {"n": entry.task.id}))

    thread = threading.Thread(target=finish)
    thread.start()
    return thread


def test_a_turn_waits_for_the_tasks_that_just_started(worker: Worker) -> None:
    first = _running(worker, 1, age=0.0)
    worker._runner._done.put((first, ActionOutcome("succeeded", {})))
    _collect(worker)
    second = _finish_later(worker, _running(worker, 2, age=0.0), delay=0.001)
    _gather(worker, loop.GATHER)
    second.join()
    assert [f.task.id for f in worker._pending] == [1, 2]
    assert not worker._runner.running


def test_a_turn_never_waits_for_older_tasks_nor_longer_than_gather(worker: Worker) -> None:
    old = _finish_later(worker, _running(worker, 1, age=10.0), delay=0.05)
    _gather(worker, 1.0)  # a long action: not waited for, its outcome comes later
    assert old.is_alive() and worker._pending == []
    old.join()
    _collect(worker)
    slow = _finish_later(worker, _running(worker, 2, age=0.0), delay=0.5)
    started = time.monotonic()
    _gather(worker, 0.005)  # young, but slower than GATHER: the turn goes on without it
    assert time.monotonic() - started >= 0.004
    assert slow.is_alive() and [f.task.id for f in worker._pending] == [1]
    slow.join()


def test_a_turn_goes_on_as_soon_as_the_last_young_task_ends(worker: Worker) -> None:
    """One wake when the last of them ends, not the whole window (nor one per outcome)."""
    quick = [_finish_later(worker, _running(worker, i, age=0.0), delay=0.01) for i in (1, 2, 3)]
    started = time.monotonic()
    _gather(worker, 5.0)
    took = time.monotonic() - started
    for thread in quick:
        thread.join()
    assert sorted(f.task.id for f in worker._pending) == [1, 2, 3]
    assert took < 2.0, took
    assert not worker._runner.running
