"""Built-in actions and the run_action dispatch (no database, no subprocess)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

from attune_pg.actions.runners import ActionContext, ActionOutcome, run_action
from attune_pg.errors import ActionError
from attune_pg.spec.model import ActionSpec

CORE_PACK = Path(__file__).resolve().parents[2] / "packs" / "core"


def ctx(timeout: float | None = None) -> ActionContext:
    return ActionContext(
        execution_id=1,
        task_execution_id=2,
        task_name="t",
        attempt=1,
        idempotency_key="1:2",
        timeout=timeout,
        pack_path=str(CORE_PACK),
    )


def builtin(name: str, timeout: float | None = None) -> ActionSpec:
    return ActionSpec(ref=f"core.{name}", runner="builtin", entry_point=name, timeout=timeout)


def run(
    name: str, input: dict[str, object], timeout: float | None = None, **kw: object
) -> ActionOutcome:
    cancel = kw.get("cancel") or threading.Event()
    assert isinstance(cancel, threading.Event)
    return run_action(builtin(name), dict(input), ctx(timeout), cancel)


def test_noop_succeeds_with_empty_result() -> None:
    outcome = run("noop", {})
    assert outcome == ActionOutcome("succeeded", {}, None)
    assert outcome.ok


def test_noop_exit_code_fails() -> None:
    outcome = run("noop", {"exit_code": 3})
    assert outcome.status == "failed"
    assert outcome.result == {"exit_code": 3}
    assert outcome.error == {"type": "NonZeroExit", "message": "exit code 3"}


def test_noop_exit_code_zero_succeeds() -> None:
    assert run("noop", {"exit_code": 0}).status == "succeeded"


def test_noop_bad_exit_code_is_a_failure_not_an_exception() -> None:
    outcome = run("noop", {"exit_code": "x"})
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error["type"] == "InvalidInput"


def test_noop_is_fast() -> None:
    action, context, cancel = builtin("noop"), ctx(), threading.Event()
    start = time.perf_counter()
    for _ in range(20_000):
        run_action(action, {}, context, cancel)
    assert time.perf_counter() - start < 1.0  # ~1 µs each in practice


def test_echo_returns_message(capsys: pytest.CaptureFixture[str]) -> None:
    outcome = run("echo", {"message": "hi there"})
    assert outcome == ActionOutcome("succeeded", {"message": "hi there"}, None)
    assert capsys.readouterr() == ("", "")


def test_echo_rejects_unstorable_message() -> None:
    outcome = run("echo", {"message": "nul\x00byte"})
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert outcome.error["message"].startswith("result is not JSON:")


def test_sleep_succeeds() -> None:
    start = time.monotonic()
    outcome = run("sleep", {"seconds": 0.05})
    assert outcome.status == "succeeded"
    assert outcome.result == {"seconds": 0.05}
    assert time.monotonic() - start >= 0.05


def test_sleep_times_out() -> None:
    start = time.monotonic()
    outcome = run("sleep", {"seconds": 60}, timeout=0.1)
    # The bound is the behaviour: a 60 s sleep ended by its 0.1 s timeout, long before 60 s.
    assert time.monotonic() - start < 30
    assert outcome.status == "timed_out"
    assert outcome.error == {"type": "Timeout", "message": "action timed out after 0.1 s"}


def test_action_timeout_applies_when_smaller() -> None:
    outcome = run_action(builtin("sleep", timeout=0.1), {"seconds": 5}, ctx(10), threading.Event())
    assert outcome.status == "timed_out"
    assert outcome.error is not None and "0.1 s" in outcome.error["message"]


def test_sleep_is_canceled_at_once() -> None:
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    start = time.monotonic()
    outcome = run("sleep", {"seconds": 60}, cancel=cancel)
    # The bound is the behaviour: the cancel ended a 60 s sleep long before 60 s.
    assert time.monotonic() - start < 30
    assert outcome.status == "canceled"
    assert outcome.error == {"type": "Canceled", "message": "action was canceled"}


def test_already_canceled_does_not_run() -> None:
    cancel = threading.Event()
    cancel.set()
    assert run("noop", {}, cancel=cancel).status == "canceled"


def test_sleep_bad_seconds() -> None:
    outcome = run("sleep", {"seconds": -1})
    assert outcome.status == "failed"
    assert outcome.error is not None and "seconds" in outcome.error["message"]


def test_unknown_builtin_raises() -> None:
    with pytest.raises(ActionError, match="unknown builtin 'nope'"):
        run("nope", {})


@pytest.mark.parametrize("name", ["inquiry", "ask"])
def test_inquiry_is_not_run_by_a_worker(name: str) -> None:
    action = ActionSpec(ref=f"core.{name}", runner="builtin", entry_point="inquiry")
    with pytest.raises(ActionError, match="handled by the engine"):
        run_action(action, {}, ctx(), threading.Event())


def test_workflow_is_not_run_by_a_worker() -> None:
    action = ActionSpec(ref="examples.deploy", runner="workflow")
    with pytest.raises(ActionError, match="workflow"):
        run_action(action, {}, ctx(), threading.Event())


def test_builtin_name_defaults_to_action_name() -> None:
    action = ActionSpec(ref="core.echo", runner="builtin")
    assert run_action(action, {"message": "x"}, ctx(), threading.Event()).result == {"message": "x"}


def test_core_pack_files() -> None:
    pack = yaml.safe_load((CORE_PACK / "pack.yaml").read_text())
    assert pack["ref"] == "core" and pack["version"] == "1.0.0" and pack["label"] == "Core"
    actions = {
        p.stem: yaml.safe_load(p.read_text()) for p in (CORE_PACK / "actions").glob("*.yaml")
    }
    assert set(actions) >= {"noop", "echo", "sleep", "local", "http_request", "inquiry", "ask"}
    for name, data in actions.items():
        assert data["name"] == name
        assert data["runner"] in ("python", "shell", "http", "builtin")
        assert isinstance(data["description"], str) and data["description"]
        for param in data.get("parameters", {}).values():
            assert isinstance(param, dict) and "type" in param
    assert actions["local"]["runner"] == "shell" and "entry_point" not in actions["local"]
    assert actions["local"]["parameters"]["cmd"]["required"] is True
    for name in ("inquiry", "ask"):
        assert actions[name]["entry_point"] == "inquiry"
        assert set(actions[name]["parameters"]) == {"prompt", "schema", "assigned_to", "timeout"}
    # Every builtin the core pack names either runs or is the engine's.
    for name, data in actions.items():
        if data["runner"] == "builtin" and data["entry_point"] != "inquiry":
            outcome = run_action(
                builtin(name), {"message": "m", "seconds": 0}, ctx(), threading.Event()
            )
            assert outcome.ok, (name, outcome)
