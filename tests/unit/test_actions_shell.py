"""The shell runner: core.local and pack shell actions (argv only, never a shell)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from attune_pg.actions.outcome import MAX_RESULT_BYTES, result_problem
from attune_pg.actions.runners import ActionContext, ActionOutcome, run_action
from attune_pg.spec.model import ActionSpec

TESTPACK = Path(__file__).resolve().parents[1] / "fixtures" / "packs" / "testpack"
LOCAL = ActionSpec(ref="core.local", runner="shell")


def ctx(timeout: float | None = 20.0) -> ActionContext:
    return ActionContext(
        execution_id=5,
        task_execution_id=6,
        task_name="cmd",
        attempt=1,
        idempotency_key="5:6",
        timeout=timeout,
        pack_path=str(TESTPACK),
    )


def local(
    input: dict[str, Any], *, timeout: float | None = 20.0, cancel: threading.Event | None = None
) -> ActionOutcome:
    return run_action(LOCAL, input, ctx(timeout), cancel or threading.Event())


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


def test_argv_list() -> None:
    outcome = local({"cmd": ["echo", "hello", "world"]})
    assert outcome == ActionOutcome(
        "succeeded", {"stdout": "hello world\n", "stderr": "", "return_code": 0}, None
    )


def test_string_is_split_like_words_but_not_run_by_a_shell() -> None:
    outcome = local({"cmd": "printf '%s|' 'a b' c $HOME"})
    assert outcome.result["stdout"] == "a b|c|$HOME|"


def test_injection_is_passed_literally(tmp_path: Path) -> None:
    marker = tmp_path / "x"
    payload = f"$(touch {marker}); rm -rf"
    outcome = local({"cmd": ["echo", payload]})
    assert outcome.status == "succeeded"
    assert outcome.result["stdout"] == payload + "\n"
    assert not marker.exists()
    outcome = local({"cmd": f"echo '$(touch {marker})' ; touch {marker} | rm -rf `touch {marker}`"})
    assert outcome.status == "succeeded"
    assert not marker.exists()


def test_nonzero_exit_fails_with_result() -> None:
    outcome = local({"cmd": ["sh", "-c", "echo out; echo err >&2; exit 4"]})
    assert outcome.status == "failed"
    assert outcome.result == {"stdout": "out\n", "stderr": "err\n", "return_code": 4}
    assert outcome.error == {"type": "NonZeroExit", "message": "command exited with code 4"}


def test_missing_executable() -> None:
    outcome = local({"cmd": ["definitely-not-a-command-xyz", "a"]})
    assert outcome.status == "failed"
    assert outcome.error == {
        "type": "CommandNotFound",
        "message": "command not found: definitely-not-a-command-xyz",
    }


def test_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    outcome = local({"cmd": [str(script)]})
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error["type"] == "CommandNotExecutable"


@pytest.mark.parametrize(
    ("input", "fragment"),
    [
        ({"cmd": []}, "the command is empty"),
        ({"cmd": ""}, "the command is empty"),
        ({}, "cmd must be"),
        ({"cmd": ["echo", {"a": 1}]}, "cmd[1] must be a string"),
        ({"cmd": "echo 'unbalanced"}, "cannot split"),
        ({"cmd": ["true"], "env": ["A=1"]}, "env must be a map"),
        ({"cmd": ["true"], "cwd": "/no/such/dir"}, "does not exist"),
    ],
)
def test_bad_input_fails(input: dict[str, Any], fragment: str) -> None:
    outcome = local(input)
    assert outcome.status == "failed"
    assert outcome.error is not None and fragment in outcome.error["message"]


def test_cwd_env_stdin(tmp_path: Path) -> None:
    os.environ["ATTUNE_TEST_UNSET_ME"] = "present"
    try:
        outcome = local(
            {
                "cmd": [
                    "sh",
                    "-c",
                    'pwd; echo "$GREETING $ATTUNE_IDEMPOTENCY_KEY $ATTUNE_ATTEMPT '
                    '${ATTUNE_TEST_UNSET_ME:-unset}"; cat',
                ],
                "cwd": str(tmp_path),
                "env": {"GREETING": "hi", "ATTUNE_TEST_UNSET_ME": None},
                "stdin": "from stdin\n",
            }
        )
    finally:
        del os.environ["ATTUNE_TEST_UNSET_ME"]
    assert outcome.status == "succeeded"
    assert outcome.result["stdout"] == f"{tmp_path.resolve()}\nhi 5:6 1 unset\nfrom stdin\n"


def test_output_is_decoded_with_replacement() -> None:
    outcome = local({"cmd": ["printf", "caf\\303\\251 \\377 nul:\\000."]})
    assert outcome.result["stdout"] == "café \ufffd nul:\ufffd."
    assert result_problem(outcome.result) is None


def test_huge_output_is_cut_to_fit_the_result_limit() -> None:
    outcome = local({"cmd": ["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' a; echo e >&2"]})
    assert outcome.status == "succeeded", outcome.error
    stdout = outcome.result["stdout"]
    assert stdout.startswith("aaaa")
    assert "[output cut: 2.9 MB in all, only the first" in stdout
    assert outcome.result["stderr"] == "e\n"
    assert result_problem(outcome.result) is None
    assert len(stdout) < MAX_RESULT_BYTES


def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    script = f"sleep 60 & echo $$ $! > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; wait"
    outcome = local({"cmd": ["sh", "-c", script]}, timeout=0.5)
    assert outcome.status == "timed_out"
    assert outcome.error == {"type": "Timeout", "message": "action timed out after 0.5 s"}
    assert outcome.result["return_code"] is not None and outcome.result["return_code"] < 0
    shell, grandchild = map(int, pidfile.read_text().split())
    assert wait_gone(shell, grandchild)


def test_cancel_kills_the_process_group(tmp_path: Path) -> None:
    cancel = threading.Event()
    box: list[ActionOutcome] = []
    script = "echo started; sleep 60 & sleep 60; wait"
    thread = threading.Thread(
        target=lambda: box.append(local({"cmd": ["sh", "-c", script]}, timeout=None, cancel=cancel))
    )
    thread.start()
    time.sleep(0.3)
    cancel.set()
    thread.join(30)
    assert box[0].status == "canceled"  # the 60 s sleeps were killed
    assert box[0].result["stdout"] == "started\n"


def test_background_leftovers_do_not_hold_the_action(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    outcome = local({"cmd": ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; echo done"]})
    # Succeeded, with no timeout set: its 60 s leftover did not hold it.
    assert outcome.status == "succeeded" and outcome.result["stdout"] == "done\n"
    assert wait_gone(int(pidfile.read_text()))


def test_pack_shell_action_prefix_args_and_params() -> None:
    action = ActionSpec(
        ref="testpack.show_args",
        runner="shell",
        entry_point="scripts/show_args.sh --prefix",
        pack_path=str(TESTPACK),
    )
    outcome = run_action(
        action,
        {"args": ["a b", "$(whoami)", 3], "label": "L1"},
        ctx(),
        threading.Event(),
    )
    assert outcome.status == "succeeded", outcome.error
    assert outcome.result["stdout"] == "--prefix\na b\n$(whoami)\n3\nlabel=L1\n"


def test_pack_shell_action_with_a_system_command() -> None:
    action = ActionSpec(ref="testpack.say", runner="shell", entry_point="echo said:")
    outcome = run_action(action, {"args": ["x"]}, ctx(), threading.Event())
    assert outcome.result["stdout"] == "said: x\n"
