"""Example tests of the pure conductor, driven through the in-memory store of `conductor_sim`.

Every test runs the conductor's commands through `Sim`, which checks what SQL would
check (guarded writes, legal moves per `machine.py`, unique attempts) and the
between-transaction invariants after every event (`Sim.check`).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import FrozenInstanceError, replace
from typing import Any

import pytest

from attune_pg.engine.conductor import Conductor
from attune_pg.engine.state import (
    AggregateItems,
    Attempt,
    Context,
    Execution,
    LiveRows,
    NewTaskRows,
    Publish,
    TaskState,
    WriteExecution,
    WriteTaskState,
)
from attune_pg.machine import TaskStateStatus as S
from attune_pg.spec.model import RetryPolicy, TaskSpec, Transition, WorkflowSpec
from tests.unit.conductor_sim import (
    ACTIONS,
    ControlRefused,
    Outcome,
    Row,
    Sim,
    SimViolation,
    drain,
    run,
)

Json = Any

SUCCEEDED = "{{ succeeded() }}"
FAILED = "{{ failed() }}"


def wf(*tasks: TaskSpec, **kw: Any) -> WorkflowSpec:
    return WorkflowSpec(ref="tests.flow", label="flow", version="1.0.0", tasks=tasks, **kw)


def task(name: str, action: str = "core.noop", **kw: Any) -> TaskSpec:
    return TaskSpec(name=name, action=action, **kw)


def on_success(*names: str, publish: tuple[tuple[str, Any], ...] = ()) -> Transition:
    return Transition(when=SUCCEEDED, publish=publish, do=names)


def on_failure(*names: str) -> Transition:
    return Transition(when=FAILED, do=names)


def on_complete(*names: str) -> Transition:
    return Transition(do=names)


def started(spec: WorkflowSpec, parameters: dict[str, Json] | None = None, **kw: Any) -> Sim:
    sim = Sim(spec, parameters, **kw)
    sim.start()
    sim.check()
    return sim


def step(sim: Sim, name: str, outcome: Outcome | str = "succeeded", *, iteration: int = 1,
         item: int | None = None) -> Row:  # fmt: skip
    """Claim (if needed) and finish the live row of `name` (and item), then check invariants."""
    rows = [
        r
        for r in sim.rows_where(status=("scheduled", "running"), task=name, iteration=iteration)
        if r.item_index == item
    ]
    assert len(rows) == 1, f"no single live row for {name}#{iteration} item {item}: {rows}"
    row = rows[0]
    if row.status == "scheduled":
        sim.claim(row.id)
    sim.finish(row.id, outcome)
    sim.check()
    return row


def live(sim: Sim) -> list[str]:
    return sorted({r.task_name for r in sim.rows_where(status=("scheduled", "running"))})


def statuses(sim: Sim) -> dict[str, str]:
    return {name: s.status for name, s in sorted(sim.latest().items())}


# ----------------------------------------------------------------- control flow


def test_sequence_runs_one_task_after_the_other() -> None:
    spec = wf(
        task("a", next=(on_success("b"),)),
        task("b", next=(on_success("c"),)),
        task("c"),
    )
    sim = started(spec)
    assert sim.status == "running"
    assert live(sim) == ["a"]
    assert sim.execution.active_tasks == 1
    step(sim, "a")
    assert live(sim) == ["b"]
    step(sim, "b")
    assert live(sim) == ["c"]
    step(sim, "c")
    assert sim.status == "succeeded"
    assert sim.execution.error is None
    assert statuses(sim) == {"a": "succeeded", "b": "succeeded", "c": "succeeded"}
    assert [r.task_name for r in sim.rows_where()] == ["a", "b", "c"]
    assert sim.execution.started_at is not None


def test_fan_out_dispatches_all_targets_at_once_and_waits_for_all() -> None:
    spec = wf(task("a", next=(on_success("b", "c", "d"),)), task("b"), task("c"), task("d"))
    sim = started(spec)
    step(sim, "a")
    assert live(sim) == ["b", "c", "d"]
    assert sim.execution.active_tasks == 3
    step(sim, "c")
    step(sim, "b")
    assert sim.status == "running"
    step(sim, "d")
    assert sim.status == "succeeded"


@pytest.mark.parametrize(
    ("outcome", "ran"),
    [("succeeded", "ok"), ("failed", "recover"), ("timed_out", "recover")],
)
def test_next_fires_the_transitions_whose_when_holds(outcome: str, ran: str) -> None:
    spec = wf(
        task("a", next=(on_success("ok"), on_failure("recover"))),
        task("ok"),
        task("recover"),
    )
    sim = drain(Sim(spec), {"a": outcome})
    assert sim.status == "succeeded"  # a failure matched by a transition is handled
    assert set(sim.latest()) == {"a", ran}
    assert sim.state("a").status == outcome


def test_every_matching_transition_fires_in_order() -> None:
    spec = wf(
        task(
            "a", next=(on_complete("x"), on_success("y"), Transition(when="{{ false }}", do=("z",)))
        ),
        task("x"),
        task("y"),
        task("z"),
    )
    sim = drain(Sim(spec))
    assert [r.task_name for r in sim.rows_where()] == ["a", "x", "y"]


@pytest.mark.parametrize(("n", "chosen"), [(10, "big"), (3, "small"), (-1, "other")])
def test_decision_is_first_match_with_default(n: int, chosen: str) -> None:
    spec = wf(
        task(
            "a",
            action="core.any",
            first_match=True,
            next=(
                Transition(when="{{ result().n > 5 }}", do=("big",)),
                Transition(when="{{ result().n > 0 }}", do=("small",)),  # also true for 10
                Transition(do=("other",)),  # default
            ),
        ),
        task("big"),
        task("small"),
        task("other"),
    )
    sim = drain(Sim(spec), {"a": lambda row: Outcome("succeeded", {"n": n})})
    assert sim.status == "succeeded"
    assert set(sim.latest()) == {"a", chosen}


def test_publish_updates_vars_before_do_and_later_tasks_see_them() -> None:
    spec = wf(
        task(
            "a",
            action="core.any",
            next=(
                on_success(
                    "b",
                    publish=(("image", "{{ result().image }}"), ("tag", "{{ vars.image ~ ':1' }}")),
                ),
            ),
        ),
        task("b", action="core.echo", input={"message": "deploy {{ vars.tag }}"}),
        vars={"image": None, "untouched": [1]},
    )
    sim = drain(Sim(spec), {"a": lambda row: Outcome("succeeded", {"image": "web"})})
    assert sim.status == "succeeded"
    assert sim.execution.vars == {"image": "web", "tag": "web:1", "untouched": [1]}
    (b,) = sim.rows_where(task="b")
    assert b.input == {"message": "deploy web:1"}
    assert sim.publishes == [Publish("a", {"image": "web", "tag": "web:1"})]


def test_vars_are_rendered_at_start_from_parameters() -> None:
    spec = wf(
        task("a", action="core.echo", input={"message": "{{ vars.greeting }}"}),
        parameters={
            "type": "object",
            "properties": {"who": {"type": "string", "default": "world"}},
            "additionalProperties": False,
        },
        vars={"greeting": "hello {{ parameters.who }}"},
    )
    sim = started(spec)
    assert sim.execution.parameters == {"who": "world"}  # defaults applied and written
    assert sim.rows_where(task="a")[0].input == {"message": "hello world"}


# ----------------------------------------------------------------- joins


@pytest.mark.parametrize("order", list(itertools.permutations("bcd")))
def test_join_all_fires_once_after_every_inbound_transition(order: tuple[str, ...]) -> None:
    spec = wf(
        task("a", next=(on_success("b", "c", "d"),)),
        task("b", next=(on_success("j"),)),
        task("c", next=(on_success("j"),)),
        task("d", next=(on_success("j"),)),
        task("j", join="all", next=(on_success("after"),)),
        task("after"),
    )
    sim = started(spec)
    step(sim, "a")
    for n, name in enumerate(order, start=1):
        assert not sim.rows_where(task="j")
        step(sim, name)
        state = sim.state("j")
        assert state.join_required == 3
        assert state.join_arrivals == n
        assert state.status == ("running" if n == 3 else "pending")
    step(sim, "j")
    step(sim, "after")
    assert sim.status == "succeeded"
    assert [s.key for s in sim.iterations("j")] == [("j", 1)]
    assert len(sim.rows_where(task="j")) == 1


@pytest.mark.parametrize("n", [1, 2])
def test_join_n_fires_once_and_absorbs_later_arrivals(n: int) -> None:
    spec = wf(
        task("a", next=(on_success("b", "c", "d"),)),
        task("b", next=(on_success("j"),)),
        task("c", next=(on_success("j"),)),
        task("d", next=(on_success("j"),)),
        task("j", join=n),
    )
    sim = started(spec)
    step(sim, "a")
    for count, name in enumerate("bcd", start=1):
        step(sim, name)
        assert sim.state("j").join_arrivals == count
        assert len(sim.rows_where(task="j")) == (1 if count >= n else 0)
    step(sim, "j")
    assert sim.status == "succeeded"
    assert len(sim.iterations("j")) == 1
    assert sim.state("j").join_required == n


def test_join_that_can_never_fire_fails_the_workflow() -> None:
    # b fails (handled, so no TaskFailed): its success transition to j never fires.
    spec = wf(
        task("a", next=(on_success("j"),)),
        task("b", next=(on_failure("cleanup"), on_success("j"))),
        task("cleanup"),
        task("j", join="all"),
    )
    sim = started(spec)
    step(sim, "a")
    assert sim.state("j").status == "pending"
    step(sim, "b", "failed")
    assert sim.status == "running"
    step(sim, "cleanup")
    assert sim.status == "failed"
    error = sim.execution.error
    assert error is not None
    assert error["type"] == "JoinNeverFired"
    assert error["task"] == "j"
    expected = "waits for 2 of its inbound tasks (a, b) but only 1 arrived (a; missing b)"
    assert expected in error["message"]
    assert sim.state("j").status == "canceled"
    assert not sim.rows_where(task="j")


def test_join_never_fired_when_its_only_arrival_comes_last() -> None:
    spec = wf(
        task("a", next=(on_success("j"),)),
        task("b", next=(on_failure("cleanup"), on_success("j"))),
        task("cleanup"),
        task("j", join="all"),
    )
    sim = started(spec)
    step(sim, "b", "failed")
    step(sim, "cleanup")
    step(sim, "a")  # j is born pending and, with nothing active, canceled at once
    assert sim.status == "failed"
    assert sim.execution.error is not None
    assert sim.execution.error["type"] == "JoinNeverFired"


def test_join_task_with_when_false_is_skipped_once_and_absorbs_the_rest() -> None:
    spec = wf(
        task("a", next=(on_success("b", "c"),)),
        task("b", next=(on_success("j"),)),
        task("c", next=(on_success("j"),)),
        task("j", join=1, when="{{ false }}", next=(on_complete("never"),)),
        task("never"),
    )
    sim = drain(Sim(spec))
    assert sim.status == "succeeded"
    assert [(s.status, s.join_arrivals) for s in sim.iterations("j")] == [("skipped", 2)]
    assert "never" not in sim.latest()


# ----------------------------------------------------------------- when


def test_when_false_skips_the_task_and_its_successors() -> None:
    spec = wf(
        task("a", when="{{ parameters.deploy }}", next=(on_complete("b"),)),
        task("b"),
        task("c"),
        parameters={
            "type": "object",
            "properties": {"deploy": {"type": "boolean", "default": False}},
            "additionalProperties": False,
        },
    )
    sim = drain(Sim(spec))
    assert sim.status == "succeeded"
    assert statuses(sim) == {"a": "skipped", "c": "succeeded"}
    assert not sim.rows_where(task="a")

    sim = drain(Sim(spec, {"deploy": True}))
    assert statuses(sim) == {"a": "succeeded", "b": "succeeded", "c": "succeeded"}


def test_when_that_fails_to_render_fails_the_task() -> None:
    spec = wf(task("a", next=(on_success("b"),)), task("b", when="{{ nope.x }}"))
    sim = drain(Sim(spec))
    assert sim.status == "failed"
    state = sim.state("b")
    assert state.status == "failed"
    assert state.error is not None and state.error["type"] == "TemplateError"
    assert "task 'b' when" in state.error["message"]


# ----------------------------------------------------------------- failures


def test_handled_failure_lets_the_workflow_succeed() -> None:
    spec = wf(task("a", next=(on_failure("cleanup"),)), task("cleanup"))
    sim = drain(Sim(spec), {"a": "failed"})
    assert sim.status == "succeeded"
    assert sim.execution.error is None
    assert statuses(sim) == {"a": "failed", "cleanup": "succeeded"}


def test_unhandled_failure_fails_after_running_tasks_finish() -> None:
    spec = wf(
        task("a", next=(on_success("after_a"),)),
        task("b", next=(on_complete("after_b"),)),
        task("after_a"),
        task("after_b"),
    )
    sim = started(spec)
    step(sim, "a", Outcome("failed", None, {"type": "Boom", "message": "disk full"}))
    # Nothing new is dispatched, but b is still running: the workflow is not over.
    assert sim.status == "running"
    assert sim.execution.active_tasks == 1
    assert live(sim) == ["b"]
    step(sim, "b")
    assert sim.status == "failed"
    # b's transition did not dispatch anything: after_b is only recorded (pending,
    # canceled at the end) for retry_execution to replay.
    assert not sim.rows_where(task="after_b")
    error = sim.execution.error
    assert error == {
        "type": "TaskFailed",
        "message": "task 'a' failed: disk full",
        "task": "a",
    }
    assert statuses(sim) == {"a": "failed", "after_b": "canceled", "b": "succeeded"}


def test_timed_out_task_is_a_failure_named_in_the_error() -> None:
    sim = drain(Sim(wf(task("a"))), {"a": "timed_out"})
    assert sim.status == "failed"
    assert sim.execution.error is not None
    assert sim.execution.error["message"].startswith("task 'a' timed out")
    assert sim.state("a").status == "timed_out"


def test_first_unhandled_failure_is_the_one_reported() -> None:
    sim = drain(Sim(wf(task("a"), task("b"))), {"a": "failed", "b": "failed"})
    assert sim.status == "failed"
    assert sim.execution.error is not None and sim.execution.error["task"] == "a"


def test_unknown_action_fails_the_task() -> None:
    sim = drain(Sim(wf(task("a", action="nope.missing"), task("b"))))
    assert sim.status == "failed"
    assert sim.state("a").error == {
        "type": "UnknownAction",
        "message": "action 'nope.missing' is not registered",
    }


# ----------------------------------------------------------------- retries


def test_retries_with_exponential_delays_then_fail() -> None:
    policy = RetryPolicy(count=3, delay=2.0, backoff="exponential", max_delay=5.0)
    spec = wf(
        task("a", retry=policy, next=(on_failure("cleanup"), on_success("next"))),
        task("cleanup"),
        task("next"),
    )
    sim = started(spec)
    for attempt in (1, 2, 3):
        step(sim, "a", "failed")
        assert "cleanup" not in sim.latest()  # transitions wait for the last attempt
        assert sim.state("a").status == "running"
        assert sim.execution.active_tasks == 1
        (row,) = sim.rows_where(status="scheduled", task="a")
        assert row.attempt == attempt + 1
    step(sim, "a", "failed")
    assert sim.state("a").status == "failed"
    retries = [c for c in sim.commands(NewTaskRows) if c.attempt > 1]
    assert [(c.attempt, c.delay, c.release) for c in retries] == [
        (2, 2.0, 1),
        (3, 4.0, 1),
        (4, 5.0, 1),
    ]
    assert [r.attempt for r in sim.rows_where(task="a")] == [1, 2, 3, 4]
    step(sim, "cleanup")
    assert sim.status == "succeeded"
    assert "next" not in sim.latest()


@pytest.mark.parametrize(
    ("backoff", "delays"),
    [("constant", [3.0, 3.0, 3.0]), ("linear", [3.0, 6.0, 9.0]), ("exponential", [3.0, 6.0, 12.0])],
)
def test_retry_backoff(backoff: Any, delays: list[float]) -> None:
    spec = wf(task("a", retry=RetryPolicy(count=3, delay=3.0, backoff=backoff)))
    sim = drain(Sim(spec), {"a": "failed"})
    assert [c.delay for c in sim.commands(NewTaskRows) if c.attempt > 1] == delays


def test_retry_succeeds_on_a_later_attempt_and_routes_success() -> None:
    spec = wf(task("a", retry=RetryPolicy(count=5), next=(on_success("b"),)), task("b"))
    sim = drain(Sim(spec), {"a": lambda row: "succeeded" if row.attempt == 3 else "timed_out"})
    assert sim.status == "succeeded"
    assert [r.status for r in sim.rows_where(task="a")] == ["timed_out", "timed_out", "succeeded"]
    assert sim.state("a").result == {"task": "a", "item": None, "attempt": 3}


def test_retry_on_error_false_does_not_retry() -> None:
    spec = wf(task("a", retry=RetryPolicy(count=3, on_error="{{ false }}")))
    sim = drain(Sim(spec), {"a": "failed"})
    assert sim.status == "failed"
    assert len(sim.rows_where(task="a")) == 1


def test_retry_on_error_sees_the_error() -> None:
    policy = RetryPolicy(count=3, on_error="{{ error().type == 'Transient' }}")
    spec = wf(task("a", retry=policy))

    def outcome(row: Row) -> Outcome:
        kind = "Transient" if row.attempt < 2 else "Fatal"
        return Outcome("failed", None, {"type": kind, "message": kind})

    sim = drain(Sim(spec), {"a": outcome})
    assert len(sim.rows_where(task="a")) == 2  # retried once, then a Fatal is not retried
    assert sim.execution.error is not None
    assert sim.execution.error["message"] == "task 'a' failed: Fatal"


def test_no_retry_once_the_workflow_has_failed() -> None:
    spec = wf(task("a"), task("b", retry=RetryPolicy(count=3)))
    sim = started(spec)
    step(sim, "a", "failed")
    step(sim, "b", "failed")
    assert sim.status == "failed"
    assert len(sim.rows_where(task="b")) == 1


def test_timeout_and_delay_are_passed_to_the_rows() -> None:
    spec = wf(task("a", action="core.slow", timeout=50.0, delay=7.0), task("b", action="core.slow",
              timeout=10.0))  # fmt: skip
    sim = started(spec)
    by_name = {c.task_name: c for c in sim.commands(NewTaskRows)}
    assert (by_name["a"].timeout, by_name["a"].delay) == (30.0, 7.0)  # action limit is lower
    assert (by_name["b"].timeout, by_name["b"].delay) == (10.0, 0.0)


# ----------------------------------------------------------------- with-items


def items_spec(**kw: Any) -> WorkflowSpec:
    params = {
        "type": "object",
        "properties": {"xs": {"default": []}},
        "additionalProperties": False,
    }
    return wf(
        task("start", next=(on_success("each"),)),
        task(
            "each",
            action="core.echo",
            input={"message": "{{ index }}:{{ item }}"},
            with_items="{{ parameters.xs }}",
            next=(on_success("report"),),
            **kw,
        ),
        task("report", action="core.any", input={"got": "{{ task.each.results }}"}),
        parameters=params,
    )


def test_with_items_results_are_in_item_order() -> None:
    sim = started(items_spec(), {"xs": ["a", "b", "c", "d"]})
    step(sim, "start")
    assert [r.input for r in sim.rows_where(task="each")] == [
        {"message": "0:a"}, {"message": "1:b"}, {"message": "2:c"}, {"message": "3:d"},
    ]  # fmt: skip
    for item in (3, 1, 0, 2):
        step(sim, "each", Outcome("succeeded", f"r{item}"), item=item)
    state = sim.state("each")
    assert state.status == "succeeded"
    assert state.result == {
        "results": ["r0", "r1", "r2", "r3"],
        "failed_items": [],
        "total_count": 4,
    }
    assert sim.rows_where(task="report")[0].input == {"got": ["r0", "r1", "r2", "r3"]}
    assert len(sim.commands(AggregateItems)) == 1


@pytest.mark.parametrize("seed", range(8))
def test_with_items_concurrency_window_is_never_exceeded(seed: int) -> None:
    rng = random.Random(seed)
    spec = items_spec(concurrency=3)
    sim = started(spec, {"xs": list(range(10))})
    step(sim, "start")
    assert len(sim.rows_where(task="each", status="scheduled")) == 3
    assert len(sim.rows_where(task="each", status="pending")) == 7
    while sim.rows_where(task="each", status=("scheduled", "running")):
        flying = sim.rows_where(task="each", status=("scheduled", "running"))
        assert len(flying) <= 3
        row = rng.choice(flying)
        if row.status == "scheduled":
            sim.claim(row.id)
        else:
            sim.finish(row.id, Outcome("succeeded", row.item_index))
        sim.check()
    assert sim.max_in_flight[("each", 1)] == 3
    assert sim.state("each").result["results"] == list(range(10))
    step(sim, "report")
    assert sim.status == "succeeded"


def test_with_items_batch_size_chunks_the_list() -> None:
    sim = drain(Sim(items_spec(batch_size=3), {"xs": [1, 2, 3, 4, 5, 6, 7]}))
    assert [r.input for r in sim.rows_where(task="each")] == [
        {"message": "0:[1, 2, 3]"}, {"message": "1:[4, 5, 6]"}, {"message": "2:[7]"},
    ]  # fmt: skip
    assert sim.state("each").items_total == 3
    assert sim.status == "succeeded"


def test_with_items_empty_list_succeeds_with_no_results() -> None:
    sim = drain(Sim(items_spec(), {"xs": []}))
    assert sim.status == "succeeded"
    assert not sim.rows_where(task="each")
    assert sim.state("each").result == {"results": [], "failed_items": [], "total_count": 0}
    assert sim.rows_where(task="report")[0].input == {"got": []}


def test_with_items_over_a_non_list_fails_the_task_clearly() -> None:
    sim = drain(Sim(items_spec(), {"xs": {"not": "a list"}}))
    assert sim.status == "failed"
    state = sim.state("each")
    assert state.status == "failed"
    assert state.error is not None
    assert state.error["type"] == "TemplateError"
    assert "task 'each' with_items: must render to a list, got dict" in state.error["message"]
    assert sim.execution.error is not None and sim.execution.error["task"] == "each"


def test_with_items_failing_item_fails_the_task_and_stops_releasing() -> None:
    sim = started(items_spec(concurrency=2), {"xs": ["a", "b", "c", "d", "e"]})
    step(sim, "start")
    step(sim, "each", Outcome("succeeded", "ra"), item=0)  # releases item 2
    step(sim, "each", Outcome("failed", "rb", {"type": "X", "message": "no"}), item=1)
    assert sim.state("each").status == "running"
    assert [r.item_index for r in sim.rows_where(task="each", status="pending")] == [3, 4]
    step(sim, "each", Outcome("succeeded", "rc"), item=2)
    state = sim.state("each")
    assert state.status == "failed"
    # Items 3 and 4 never ran: null, so positions match item indices (store.load.item_results).
    assert state.result == {
        "results": ["ra", "rb", "rc", None, None],
        "failed_items": [1],
        "total_count": 5,
    }
    assert state.error == {"type": "ItemsFailed", "message": "1 of 5 items failed (indices 1)"}
    assert [r.status for r in sim.rows_where(task="each")] == [
        "succeeded", "failed", "succeeded", "canceled", "canceled",
    ]  # fmt: skip
    assert sim.status == "failed"
    assert "report" not in sim.latest()


def test_with_items_retries_an_item_and_aggregates_its_final_attempt() -> None:
    sim = started(items_spec(retry=RetryPolicy(count=1)), {"xs": ["a", "b"]})
    step(sim, "start")
    step(sim, "each", "failed", item=1)
    (retry,) = sim.rows_where(task="each", status="scheduled", iteration=1)[-1:]
    assert (retry.item_index, retry.attempt, retry.input) == (1, 2, {"message": "1:b"})
    step(sim, "each", Outcome("succeeded", "A"), item=0)
    assert sim.state("each").status == "running"
    step(sim, "each", Outcome("succeeded", "B2"), item=1)
    assert sim.state("each").result["results"] == ["A", "B2"]
    step(sim, "report")
    assert sim.status == "succeeded"


def test_with_items_item_input_is_validated() -> None:
    spec = wf(
        task("a", next=(on_success("each"),)),
        task("each", action="core.echo", input={"message": "{{ item }}"}, with_items="{{ [1] }}"),
    )
    sim = drain(Sim(spec))
    error = sim.state("each").error
    assert error is not None and error["type"] == "ParameterError"
    assert "(item 0)" in error["message"] and "'message'" in error["message"]


def test_an_input_without_templates_is_rendered_without_a_scope() -> None:
    """Building the scope cost more than the rest of a plain task's dispatch: only an
    input or a with_items list that holds a template asks for one."""
    from attune_pg.engine import render

    asked: list[dict[str, Any]] = []

    def scope_for(**names: Any) -> dict[str, Any]:
        asked.append(names)
        return {"parameters": {"n": 5}, "item": names.get("item")}

    schema = {"type": "object", "properties": {"n": {}, "tags": {}}}
    static = TaskSpec("t", action="core.noop", input={"n": 1, "tags": ["a", {"b": "c"}]})
    assert render.items(static, scope_for) is None
    assert render.inputs(static, None, schema, scope_for) == [{"n": 1, "tags": ["a", {"b": "c"}]}]
    assert render.inputs(static, [7, 8], schema, scope_for) == [static.input, static.input]
    assert asked == []
    dynamic = TaskSpec("t", action="core.noop", input={"n": "{{ parameters.n }}"})
    assert render.inputs(dynamic, None, schema, scope_for) == [{"n": 5}]
    each = TaskSpec("t", action="core.noop", input={"n": "{{ item }}"}, with_items="{{ [1, 2] }}")
    assert render.items(each, scope_for) == [1, 2]
    assert render.inputs(each, [1, 2], schema, scope_for) == [{"n": 1}, {"n": 2}]
    assert asked == [{}, {}, {"item": 1, "index": 0}, {"item": 2, "index": 1}]
    del asked[:]
    assert render.output(wf(static), scope_for) == (None, None)
    assert render.output(wf(static, output_map={"n": 1}), scope_for) == ({"n": 1}, None)
    assert asked == []
    assert render.output(wf(static, output_map={"n": "{{ parameters.n }}"}), scope_for)[0] == {
        "n": 5
    }
    assert asked == [{}]


# ----------------------------------------------------------------- output and parameters

OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {"total": {"type": "integer"}, "who": {"type": "string"}},
    "required": ["total", "who"],
}


def output_spec(total: str) -> WorkflowSpec:
    return wf(
        task("a", action="core.any", next=(on_success(publish=(("n", "{{ result().n }}"),)),)),
        vars={"n": 0},
        output_map={"total": total, "who": "{{ system.identity.login }}"},
        output=OUTPUT_SCHEMA,
    )


def test_output_map_is_rendered_and_validated() -> None:
    sim = drain(
        Sim(output_spec("{{ vars.n * 2 }}")), {"a": lambda r: Outcome("succeeded", {"n": 21})}
    )
    assert sim.status == "succeeded"
    assert sim.execution.output == {"total": 42, "who": "tester"}


def test_invalid_output_fails_the_workflow_naming_the_field() -> None:
    sim = drain(
        Sim(output_spec("{{ vars.n }} items")), {"a": lambda r: Outcome("succeeded", {"n": 1})}
    )
    assert sim.status == "failed"
    error = sim.execution.error
    assert error is not None and error["type"] == "OutputInvalid"
    assert error["message"].startswith("output total:")
    assert "integer" in error["message"]


def test_output_map_that_fails_to_render_fails_the_workflow() -> None:
    sim = drain(
        Sim(output_spec("{{ vars.missing.x }}")), {"a": lambda r: Outcome("succeeded", {"n": 1})}
    )
    assert sim.status == "failed"
    assert sim.execution.error is not None
    assert sim.execution.error["type"] == "TemplateError"
    assert "output_map" in sim.execution.error["message"]


WF_PARAMS = {
    "type": "object",
    "properties": {"count": {"type": "integer"}, "name": {"type": "string", "default": "x"}},
    "required": ["count"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"count": "three"}, "parameter 'count'"),
        ({}, "missing required parameter 'count'"),
        ({"count": 1, "bogus": True}, "unknown parameter 'bogus'"),
    ],
)
def test_bad_workflow_parameters_fail_before_any_task(
    given: dict[str, Json], expected: str
) -> None:
    sim = started(wf(task("a"), parameters=WF_PARAMS), given)
    assert sim.status == "failed"
    error = sim.execution.error
    assert error is not None and error["type"] == "ParameterError"
    assert expected in error["message"]
    assert not sim.states and not sim.rows


def test_bad_task_input_fails_the_task_with_a_parameter_error() -> None:
    spec = wf(
        task("a", next=(on_success("say"),)),
        task("say", action="core.echo", input={"message": "{{ parameters.count }}"}),
        parameters=WF_PARAMS,
    )
    sim = drain(Sim(spec, {"count": 5}))
    assert sim.status == "failed"
    error = sim.state("say").error
    assert error is not None and error["type"] == "ParameterError"
    assert "parameter 'message'" in error["message"]
    assert "task 'say' input" in error["message"]
    assert not sim.rows_where(task="say")
    assert sim.execution.error is not None and sim.execution.error["task"] == "say"


# ----------------------------------------------------------------- cycles and iterations


def test_iteration_cap_stops_a_cycle() -> None:
    spec = wf(
        task("s", next=(on_success("a"),)),
        task("a", next=(on_success("b"),)),
        task("b", next=(on_success("a"),)),
    )
    sim = drain(Sim(spec, iteration_cap=5))
    assert sim.status == "failed"
    error = sim.execution.error
    assert error is not None and error["type"] == "IterationCap"
    assert error["task"] == "a"
    assert "more than 5 times" in error["message"]
    assert [s.iteration for s in sim.iterations("a")] == [1, 2, 3, 4, 5]
    assert [s.iteration for s in sim.iterations("b")] == [1, 2, 3, 4, 5]


def test_bounded_loop_exits_through_a_condition() -> None:
    spec = wf(
        task("init", next=(on_success("count"),)),
        task(
            "count",
            action="core.any",
            input={"n": "{{ vars.n }}"},
            next=(
                Transition(
                    when="{{ result().n < 3 }}",
                    publish=(("n", "{{ result().n + 1 }}"),),
                    do=("count",),
                ),
                Transition(when="{{ result().n >= 3 }}", do=("done",)),
            ),
        ),
        task("done"),
        vars={"n": 0},
    )
    sim = drain(Sim(spec), {"count": lambda r: Outcome("succeeded", {"n": r.input["n"]})})
    assert sim.status == "succeeded"
    assert [r.input["n"] for r in sim.rows_where(task="count")] == [0, 1, 2, 3]
    assert sim.execution.vars == {"n": 3}


def test_task_triggered_twice_runs_twice_and_older_iteration_finishes_later() -> None:
    spec = wf(
        task("a", next=(on_success("d"),)),
        task("b", next=(on_success("d"),)),
        task("d"),
    )
    sim = started(spec)
    step(sim, "a")
    step(sim, "b")
    assert [s.status for s in sim.iterations("d")] == ["running", "running"]
    assert sim.execution.active_tasks == 2
    step(sim, "d", iteration=1)  # not the latest: the advance must add_state it
    assert sim.state("d", 1).status == "succeeded"
    assert sim.status == "running"
    step(sim, "d", iteration=2)
    assert sim.status == "succeeded"


# ----------------------------------------------------------------- the conductor itself


def snapshot(spec: WorkflowSpec, status: str = "requested", active: int = 0) -> Execution:
    return Execution(id=7, ref=spec.ref, status=status, spec=spec, parameters={}, vars={},
                     active_tasks=active)  # fmt: skip


def test_same_snapshot_and_events_give_the_same_commands() -> None:
    spec = wf(
        task("a", next=(on_success("b", "c"),)),
        task("b", retry=RetryPolicy(count=2, delay=1.0, jitter=0.5)),
        task("c", with_items="{{ [1, 2, 3] }}", action="core.any", concurrency=2),
    )
    outs = []
    for _ in range(2):
        ctx = Context(now=100.0, actions=ACTIONS)
        first = Conductor(snapshot(spec), {}, ctx)
        first.start()
        commands = first.flush()
        state = next(c.state for c in commands if isinstance(c, WriteTaskState))
        second = Conductor(snapshot(spec, "running", 1), {"a": state}, ctx)
        second.attempt_finished(
            Attempt(1, 7, "a", 1, None, 1, "core.noop", {}, "succeeded", {"ok": True})
        )
        outs.append((commands, second.flush()))
    assert outs[0] == outs[1]


def test_retry_jitter_is_deterministic_and_bounded() -> None:
    spec = wf(task("a", retry=RetryPolicy(count=1, delay=10.0, jitter=0.5)))
    state = TaskState("a", 1, "running")
    delays = set()
    for _ in range(3):
        c = Conductor(snapshot(spec, "running", 1), {"a": state}, Context(1.0, ACTIONS))
        c.attempt_finished(Attempt(1, 7, "a", 1, None, 1, "core.noop", {}, "failed"))
        (retry,) = [x for x in c.flush() if isinstance(x, NewTaskRows)]
        delays.add(retry.delay)
    (delay,) = delays
    assert 10.0 <= delay <= 15.0


def test_flush_writes_each_row_once_and_then_nothing() -> None:
    spec = wf(task("a", next=(on_success("b"),)), task("b"))
    c = Conductor(snapshot(spec), {}, Context(1.0, ACTIONS))
    c.start()
    commands = c.flush()
    assert [type(x).__name__ for x in commands] == [
        "WriteTaskState",
        "NewTaskRows",
        "WriteExecution",
    ]
    write = commands[-1]
    assert isinstance(write, WriteExecution)
    assert (write.before, write.status, write.active_tasks) == ("requested", "running", 1)
    assert c.flush() == []


def test_workflow_timeout_is_set_at_start() -> None:
    c = Conductor(snapshot(wf(task("a"), timeout=60)), {}, Context(1000.0, ACTIONS))
    c.start()
    (write,) = [x for x in c.flush() if isinstance(x, WriteExecution)]
    assert write.timeout_at == 1060.0


# ----------------------------------------------------------------- known bugs


def test_task_finishing_during_dispatch_does_not_end_the_workflow_early() -> None:
    spec = wf(
        task("a", next=(on_success("empty", "c"),)),
        task("empty", with_items="{{ [] }}"),
        task("c"),
    )
    sim = drain(Sim(spec))
    assert sim.state("empty").status == "succeeded"
    assert "c" in sim.latest(), "c was never dispatched"
    assert sim.status == "succeeded"


def test_join_fed_by_a_task_that_finishes_during_dispatch() -> None:
    spec = wf(
        task("a", next=(on_success("quick", "j"),)),
        task("quick", when="{{ true }}", action="nope.unknown", next=(on_complete("j"),)),
        task("j", join="all"),
    )
    sim = drain(Sim(spec))
    assert sim.execution.error is None, sim.execution.error
    assert sim.state("j").status == "succeeded"
    assert sim.status == "succeeded"


@pytest.mark.parametrize(
    "only",
    [task("a", when="{{ false }}"), task("a", with_items="{{ [] }}")],
    ids=["skipped", "empty-items"],
)
def test_workflow_with_nothing_to_run_succeeds(only: TaskSpec) -> None:
    sim = started(wf(only))
    assert sim.status == "succeeded"


def test_workflow_failing_at_start_is_a_legal_move() -> None:
    # requested -> failed is legal, unlike requested -> succeeded above.
    sim = started(wf(task("a", action="nope.unknown")))
    assert sim.status == "failed"
    assert ("workflow", 1, "requested", "failed") in sim.changes


def test_sim_catches_a_stale_guarded_write() -> None:
    spec = wf(task("a"))
    sim = started(spec)
    (row,) = sim.scheduled()
    sim.claim(row.id)
    conductor = Conductor(sim.execution.snapshot(), sim.latest(), Context(2.0, ACTIONS))
    conductor.attempt_finished(
        Attempt(row.id, 1, "a", 1, None, 1, "core.noop", {}, "succeeded", {"ok": True})
    )
    sim.states[("a", 1)] = TaskState("a", 1, "failed")  # another actor got there first
    with pytest.raises(SimViolation, match="StaleWrite"):
        sim.apply(conductor.flush())


def test_run_with_batched_completions() -> None:
    spec = wf(
        task("a", next=(on_success("b", "c", "d"),)),
        task("b", next=(on_success("j"),)),
        task("c", next=(on_success("j"),)),
        task("d", next=(on_success("j"),)),
        task("j", join="all", with_items="{{ [1, 2, 3, 4] }}", action="core.any", concurrency=2),
    )

    class Claims:
        def choose(self, n: int, what: str) -> int:
            return n - 1 if what == "batch" else 0

    sim = Sim(spec)
    run(sim, Claims(), outcome=lambda row, chooser: "succeeded", max_batch=4)
    assert sim.status == "succeeded"
    assert sim.state("j").result["total_count"] == 4


# ----------------------------------------------------------------- parallel blocks


def parallel_spec(*subs: TaskSpec) -> WorkflowSpec:
    return wf(
        TaskSpec(name="blk", kind="parallel", tasks=subs, next=(on_success("after"),)),
        task("after"),
    )


def test_parallel_block_succeeds_when_all_sub_tasks_succeed() -> None:
    sim = started(parallel_spec(task("p1"), task("p2")))
    assert live(sim) == ["p1", "p2"]
    step(sim, "p2")
    assert sim.state("blk").status == "running"
    step(sim, "p1")
    assert sim.state("blk").status == "succeeded"
    step(sim, "after")
    assert sim.status == "succeeded"


def test_parallel_block_fails_when_a_sub_task_fails() -> None:
    sim = drain(Sim(parallel_spec(task("p1"), task("p2"))), {"p1": "failed"})
    assert sim.state("blk").status == "failed"
    assert sim.status == "failed"
    assert "after" not in sim.latest()


def test_parallel_block_with_a_skipped_sub_task_finishes() -> None:
    sim = drain(Sim(parallel_spec(task("p1"), task("p2", when="{{ false }}"))))
    assert sim.state("blk").status == "succeeded"
    assert sim.status == "succeeded"


# ----------------------------------------------------------------- control: pause, cancel, retry
# `Sim.pause/resume/cancel/retry` do what the SQL functions do; `Sim.control_pass` is the
# worker's pass that carries the request out through `Conductor.control`.


def claim(sim: Sim, name: str, *, iteration: int = 1, item: int | None = None) -> Row:
    (row,) = [
        r
        for r in sim.rows_where(status="scheduled", task=name, iteration=iteration)
        if r.item_index == item
    ]
    return sim.claim(row.id)


def workflow_moves(sim: Sim) -> list[tuple[str | None, str]]:
    return [(before, after) for entity, _, before, after in sim.changes if entity == "workflow"]


def test_pause_holds_scheduled_work_and_resume_runs_it() -> None:
    spec = wf(task("a", next=(on_success("c"),)), task("b"), task("c"))
    sim = started(spec)
    a = claim(sim, "a")  # a runs; b stays scheduled
    assert sim.pause() == "pausing"
    assert sim.control_pass()
    sim.check()
    assert sim.status == "pausing"  # a still runs
    (b,) = sim.rows_where(task="b")
    assert (b.status, b.held) == ("pending", True)
    sim.finish(a.id, "succeeded")
    sim.check()
    assert sim.status == "paused"
    (c,) = sim.rows_where(task="c")
    assert (c.status, c.held) == ("pending", True)  # dispatched while pausing: held
    assert not sim.scheduled() and not sim.running()
    assert sim.resume() == "running"
    sim.check()
    assert live(sim) == ["b", "c"] and not sim.held()
    drain(sim)
    assert sim.status == "succeeded"
    assert workflow_moves(sim) == [
        ("requested", "running"), ("running", "pausing"), ("pausing", "paused"),
        ("paused", "running"), ("running", "succeeded"),
    ]  # fmt: skip


def test_pause_with_nothing_running_is_paused_by_its_control_pass() -> None:
    sim = started(wf(task("a"), task("b")))
    sim.pause()
    sim.control_pass()
    sim.check()
    assert sim.status == "paused"
    assert [(r.status, r.held) for r in sim.rows_where()] == [("pending", True)] * 2


def test_resume_before_the_control_pass_leaves_nothing_to_hold() -> None:
    sim = started(wf(task("a")))
    sim.pause()
    sim.resume()
    assert sim.execution.control_requested  # kept: a retry's request may be pending too
    assert sim.control_pass()
    sim.check()
    assert sim.status == "running"
    assert [(r.status, r.held) for r in sim.rows_where()] == [("scheduled", False)]
    assert drain(sim).status == "succeeded"


def test_with_items_released_while_paused_wait_for_resume() -> None:
    sim = started(items_spec(concurrency=1), {"xs": ["a", "b", "c"]})
    step(sim, "start")
    first = claim(sim, "each", item=0)
    sim.pause()
    sim.control_pass()
    sim.finish(first.id, "succeeded")
    sim.check()
    assert sim.status == "paused"
    assert [(r.item_index, r.status, r.held) for r in sim.rows_where(task="each")] == [
        (0, "succeeded", False), (1, "pending", True), (2, "pending", False),
    ]  # fmt: skip
    sim.resume()
    drain(sim)
    assert sim.status == "succeeded"
    assert sim.max_in_flight[("each", 1)] == 1


def test_cancel_allow_finish_lets_running_tasks_finish_and_dispatches_nothing() -> None:
    spec = wf(task("a", next=(on_success("after"),)), task("b"), task("after"))
    sim = started(spec)
    a = claim(sim, "a")
    assert sim.cancel() == "canceling"
    assert sim.execution.cancel_policy == "allow_finish"  # the workflow's default
    sim.control_pass()
    sim.check()
    assert statuses(sim) == {"a": "running", "b": "canceled"}
    assert [r.status for r in sim.rows_where(task="b")] == ["canceled"]
    assert not a.cancel_requested
    sim.finish(a.id, "succeeded")
    sim.check()
    assert sim.status == "canceled"
    assert statuses(sim) == {"a": "succeeded", "b": "canceled"}  # `after` never dispatched
    assert workflow_moves(sim)[-2:] == [("running", "canceling"), ("canceling", "canceled")]


def test_cancel_running_kills_running_actions() -> None:
    sim = started(wf(task("a", next=(on_complete("after"),)), task("after")))
    a = claim(sim, "a")
    sim.cancel("cancel_running")
    sim.control_pass()
    sim.check()
    assert a.cancel_requested and sim.status == "canceling"
    sim.finish(a.id, "canceled")  # the worker killed it
    sim.check()
    assert sim.status == "canceled"
    assert statuses(sim) == {"a": "canceled"}


def test_cancel_escalates_from_allow_finish_to_cancel_running() -> None:
    sim = started(wf(task("a")))
    a = claim(sim, "a")
    sim.cancel("allow_finish")
    sim.control_pass()
    assert not a.cancel_requested
    with pytest.raises(ControlRefused):
        sim.cancel("allow_finish")
    assert sim.cancel("cancel_running") == "canceling"
    sim.control_pass()
    sim.check()
    assert a.cancel_requested
    with pytest.raises(ControlRefused):
        sim.cancel("cancel_running")


def test_cancel_while_paused_cancels_held_work() -> None:
    sim = started(wf(task("a"), task("b")))
    sim.pause()
    sim.control_pass()
    sim.cancel()
    sim.control_pass()
    sim.check()
    assert sim.status == "canceled"
    assert [(r.status, r.held) for r in sim.rows_where()] == [("canceled", False)] * 2
    assert statuses(sim) == {"a": "canceled", "b": "canceled"}


def test_cancel_before_start_ends_canceled_at_once() -> None:
    sim = Sim(wf(task("a")))
    assert sim.cancel() == "canceled"
    assert not sim.execution.control_requested
    assert workflow_moves(sim) == [("requested", "canceled")]


def test_cancel_closes_the_with_items_window_on_what_runs() -> None:
    sim = started(items_spec(concurrency=2), {"xs": ["a", "b", "c", "d"]})
    step(sim, "start")
    first = claim(sim, "each", item=0)
    sim.cancel()
    sim.control_pass()
    sim.check()
    state = sim.state("each")
    assert (state.status, state.items_released) == ("running", 1)
    assert [r.status for r in sim.rows_where(task="each")] == [
        "running", "canceled", "canceled", "canceled",
    ]  # fmt: skip
    sim.finish(first.id, Outcome("succeeded", "A"))
    sim.check()
    state = sim.state("each")
    assert state.status == "canceled"
    assert state.result == {
        "results": ["A", None, None, None],
        "failed_items": [],
        "total_count": 4,
    }
    assert sim.status == "canceled"


def test_cancel_in_the_pass_that_ends_the_last_item_lets_the_items_decide() -> None:
    """Issue 7's bomb: a control pass ended the last running item (a child that failed)
    and carried out a cancel in one conductor run. The cancel saw the with-items task still
    running with nothing live and canceled it, while the aggregation of its items (applied
    with the same commands) failed it: an illegal failed -> canceled write in SQL."""
    sim = started(items_spec(), {"xs": ["a", "b"]})
    step(sim, "start")
    first = claim(sim, "each", item=0)
    last = claim(sim, "each", item=1)
    sim.finish(first.id, Outcome("succeeded", "A"))
    sim.cancel()
    sim.control_pass_with([(last.id, "failed")])
    sim.check()
    state = sim.state("each")
    assert state.status == "failed"  # what its items say: one failed
    assert state.result == {"results": ["A", None], "failed_items": [1], "total_count": 2}
    assert sim.status == "canceled"


def test_cancel_keeps_the_window_open_for_items_waiting_on_a_child() -> None:
    """Items parked on a child execution report back once the cancel reaches the child:
    the cancel must count them with the running ones. Counting only running rows ended the
    with-items task early, and the children's late reports then hit an ended task (issue
    7's bomb, canceled while its children ran). The simulator has no children: the live
    rows are given as `control.live_rows` reports them."""
    sim = started(items_spec(), {"xs": ["a", "b", "c", "d"]})
    step(sim, "start")
    running = claim(sim, "each", item=0)
    for item in (1, 2, 3):
        claim(sim, "each", item=item)
    sim.finish(running.id, Outcome("succeeded", "A"))
    sim.cancel()
    conductor = Conductor(sim.execution.snapshot(), dict(sim.latest()), Context(2e6, ACTIONS))
    for state in sim.open_states():
        conductor.add_state(state)
    # Items 1 and 2 wait on child executions; item 3 is being run by a worker.
    conductor.control({("each", 1): LiveRows(running=1, waiting_on_child=2)})
    written = {c.state.name: c.state for c in conductor.flush() if isinstance(c, WriteTaskState)}
    state = written["each"]
    assert (state.status, state.items_done, state.items_released) == ("running", 1, 4)


def test_control_requests_in_the_wrong_status_are_refused() -> None:
    sim = started(wf(task("a")))
    for request in (sim.resume, sim.retry, lambda: sim.cancel("nuke")):
        with pytest.raises(ControlRefused):
            request()
    sim.pause()
    with pytest.raises(ControlRefused):
        sim.pause()
    sim.resume()
    drain(sim)
    for request in (sim.pause, sim.resume, sim.cancel, sim.retry):
        with pytest.raises(ControlRefused):
            request()
    assert sim.status == "succeeded"


def fail_then_fix() -> WorkflowSpec:
    """tests/fixtures/packs/ctl/workflows/fail_then_fix.yaml"""
    return wf(
        task("setup", next=(on_success("flaky", "steady"),)),
        task("flaky", next=(on_success("finish"),)),
        task("steady", next=(on_success("finish"),)),
        task("finish", join="all"),
    )


def test_retry_reruns_only_the_unhandled_failure_and_keeps_the_rest() -> None:
    sim = started(fail_then_fix())
    step(sim, "setup")
    step(sim, "steady")
    step(sim, "flaky", "failed")
    assert sim.status == "failed"
    assert sim.state("flaky").unhandled
    assert (sim.state("finish").status, sim.state("finish").join_arrivals) == ("canceled", 1)
    assert sim.retry() == "running"
    assert sim.execution.error is None
    sim.control_pass()
    sim.check()
    assert not sim.state("flaky", 1).unhandled
    assert sim.state("flaky").key == ("flaky", 2)
    finish = sim.state("finish")  # the join the failure closed, reopened with its arrival
    assert (finish.key, finish.status, finish.join_arrivals) == (("finish", 2), "pending", 1)
    drain(sim)
    assert sim.status == "succeeded"
    runs = [r.task_name for r in sim.rows_where()]
    assert runs == ["setup", "flaky", "steady", "flaky", "finish"]


def test_retry_is_refused_when_no_task_failure_is_unhandled() -> None:
    spec = wf(
        task("a", next=(on_success("j"),)),
        task("b", next=(on_failure("cleanup"), on_success("j"))),
        task("cleanup"),
        task("j", join="all"),
    )
    sim = drain(Sim(spec), {"b": "failed"})
    assert sim.execution.error is not None
    assert sim.execution.error["type"] == "JoinNeverFired"
    with pytest.raises(ControlRefused, match="no failed task"):
        sim.retry()


# ----------------------------------------------------------------- control: regressions
# Bugs the control property tests found (test_control_properties.py), fixed since.


def test_pause_completed_before_its_control_pass_still_holds_scheduled_rows() -> None:
    """The completion path turned pausing into paused before the control pass had held
    the scheduled rows, and the pass then did nothing for `paused`: b stayed claimable."""
    sim = started(wf(task("a"), task("b")))
    a = claim(sim, "a")
    sim.pause()
    sim.finish(a.id, "succeeded")  # the last running row ends before the control pass
    sim.control_pass()
    sim.check()
    assert sim.status == "paused"
    (b,) = sim.rows_where(task="b")
    assert (b.status, b.held) == ("pending", True), "paused, yet b is claimable"


def test_with_items_killed_by_cancel_running_is_not_succeeded() -> None:
    """Killed items report canceled and count as done but not failed: the task ended
    `succeeded` with null results."""
    spec = wf(task("each", action="core.any", with_items="{{ [1, 2] }}", input={"x": "{{ item }}"}))
    sim = started(spec)
    for row in sim.scheduled():
        sim.claim(row.id)
    sim.cancel("cancel_running")
    sim.control_pass()
    sim.finish_many([(r.id, "canceled") for r in sim.running()])
    sim.check()
    assert sim.status == "canceled"
    assert sim.state("each").status == "canceled"


def test_retry_replays_transitions_suppressed_by_the_failure() -> None:
    """Transitions of tasks ending after an unhandled failure were dropped and never
    replayed: after the retry, `finish` missed steady's arrival (JoinNeverFired)."""
    sim = started(fail_then_fix())
    step(sim, "setup")
    step(sim, "flaky", "failed")
    step(sim, "steady")  # ends while the workflow is failing: its transition is deferred
    assert sim.status == "failed"
    sim.retry()
    sim.control_pass()
    drain(sim)
    assert sim.execution.error is None, sim.execution.error
    assert sim.status == "succeeded"


