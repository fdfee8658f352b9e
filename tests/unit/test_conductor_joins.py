"""Joins count inbound *tasks* per branch (issue 8): rehearsals through the simulator.

Each test is a workflow, the outcome of each task, and the expected order of runs
(task, route) and result, in the style of Orquesta's conducting tests.
"""

from __future__ import annotations

from attune_pg.spec.model import TaskSpec, Transition, WorkflowSpec
from tests.unit.conductor_sim import Sim, drain
from tests.unit.test_conductor import FAILED, on_complete, on_success, started, step


def wf(*tasks: TaskSpec) -> WorkflowSpec:
    return WorkflowSpec(ref="tests.joins", label="joins", version="1", tasks=tasks)


def task(name: str, *next_: Transition, **kw: object) -> TaskSpec:
    return TaskSpec(name=name, action="core.noop", next=next_, **kw)  # type: ignore[arg-type]


def runs(sim: Sim) -> list[tuple[str, str]]:
    """Every task occurrence that ran, in iteration order per task, with its route."""
    done = [s for s in sim.states.values() if s.status not in ("pending", "canceled")]
    return sorted((s.name, s.route) for s in done)


def test_two_transitions_from_one_task_count_once_for_join_all() -> None:
    # a -> j by on_success and by on_complete: one predecessor. b is the other.
    spec = wf(
        task("a", on_success("j"), on_complete("j")),
        task("b", on_success("j")),
        task("j", join="all"),
    )
    assert spec.predecessors("j") == ("a", "b")
    sim = started(spec)
    step(sim, "a")
    assert sim.state("j").status == "pending"
    assert sim.state("j").join_from == ("a",)
    step(sim, "b")
    step(sim, "j")
    assert sim.status == "succeeded"
    assert [s.status for s in sim.iterations("j")] == ["succeeded"]
    assert sim.state("j").join_from == ("a", "b")


def test_success_and_failure_edges_of_one_task_count_once() -> None:
    # The old rule counted two transitions from b and waited forever (JoinNeverFired).
    spec = wf(
        task("a", on_success("j")),
        task("b", on_success("j"), Transition(when=FAILED, do=("j",))),
        task("j", join="all"),
    )
    sim = started(spec)
    step(sim, "a")
    step(sim, "b", "failed")  # handled: its failure edge leads to j
    step(sim, "j")
    assert sim.status == "succeeded", sim.execution.error


def test_join_n_needs_n_distinct_predecessors() -> None:
    # join: 2 with preds a and b; a reaches j twice. One surviving branch must not fire it.
    spec = wf(
        task("a", on_success("j"), on_complete("j")),
        task("b", Transition(when=FAILED, do=("j",))),
        task("j", join=2),
    )
    sim = started(spec)
    step(sim, "a")
    assert sim.state("j").status == "pending", "two arrivals from one task are one"
    step(sim, "b")  # succeeds: its only edge to j does not fire
    assert sim.status == "failed"
    error = sim.execution.error
    assert error is not None and error["type"] == "JoinNeverFired"
    assert (
        "waits for 2 of its inbound tasks (a, b) but only 1 arrived (a; missing b)"
        in (error["message"])
    )


def test_join_n_fires_on_the_nth_and_absorbs_the_rest() -> None:
    spec = wf(
        task("fan", on_success("a", "b", "c")),
        task("a", on_success("first")),
        task("b", on_success("first")),
        task("c", on_success("first")),
        task("first", join=1),
    )
    sim = started(spec)
    step(sim, "fan")
    step(sim, "b")
    assert sim.state("first").status == "running"
    step(sim, "a")
    step(sim, "first")
    step(sim, "c")
    assert sim.status == "succeeded"
    assert len(sim.iterations("first")) == 1
    assert sim.state("first").join_from == ("b", "a", "c")


def test_after_a_split_joins_count_per_branch() -> None:
    # Orquesta's "split" fixture: task4 is reached by task2 and task3 (no join): a
    # split. Everything after it runs once per branch, and task7 (join over task5 and
    # task6) joins within each branch, never across them.
    spec = wf(
        task("task1", on_success("task2", "task3")),
        task("task2", on_success("task4")),
        task("task3", on_success("task4")),
        task("task4", on_success("task5", "task6")),
        task("task5", on_success("task7")),
        task("task6", on_success("task7")),
        task("task7", join="all"),
    )
    assert spec.is_split("task4") and not spec.is_split("task7")
    sim = started(spec)
    step(sim, "task1")
    step(sim, "task2")
    step(sim, "task3")
    # task4 runs twice, in two routes
    assert sorted(s.route for s in sim.iterations("task4")) == ["task2__t0", "task3__t0"]
    step(sim, "task4", iteration=1)
    step(sim, "task4", iteration=2)
    # Interleave the branches: task5 of both, then task6 of both. A global counter
    # would fire task7 after the two task5 runs and mix the branches.
    first5, second5 = sorted(sim.iterations("task5"), key=lambda s: s.iteration)
    step(sim, "task5", iteration=first5.iteration)
    step(sim, "task5", iteration=second5.iteration)
    assert [s.status for s in sim.iterations("task7")] == ["pending", "pending"]
    for state in sorted(sim.iterations("task6"), key=lambda s: s.iteration):
        step(sim, "task6", iteration=state.iteration)
    drain(sim)
    assert sim.status == "succeeded"
    sevens = sim.iterations("task7")
    assert sorted((s.route, s.join_from, s.status) for s in sevens) == [
        ("task2__t0", ("task5", "task6"), "succeeded"),
        ("task3__t0", ("task5", "task6"), "succeeded"),
    ]
    assert runs(sim) == sorted(
        [("task1", ""), ("task2", ""), ("task3", "")]
        + [(t, r) for t in ("task4", "task5", "task6", "task7")
           for r in ("task2__t0", "task3__t0")]
    )  # fmt: skip


