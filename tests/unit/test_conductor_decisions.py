"""A decision routes a successful result; a failed task takes no branch."""

from __future__ import annotations

from attune_pg.engine.conductor import Conductor
from attune_pg.engine.state import Attempt, Context, Execution, WriteExecution
from attune_pg.spec.model import ActionSpec, TaskSpec, Transition, WorkflowSpec

NOOP = ActionSpec(
    ref="core.noop",
    runner="builtin",
    entry_point="noop",
    parameters={"type": "object", "properties": {}, "additionalProperties": False},
)


def test_failed_decision_task_reports_its_own_failure() -> None:
    spec = WorkflowSpec(
        ref="t.decide",
        label="decide",
        version="1",
        tasks=(
            TaskSpec(
                name="check",
                action="core.noop",
                first_match=True,
                next=(
                    Transition(when="{{ result().healthy }}", do=("ok",)),
                    Transition(when=None, do=("ok",)),
                ),
            ),
            TaskSpec(name="ok", action="core.noop"),
        ),
    )
    execution = Execution(
        id=1, ref=spec.ref, status="requested", spec=spec, parameters={}, vars={}, active_tasks=0
    )
    ctx = Context(now=0.0, actions={"core.noop": NOOP})
    start = Conductor(execution, {}, ctx)
    start.start()
    states = {key[0]: state for key, state in start._states.items()}
    start.flush()
    running = Execution(
        id=1, ref=spec.ref, status="running", spec=spec, parameters={}, vars={}, active_tasks=1
    )
    conductor = Conductor(running, states, ctx)
    conductor.attempt_finished(
        Attempt(
            1,
            1,
            "check",
            1,
            None,
            1,
            "core.noop",
            {},
            "failed",
            None,
            {"type": "NonZeroExit", "message": "exit code 3"},
        )
    )
    (write,) = [c for c in conductor.flush() if isinstance(c, WriteExecution)]
    assert write.status == "failed"
    assert write.error is not None
    assert write.error["message"] == "task 'check' failed: exit code 3"
    assert "ok" not in conductor.latest