def test_pause_right_after_retry_does_not_skip_the_rerun() -> None:
    """A pause before the retry's control pass made the pass pause instead of redrive;
    with nothing active the execution ended `succeeded` without re-running a."""
    spec = wf(task("a", next=(on_success("b"),)), task("b"))
    sim = drain(Sim(spec), {"a": "failed"})
    sim.retry()
    sim.pause()  # before the retry's control pass
    sim.control_pass()
    sim.check()
    assert sim.status == "paused", f"{sim.status} without re-running a"
    sim.resume()
    drain(sim)
    assert sim.status == "succeeded"
    assert [s.status for s in sim.iterations("a")] == ["failed", "succeeded"]
    assert "b" in sim.latest()


def test_retry_of_a_join_task_keeps_its_round() -> None:
    """A re-run join task lost its join counters, so a late arrival of the same round
    opened a new round (j ran a third time; JoinNeverFired for join: N > 1)."""
    spec = wf(
        task("a", next=(on_success("b", "c"),)),
        task("b", next=(on_success("j"),)),
        task("c", next=(on_success("j"),)),
        task("j", join=1),
    )
    sim = started(spec)
    step(sim, "a")
    step(sim, "b")  # j fires on its first arrival; c's arrival belongs to the same round
    step(sim, "c", "failed")
    step(sim, "j", "failed")
    sim.retry()
    sim.control_pass()
    drain(sim)
    assert sim.status == "succeeded"
    assert len(sim.iterations("j")) == 2, [s.key for s in sim.iterations("j")]


