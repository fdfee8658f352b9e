"""Property tests: random DAG workflows, random worker schedules and outcomes.

Hypothesis draws a workflow (5-12 tasks, transitions only from lower to higher
index, random on_success/on_failure/on_complete edges, joins, `when` switched off
through a parameter (start tasks included), small with-items with concurrency
(empty lists included), retries, and tasks that fail inside dispatch: bad input
or an unknown action) and then every scheduling decision: which scheduled row a
worker claims, which running rows finish together in one advance, and how each
attempt ends.

Invariants checked after every event (see also `Sim.check` and the guards in
`Sim.apply`, which assert legal moves, `before` guards and unique attempts):
- `active_tasks` equals the number of running task_states;
- the workflow is terminal iff nothing is active, and then no row is
  pending/scheduled/running/waiting;
- a running task_state always has work in flight (no silent hang);
- with-items never have more items in flight than `concurrency`;
- every task runs at most once per route (branch): in a DAG a task reached by several
  transitions is a split, each arrival opens its own route, and a join counts each
  distinct predecessor of its route once (`join_from`);
- replaying the same decisions gives exactly the same command lists;
and at the end, an oracle recomputes from the final task states which
transitions must have fired, how many times each task must have been triggered
(joins: how many distinct (route, predecessor) pairs arrived), and whether the
workflow must have succeeded or failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from attune_pg.spec.model import RetryPolicy, TaskSpec, Transition, WorkflowSpec
from tests.unit.conductor_sim import Chooser, ListChooser, Outcome, Row, Sim, outcome_for, run

Json = Any

SUCCEEDED = "{{ succeeded() }}"
FAILED = "{{ failed() }}"
KINDS = {"on_success": SUCCEEDED, "on_failure": FAILED, "on_complete": None}
PARAMETERS = {
    "type": "object",
    "properties": {"off": {"type": "array", "items": {"type": "string"}, "default": []}},
    "additionalProperties": False,
}
# Tasks that fail inside dispatch, before any row exists (no retry applies to them).
BAD_INPUT: dict[str, Any] = {"action": "core.echo", "input": {"msg": "no 'message'"}}
UNKNOWN_ACTION: dict[str, Any] = {"action": "nope.unknown"}


@dataclass(frozen=True)
class Plan:
    spec: WorkflowSpec
    parameters: dict[str, Json]
    repeatable: frozenset[str]  # tasks that may legitimately run more than once


def _matches(when: str | None, status: str) -> bool:
    if when is None:
        return True
    if when == SUCCEEDED:
        return status == "succeeded"
    if when == FAILED:
        return status in ("failed", "timed_out")
    raise AssertionError(f"unexpected generated when {when!r}")


@st.composite
def plans(draw: st.DrawFn, dispatch_failures: bool = True, on_failure: bool = True) -> Plan:
    """A random DAG workflow; `dispatch_failures=False` leaves out the tasks that
    fail inside dispatch (their failure is the same every time they run), and
    `on_failure=False` the on_failure transitions (every failure is then unhandled,
    unless an on_complete transition handles it)."""
    kinds = sorted(k for k in KINDS if on_failure or k != "on_failure")
    n = draw(st.integers(5, 12))
    names = [f"t{i}" for i in range(n)]
    transitions: list[list[Transition]] = []
    for i in range(n):
        later = names[i + 1 :]
        out: list[Transition] = []
        if later:
            for _ in range(draw(st.integers(0, 3))):
                kind = draw(st.sampled_from(kinds))
                targets = draw(
                    st.lists(st.sampled_from(later), min_size=1, max_size=3, unique=True)
                )
                publish: tuple[tuple[str, Any], ...] = ()
                if kind == "on_success" and draw(st.booleans()):
                    publish = ((f"v{i}", "{{ result() | length }}"),)
                out.append(Transition(when=KINDS[kind], publish=publish, do=tuple(targets)))
        transitions.append(out)
    inbound = {name: 0 for name in names}
    sources: dict[str, list[str]] = {name: [] for name in names}
    for i, out in enumerate(transitions):
        for transition in out:
            for target in transition.do:
                inbound[target] += 1
                sources[target].append(names[i])
    off: list[str] = []
    tasks: list[TaskSpec] = []
    repeatable: set[str] = set()
    for i, name in enumerate(names):
        join: Any = None
        preds = len(set(sources[name]))  # a join counts distinct predecessor tasks
        if inbound[name] >= 2:
            join = draw(st.sampled_from([None, "all", *range(1, preds + 1)]))
        elif inbound[name] == 1 and draw(st.booleans()):
            join = "all"
        # A task runs more than once only if it is triggered by several transitions
        # without a join, or if something feeding it can run more than once.
        if (join is None and inbound[name] >= 2) or any(s in repeatable for s in sources[name]):
            repeatable.add(name)
        when = None
        if draw(st.integers(0, 4)) == 0:
            when = f"{{{{ '{name}' not in parameters.off }}}}"
            if draw(st.booleans()):
                off.append(name)
        kw: dict[str, Any] = {}
        shape = draw(st.integers(0 if dispatch_failures else 2, 39))
        if shape == 0:
            kw.update(BAD_INPUT)
        elif shape == 1:
            kw.update(UNKNOWN_ACTION)
        elif shape <= 11:
            size = draw(st.integers(0, 4))
            kw["with_items"] = "{{ " + repr(list(range(size))) + " }}"
            kw["action"] = "core.any"
            kw["input"] = {"x": "{{ item }}", "i": "{{ index }}"}
            kw["concurrency"] = draw(st.sampled_from([None, 1, 2, 3]))
            if draw(st.integers(0, 3)) == 0:
                kw["batch_size"] = 2
        elif draw(st.booleans()):
            kw["action"] = "core.echo"
            kw["input"] = {"message": f"{name} after {{{{ vars | length }}}} vars"}
        else:
            kw["action"] = "core.noop"
        if draw(st.integers(0, 4)) == 0:
            kw["retry"] = RetryPolicy(count=draw(st.integers(1, 2)), delay=1.0)
        tasks.append(TaskSpec(name=name, when=when, join=join, next=tuple(transitions[i]), **kw))
    spec = WorkflowSpec(
        ref="prop.flow",
        label="random DAG",
        version="1.0.0",
        tasks=tuple(tasks),
        parameters=PARAMETERS,
    )
    return Plan(spec, {"off": off}, frozenset(repeatable))


@dataclass
class DataChooser:
    """Draws each decision from Hypothesis and records it for the replay."""

    data: st.DataObject
    record: list[int] = field(default_factory=list)

    def choose(self, n: int, what: str) -> int:
        value = self.data.draw(st.integers(0, n - 1), label=what) if n > 1 else 0
        self.record.append(value)
        return value


def outcome(row: Row, chooser: Chooser) -> Outcome | str:
    roll = chooser.choose(10, "outcome")
    status = "succeeded" if roll < 7 else "failed" if roll < 9 else "timed_out"
    return outcome_for(row, status)


def invariants(plan: Plan) -> Any:
    def check(sim: Sim) -> None:
        sim.check()  # active count, terminal iff idle, windows, nothing stuck
        for name in {s.name for s in sim.states.values()}:
            spec = plan.spec.task(name)
            runs = sim.iterations(name)
            routes = [s.route for s in runs]
            assert len(routes) == len(set(routes)), f"{name} ran twice in one route: {routes}"
            if name not in plan.repeatable:
                assert len(runs) <= 1, f"{name} ran {len(runs)} times in a DAG"
            if spec.join is not None:
                preds = plan.spec.predecessors(name)
                for state in runs:
                    assert (
                        len(set(state.join_from)) == len(state.join_from) == (state.join_arrivals)
                    ), state
                    assert set(state.join_from) <= set(preds), (state.join_from, preds)
        if sim.status != "requested":
            assert (sim.execution.active_tasks == 0) == sim.terminal

    return check


def expected_arrivals(sim: Sim) -> dict[str, int]:
    """How many times each task must have been triggered, from the final task states:
    every firing transition for a task without a join; for a join, every distinct
    (route, predecessor) pair that fired into it (a join is no split, so it runs in
    the route of what arrives)."""
    arrivals = {task.name: 0 for task in sim.spec.tasks}
    pairs: dict[str, set[tuple[str, str]]] = {task.name: set() for task in sim.spec.tasks}
    for task in sim.spec.start_tasks():
        arrivals[task.name] = 1  # the workflow's start triggers them once
    for state in sim.states.values():
        if state.status not in ("succeeded", "failed", "timed_out"):
            continue  # skipped, canceled and pending tasks do not route
        for transition in sim.spec.task(state.name).next:
            if _matches(transition.when, state.status):
                for target in transition.do:
                    arrivals[target] += 1
                    pairs[target].add((state.route, state.name))
    for task in sim.spec.tasks:
        if task.join is not None:
            arrivals[task.name] = len(pairs[task.name])
    return arrivals


def check_outcome(sim: Sim) -> None:
    assert sim.terminal, f"ended in {sim.status} with nothing left to run"
    error = sim.execution.error
    unhandled = [
        s.key
        for s in sim.states.values()
        if s.status in ("failed", "timed_out")
        and not any(_matches(t.when, s.status) for t in sim.spec.task(s.name).next)
    ]
    never_fired = [
        s.key
        for s in sim.states.values()
        if s.status == "canceled" and s.items_total is None and s.join_required is not None
    ]
    if unhandled or never_fired:
        assert sim.status == "failed", (unhandled, never_fired)
        assert error is not None
        assert error["type"] in ("TaskFailed", "JoinNeverFired")
        assert error["task"] in {name for name, _ in unhandled + never_fired}
    else:
        assert sim.status == "succeeded", error
        assert error is None
    # Every transition that held must have reached its target, unless an unhandled
    # failure stopped dispatching (then no more than that).
    complete = error is None or error["type"] == "JoinNeverFired"
    for name, expected in expected_arrivals(sim).items():
        runs = sim.iterations(name)
        joins = sim.spec.task(name).join is not None
        got = sum(s.join_arrivals for s in runs) if joins else len(runs)
        if complete:
            assert got == expected, f"{name}: triggered {got} times, transitions fired {expected}"
        else:
            assert got <= expected, f"{name}: triggered {got} times, transitions fired {expected}"
    # Task results agree with their attempts.
    for state in sim.states.values():
        rows = sim.rows_where(task=state.name, iteration=state.iteration)
        if state.items_total is None and rows:
            assert max(rows, key=lambda r: r.attempt).status == state.status
            retry = sim.spec.task(state.name).retry
            assert len(rows) <= 1 + (retry.count if retry else 0)
        elif state.items_total is not None and state.status in ("succeeded", "failed"):
            assert state.result["total_count"] == state.items_total
            assert sorted({r.item_index or 0 for r in rows}) == list(range(state.items_total))
            if state.status == "succeeded":
                finals = sorted(
                    (r for r in rows if r.status == "succeeded"), key=lambda r: r.item_index or 0
                )
                assert [r.item_index for r in finals] == list(range(state.items_total))
                assert state.result["results"] == [r.result for r in finals]


def _join_statuses(sim: Sim) -> list[str]:
    """Every status a join task_state was written with (from the change log)."""
    return [
        after
        for entity, key, _, after in sim.changes
        if entity == "task_state"
        and isinstance(key, tuple)
        and sim.spec.task(str(key[0])).join is not None
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans(), data=st.data(), max_batch=st.sampled_from([1, 1, 3]))
def test_random_dags_keep_every_invariant(plan: Plan, data: st.DataObject, max_batch: int) -> None:
    sim = Sim(plan.spec, plan.parameters)
    chooser = DataChooser(data)
    run(sim, chooser, outcome=outcome, max_batch=max_batch, after_each=invariants(plan))
    check_outcome(sim)
    error = sim.execution.error
    event(f"workflow {sim.status}" + (f" ({error['type']})" if error else ""))
    for what in sorted(sim.stats):
        event(what)
    if "pending" in _join_statuses(sim):
        event("join waited for arrivals")
    for state in sim.states.values():
        if state.error is not None and state.error["type"] in ("ParameterError", "UnknownAction"):
            event("task failed inside dispatch")
        if state.items_total == 0:
            event("empty with-items")
        if state.status == "skipped" and state.name in {t.name for t in sim.spec.start_tasks()}:
            event("start task skipped")

    replay = Sim(plan.spec, plan.parameters)
    run(replay, ListChooser(list(chooser.record)), outcome=outcome, max_batch=max_batch)
    assert replay.log == sim.log, "the same schedule gave different commands"
    assert replay.status == sim.status


@settings(max_examples=40, deadline=None)
@given(plan=plans())
def test_random_dags_without_failures_fail_only_on_joins(plan: Plan) -> None:
    sim = Sim(plan.spec, plan.parameters)
    run(sim, ListChooser([]), outcome=lambda row, chooser: "succeeded", after_each=invariants(plan))
    check_outcome(sim)
    # With no failed attempt every join with inbound from successes fires unless an
    # on_failure edge feeds it: then JoinNeverFired is the only way to fail, besides a
    # task that failed inside dispatch (bad input, unknown action: it has no rows).
    if sim.status == "failed":
        error = sim.execution.error
        assert error is not None
        assert error["type"] in ("JoinNeverFired", "TaskFailed"), error
        if error["type"] == "TaskFailed":
            failed = [s for s in sim.iterations(error["task"]) if s.status == "failed"]
            assert failed, error
            for state in failed:
                assert state.error is not None
                assert state.error["type"] in ("ParameterError", "UnknownAction"), state.error
            assert not sim.rows_where(task=error["task"])
