"""Result checks and the shared subprocess helper."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from attune_pg.actions.outcome import (
    MAX_RESULT_BYTES,
    ActionOutcome,
    checked,
    failed,
    one_line,
    result_problem,
    succeeded,
    timed_out,
)
from attune_pg.actions.process import Capture, run_process


def test_json_results_pass() -> None:
    for value in (None, 1, 1.5, "é", [1, {"a": None}], {"nested": {"list": [True]}}):
        assert result_problem(value) is None


def test_not_json() -> None:
    problem = result_problem({"x": {1, 2}})
    assert problem is not None
    assert problem[0] == "ResultNotJSON"
    assert problem[1] == "result is not JSON: Object of type set is not JSON serializable"


def test_nan_is_not_json() -> None:
    problem = result_problem([float("nan")])
    assert problem is not None and problem[1].startswith("result is not JSON:")


def test_nul_and_lone_surrogate_are_refused() -> None:
    assert result_problem("a\x00b") is not None
    assert result_problem("\ud800") is not None
    assert result_problem("backslash-u \\u0000 written out") is None


def test_oversized() -> None:
    problem = result_problem("x" * int(2.3 * 1024 * 1024))
    assert problem == ("ResultTooLarge", "result is 2.3 MB, over the 1 MB limit")
    assert result_problem("x" * (MAX_RESULT_BYTES - 2)) is None
    assert result_problem("x" * (MAX_RESULT_BYTES - 1)) is not None  # the quotes count


def test_checked_turns_success_into_failure() -> None:
    outcome = checked(succeeded({1, 2}))
    assert outcome.status == "failed" and outcome.result is None
    assert outcome.error is not None and outcome.error["type"] == "ResultNotJSON"


def test_checked_keeps_status_of_non_success() -> None:
    outcome = checked(timed_out(1.0, {"x": {1}}))
    assert outcome.status == "timed_out" and outcome.result is None
    assert outcome.error is not None
    assert outcome.error["type"] == "Timeout" and "result_error" in outcome.error


def test_error_message_is_one_line() -> None:
    outcome = failed("E", "first\nsecond\r\n\n third")
    assert outcome.error == {"type": "E", "message": "first second third"}
    assert len(one_line("x" * 10_000)) == 2000
    assert failed("E", "").error == {"type": "E", "message": "E"}


def test_outcome_is_frozen() -> None:
    outcome = ActionOutcome("succeeded", {}, None)
    try:
        outcome.status = "failed"  # type: ignore[misc]
    except AttributeError:
        pass
    else:  # pragma: no cover
        raise AssertionError("ActionOutcome must be frozen")


def test_capture_head_and_tail() -> None:
    head, tail = Capture(5, "head"), Capture(5, "tail")
    for chunk in (b"abc", b"defgh", b"ij"):
        head.add(chunk)
        tail.add(chunk)
    assert head.data == b"abcde" and tail.data == b"fghij"
    assert head.total == tail.total == 10 and head.truncated and tail.truncated


def test_large_stdin_with_concurrent_output_does_not_deadlock() -> None:
    data = b"z" * (4 * 1024 * 1024)  # far beyond any pipe buffer, both ways
    run = run_process(
        [sys.executable, "-c", "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())"],
        cancel=threading.Event(),
        timeout=30,
        stdin=data,
        output_limit=len(data),
    )
    assert run.ended_by == "exit" and run.return_code == 0
    assert run.stdout.data == data


def test_exit_is_noticed_before_the_timeout() -> None:
    run = run_process(["true"], cancel=threading.Event(), timeout=60)
    assert run.ended_by == "exit" and run.return_code == 0  # the exit, not the timeout


@pytest.fixture(params=["pidfd", "waitid"])
def exit_detection(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with pidfd exit detection and with the waitid(WNOWAIT) polling fallback."""
    if request.param == "waitid":
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    return str(request.param)


def test_exit_detection(exit_detection: str) -> None:
    run = run_process(["sh", "-c", "echo hi; exit 3"], cancel=threading.Event(), timeout=60)
    assert (run.ended_by, run.return_code, run.stdout.data) == ("exit", 3, b"hi\n")


def test_exit_with_closed_pipes_is_noticed(exit_detection: str) -> None:
    run = run_process(
        ["sh", "-c", "exec >&- 2>&-; sleep 0.2"], cancel=threading.Event(), timeout=60
    )
    # Ended by its exit, not by the timeout: closed pipes did not hide the exit.
    assert run.ended_by == "exit" and run.return_code == 0


def test_timeout_and_sweep(exit_detection: str, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    run = run_process(
        ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; exec sleep 60"],
        cancel=threading.Event(),
        timeout=0.3,
    )
    assert run.ended_by == "timeout" and run.return_code == -signal.SIGTERM
    pid = int(pidfile.read_text())
    end = time.monotonic() + 3
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (ProcessLookupError, FileNotFoundError):
            break
        if state == "Z":
            break
        time.sleep(0.02)
    else:
        raise AssertionError(f"grandchild {pid} survived the timeout")