def test_retry_reruns_an_unhandled_older_iteration() -> None:
    """Redrive only looked at the latest iteration: d#1 was neither re-run nor cleared and
    the retry ended `succeeded` re-running nothing."""
    spec = wf(task("a", next=(on_success("d"),)), task("b", next=(on_success("d"),)), task("d"))
    sim = started(spec)
    step(sim, "a")
    step(sim, "b")  # d is triggered twice: two iterations
    step(sim, "d", "failed", iteration=1)  # unhandled: the workflow fails
    step(sim, "d", iteration=2)
    assert sim.status == "failed"
    sim.retry()
    sim.control_pass()
    sim.check()
    assert not [s.key for s in sim.states.values() if s.unhandled]
    assert [s.status for s in sim.iterations("d")] == ["failed", "succeeded", "running"]


def test_retry_replays_a_deferred_trigger_of_a_task_it_reruns() -> None:
    """The replays were read from `latest` after the re-runs had replaced it: d's
    deferred trigger (d#2) was never replayed."""
    spec = wf(
        task("a", next=(on_success("d"),)),
        task("b", next=(on_success("d"),)),
        task("d", next=(on_success("e"),)),
        task("e"),
    )
    sim = started(spec)
    step(sim, "a")  # d#1 runs
    step(sim, "d", "failed")  # unhandled: the workflow is failing
    step(sim, "b")  # b's trigger of d is deferred (d#2 pending, canceled at the end)
    assert sim.status == "failed"
    sim.retry()
    sim.control_pass()
    drain(sim)
    assert sim.status == "succeeded"
    # Without the failure d would run twice (a and b) and so would e.
    assert len([s for s in sim.iterations("d") if s.status == "succeeded"]) == 2
    assert len(sim.rows_where(task="e")) == 2


