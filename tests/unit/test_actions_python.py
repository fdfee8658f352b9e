"""The python runner, against tests/fixtures/packs/testpack (real child processes)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from attune_pg.actions.runners import ActionContext, ActionOutcome, run_action
from attune_pg.spec.model import ActionSpec

TESTPACK = Path(__file__).resolve().parents[1] / "fixtures" / "packs" / "testpack"


def ctx(timeout: float | None = 20.0, pack_path: Path | None = TESTPACK) -> ActionContext:
    return ActionContext(
        execution_id=11,
        task_execution_id=22,
        task_name="step",
        attempt=3,
        idempotency_key="11:22",
        timeout=timeout,
        pack_path=str(pack_path) if pack_path else None,
    )


def run(
    entry_point: str,
    input: dict[str, Any] | None = None,
    *,
    timeout: float | None = 20.0,
    cancel: threading.Event | None = None,
    pack_path: Path | None = TESTPACK,
) -> ActionOutcome:
    action = ActionSpec(ref="testpack.x", runner="python", entry_point=entry_point)
    return run_action(action, input or {}, ctx(timeout, pack_path), cancel or threading.Event())


def error(outcome: ActionOutcome) -> dict[str, Any]:
    assert outcome.status != "succeeded", outcome
    assert outcome.error is not None
    assert "\n" not in outcome.error["message"]
    return outcome.error


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie waiting for a reaper is gone too
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_gone(*pids: int, within: float = 3.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if all(gone(pid) for pid in pids):
            return True
        time.sleep(0.02)
    return False


def test_example_action_succeeds() -> None:
    outcome = run("greet.py:greet", {"name": "Ada", "loud": True})
    assert outcome == ActionOutcome(
        "succeeded", {"text": "HELLO, ADA!", "idempotency_key": "11:22"}, None
    )


def test_context_reaches_the_environment_and_prints_do_not_mix() -> None:
    outcome = run("behave.py:context")
    assert outcome.status == "succeeded"
    assert outcome.result == {
        "IDEMPOTENCY_KEY": "11:22",
        "EXECUTION_ID": "11",
        "TASK_EXECUTION_ID": "22",
        "TASK_NAME": "step",
        "ATTEMPT": "3",
        "stdin": "",
    }


@pytest.mark.parametrize(
    ("entry", "expected"), [("behave.py:add", 5), ("behave.py:returns_none", None)]
)
def test_plain_values(entry: str, expected: Any) -> None:
    input = {"a": 2, "b": 3} if entry.endswith("add") else {}
    assert run(entry, input) == ActionOutcome("succeeded", expected, None)


def test_exception_fails_with_type_message_traceback_and_output() -> None:
    err = error(run("behave.py:raise_value_error"))
    assert err["type"] == "ValueError"
    assert err["message"] == "bad value on two lines"
    assert "behave.py" in err["traceback"] and "python_host" not in err["traceback"]
    assert err["stdout"] == "about to fail\n"


def test_wrong_arguments_fail() -> None:
    err = error(run("behave.py:add", {"a": 1, "c": 2}))
    assert err["type"] == "TypeError" and "'c'" in err["message"]


@pytest.mark.parametrize(
    ("code", "message"), [(3, "exit code 3"), (0, "exit code 0"), ("bye", "exit code 1: bye")]
)
def test_sys_exit_fails(code: Any, message: str) -> None:
    err = error(run("behave.py:exit_with", {"code": code}))
    assert err["type"] == "SystemExit" and err["message"] == message


def test_os_exit_fails_without_result() -> None:
    err = error(run("behave.py:hard_exit"))
    assert err["type"] == "ActionCrashed"
    assert err["message"] == "action process exited with code 5 without a result"
    assert err["stdout"] == "leaving now\n"


@pytest.mark.parametrize(
    ("entry", "type_"),
    [("behave.py:base_exception", "Custom"), ("behave.py:keyboard_interrupt", "KeyboardInterrupt")],
)
def test_base_exception_fails(entry: str, type_: str) -> None:
    err = error(run(entry))
    assert err["type"] == type_


def test_segfault_fails() -> None:
    outcome = run("behave.py:segfault")
    err = error(outcome)
    assert outcome.status == "failed"
    assert err["message"] == "action process exited with code -11 (SIGSEGV) without a result"
    assert "Segmentation fault" in err["stderr"]  # faulthandler's dump


def test_non_json_result_fails() -> None:
    err = error(run("behave.py:not_json"))
    assert err["type"] == "ResultNotJSON"
    assert err["message"] == "result is not JSON: Object of type object is not JSON serializable"


def test_nan_result_fails() -> None:
    assert error(run("behave.py:nan"))["message"].startswith("result is not JSON:")


def test_oversized_result_fails() -> None:
    err = error(run("behave.py:oversized", {"mb": 2.3}))
    assert err == {"type": "ResultTooLarge", "message": "result is 2.3 MB, over the 1 MB limit"}


def test_output_is_bounded_to_its_tail() -> None:
    err = error(run("behave.py:print_lots", {"kb": 512}))
    assert err["type"] == "RuntimeError"
    assert len(err["stdout"].encode()) <= 64 * 1024
    assert err["stdout"].endswith("LAST LINE\n")


def test_missing_function() -> None:
    err = error(run("behave.py:nope"))
    assert err["type"] == "ActionError" and "has no function 'nope'" in err["message"]


@pytest.mark.parametrize(
    ("entry", "pack", "fragment"),
    [
        ("missing.py:f", TESTPACK, "does not exist"),
        ("../pack.yaml:f", TESTPACK, "entry_point must be"),
        ("../../testpack/actions/../../x.py:f", TESTPACK, "outside the pack"),
        ("/etc/x.py:f", TESTPACK, "must be relative"),
        ("behave.py:not-an-identifier", TESTPACK, "entry_point must be"),
        ("behave.py:add", None, "no pack directory"),
    ],
)
def test_unresolvable_entry_points_fail(entry: str, pack: Path | None, fragment: str) -> None:
    err = error(run(entry, pack_path=pack))
    assert err["type"] == "ActionError" and fragment in err["message"]


def test_timeout_kills_the_process_tree(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    outcome = run("behave.py:spawn_tree", {"pidfile": str(pidfile)}, timeout=1.0)
    assert outcome.status == "timed_out"
    assert error(outcome)["message"] == "action timed out after 1 s"
    child, grandchild = map(int, pidfile.read_text().split())
    assert wait_gone(child, grandchild)


def test_timeout_kills_an_action_ignoring_sigterm(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    outcome = run(
        "behave.py:spawn_tree", {"pidfile": str(pidfile), "ignore_term": True}, timeout=1.0
    )
    assert outcome.status == "timed_out"
    assert wait_gone(*map(int, pidfile.read_text().split()))


def test_cancel_kills_the_tree(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    cancel = threading.Event()
    box: list[ActionOutcome] = []
    thread = threading.Thread(
        target=lambda: box.append(
            run("behave.py:spawn_tree", {"pidfile": str(pidfile)}, timeout=None, cancel=cancel)
        )
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    cancel.set()
    thread.join(30)
    assert box[0].status == "canceled"  # the tree sleeps forever: only the cancel ends it
    assert error(box[0]) == {"type": "Canceled", "message": "action was canceled"}
    assert wait_gone(*map(int, pidfile.read_text().split()))


def test_leftover_processes_are_swept_after_success(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    outcome = run("behave.py:leave_background", {"pidfile": str(pidfile)})
    assert outcome == ActionOutcome("succeeded", "done", None)  # not held by its leftover
    assert wait_gone(int(pidfile.read_text()))


def test_leaked_thread_does_not_hold_the_action() -> None:
    assert run("behave.py:leak_thread") == ActionOutcome("succeeded", "returned", None)


def test_concurrent_runs_are_independent() -> None:
    results: list[ActionOutcome] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        outcome = run("behave.py:add", {"a": i, "b": 1})
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(o.result for o in results) == list(range(1, 9))