def test_nested_splits_extend_the_route() -> None:
    # s1 is a split (a, b lead to it); after it, s2 is a split again (c, d): four
    # routes at the end, one run of `end` each.
    spec = wf(
        task("start", on_success("a", "b")),
        task("a", on_success("s1")),
        task("b", on_success("s1")),
        task("s1", on_success("c", "d")),
        task("c", on_success("s2")),
        task("d", on_success("s2")),
        task("s2", on_success("end")),
        task("end"),
    )
    sim = started(spec)
    drain(sim)
    assert sim.status == "succeeded"
    assert sorted(s.route for s in sim.iterations("end")) == [
        "a__t0/c__t0", "a__t0/d__t0", "b__t0/c__t0", "b__t0/d__t0",
    ]  # fmt: skip


def test_a_split_reached_by_two_transitions_of_one_task_opens_two_branches() -> None:
    # Orquesta's "splits-transition": two transitions of one task into a split both
    # fire, each in its own route.
    spec = wf(
        task("a", on_success("s"), on_complete("s")),
        task("s", on_success("x", "y")),
        task("x", on_success("j")),
        task("y", on_success("j")),
        task("j", join="all"),
    )
    sim = started(spec)
    drain(sim)
    assert sim.status == "succeeded"
    assert sorted(s.route for s in sim.iterations("j")) == ["a__t0", "a__t1"]
    assert all(s.join_from == ("x", "y") for s in sim.iterations("j"))


def test_join_across_a_split_and_the_root_branch_never_fires() -> None:
    # As in Orquesta: arrivals count within a route, so a join fed by a split branch
    # and by the root branch waits for the root task inside the split route, which
    # never comes. The loader cannot see it (it depends on what runs); at run time
    # the workflow fails with JoinNeverFired.
    spec = wf(
        task("start", on_success("a", "b", "other")),
        task("a", on_success("s")),
        task("b", on_success("s")),
        task("s", on_success("j")),
        task("other", on_success("j")),
        task("j", join="all"),
    )
    sim = started(spec)
    drain(sim)
    assert sim.status == "failed"
    error = sim.execution.error
    assert error is not None and error["type"] == "JoinNeverFired"
    assert error["task"] == "j"
    # Three rounds waited, each with one predecessor: the root's and one per branch.
    assert sorted((s.route, s.join_from, s.status) for s in sim.iterations("j")) == [
        ("", ("other",), "canceled"),
        ("a__t0", ("s",), "canceled"),
        ("b__t0", ("s",), "canceled"),
    ]


def test_loops_are_not_splits() -> None:
    # A task in a cycle reached from two places keeps its route (Orquesta excludes
    # tasks in cycles from splits), so a bounded loop runs in the root route.
    spec = WorkflowSpec(
        ref="tests.loop", label="loop", version="1", vars={"n": 0},
        tasks=(
            task("init", on_success("step")),
            task("step", Transition(publish=(("n", "{{ vars.n + 1 }}"),)),
                 Transition(when="{{ vars.n < 3 }}", do=("step",))),
        ),
    )  # fmt: skip
    assert spec.in_cycle("step") and not spec.is_split("step")
    sim = started(spec)
    drain(sim)
    assert sim.status == "succeeded"
    assert {s.route for s in sim.iterations("step")} == {""}
    assert len(sim.iterations("step")) == 3


def test_repeat_arrival_of_one_predecessor_waits_for_the_others() -> None:
    # `loop` reaches j on every turn; j (join: all over loop and other) runs once,
    # when `other` arrives, not on the second turn of `loop`.
    spec = WorkflowSpec(
        ref="tests.loopjoin", label="loop join", version="1", vars={"n": 0},
        tasks=(
            task("init", on_success("loop", "other")),
            task("loop", Transition(publish=(("n", "{{ vars.n + 1 }}"),), do=("j",)),
                 Transition(when="{{ vars.n < 2 }}", do=("loop",))),
            task("other", on_success("j")),
            task("j", join="all"),
        ),
    )  # fmt: skip
    sim = started(spec)
    step(sim, "init")
    step(sim, "loop", iteration=1)
    step(sim, "loop", iteration=2)
    assert [s.status for s in sim.iterations("j")] == ["pending"]
    step(sim, "other")
    drain(sim)
    assert sim.status == "succeeded"
    assert [(s.status, s.join_from) for s in sim.iterations("j")] == [
        ("succeeded", ("loop", "other"))
    ]


def test_deferred_triggers_replay_in_their_own_branch() -> None:
    # d is a split; b and c trigger it while an unhandled failure drains; the retry
    # replays one run per branch.
    spec = wf(task("x"), task("b", on_success("d")), task("c", on_success("d")), task("d"))
    sim = started(spec)
    step(sim, "x", "failed")
    step(sim, "b")
    step(sim, "c")
    sim.retry()
    sim.control_pass()
    drain(sim)
    assert sim.status == "succeeded"
    ran = [s for s in sim.iterations("d") if s.status == "succeeded"]
    assert sorted(s.route for s in ran) == ["b__t0", "c__t0"]