def test_retry_replays_every_deferred_trigger_of_a_task() -> None:
    """Deferred triggers of one task collapsed into one pending state, replayed once."""
    spec = wf(task("x"), task("b", next=(on_success("d"),)), task("c", next=(on_success("d"),)),
              task("d"))  # fmt: skip
    sim = started(spec)
    step(sim, "x", "failed")  # unhandled
    step(sim, "b")  # both trigger d while the failure drains
    step(sim, "c")
    sim.retry()
    sim.control_pass()
    drain(sim)
    assert sim.status == "succeeded"
    assert len(sim.rows_where(task="d")) == 2, "d was triggered twice"


def test_pause_of_a_failing_workflow_does_not_rerun_its_failure() -> None:
    """Conductor.control redrove whenever a state was marked unhandled, retry or not."""
    sim = started(wf(task("a"), task("b")))
    step(sim, "a", "failed")  # unhandled; b still runs
    claim(sim, "b")
    sim.pause()
    sim.control_pass()
    sim.check()
    assert [s.key for s in sim.iterations("a")] == [("a", 1)], "a re-ran without a retry"


def test_control_pass_after_the_execution_ended_changes_nothing() -> None:
    """A control pass redrove a `canceled` execution: a running state in an ended one."""
    sim = started(wf(task("a"), task("b")))
    step(sim, "a", "failed")  # unhandled
    b = claim(sim, "b")
    sim.cancel()
    sim.finish(b.id, "succeeded")  # ends canceled before the control pass
    assert sim.status == "canceled"
    before = (dict(sim.states), [(r.id, r.status) for r in sim.rows_where()])
    sim.control_pass()
    assert (dict(sim.states), [(r.id, r.status) for r in sim.rows_where()]) == before
    sim.check()


def test_retry_replay_that_routes_into_another_replay() -> None:
    """Replay iterations came from a stale snapshot: e's replay routed into f, then f's
    replay created the same iteration (a duplicate task_execution row)."""
    spec = wf(
        task("x"),
        task("b", next=(on_success("e", "f"),)),
        task("e", action="core.any", with_items="{{ [] }}", next=(on_success("f"),)),
        task("f"),
    )
    sim = started(spec)
    step(sim, "x", "failed")
    step(sim, "b")  # e and f deferred
    sim.retry()
    sim.control_pass()
    drain(sim)
    assert sim.status == "succeeded"
    assert len(sim.rows_where(task="f")) == 2  # from b, and from e


def test_retry_whose_rerun_fails_at_once_leaves_nothing_pending() -> None:
    """The replays still ran after x's re-run failed at once; f's deferred trigger
    (f#2) ended up behind f#3 and stayed pending in the failed execution."""
    spec = wf(
        task("b", next=(on_success("e", "f"),)),
        task("x", action="nope.unknown"),  # fails inside dispatch, every time
        task("e", action="core.any", with_items="{{ [] }}", next=(on_success("f"),)),
        task("f"),
    )
    sim = started(spec)
    step(sim, "b")  # x has failed: e and f are deferred
    assert sim.status == "failed"
    sim.retry()
    sim.control_pass()
    drain(sim)  # Sim.check: an ended execution has no pending task state
    assert sim.status == "failed"


def test_task_state_moves_are_replace_without_init() -> None:
    """`TaskState.to` / `.ended` copy the instance dict (cheaper than dataclasses.replace):
    the same values as replace, and the original unchanged."""
    state = TaskState("a", 2, S.RUNNING, join_from=("x",), route="r", items_total=3)
    moved = state.to(S.SKIPPED)
    assert moved == replace(state, status=S.SKIPPED) and type(moved) is TaskState
    ended = state.ended(S.FAILED, {"r": 1}, {"type": "E", "message": "m"})
    assert ended == replace(state, status=S.FAILED, result={"r": 1}, error=ended.error)
    assert state.status == S.RUNNING and state.result is None and state.error is None
    with pytest.raises(FrozenInstanceError):
        moved.status = S.RUNNING  # type: ignore[misc]  # still frozen
