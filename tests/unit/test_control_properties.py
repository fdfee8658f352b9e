"""Property tests of control requests: pause, resume, cancel and retry at random points.

Random DAG workflows (the generator of test_conductor_properties) are driven by
`Driver`. At each step Hypothesis picks a worker step (claim a scheduled row, or
finish running rows in one advance), a control request (what the SQL functions of
schema/0004_control.sql do; refused ones must change nothing), or the worker's
request pass over a pending request (`advance.request_pass`), so requests and
their passes interleave with task completions as they do between real workers.
A row whose execution asked to kill it (cancel_running) reports `canceled`, or,
now and then, the outcome it reached before the kill.

Checked after every step, besides `Sim.check` and the guards of `Sim.apply` (every
status change, the control functions' own included, is a legal move of
machine.py; active_tasks equals the number of running task states):
- a paused execution has no running and no scheduled rows;
- a pausing control pass holds every scheduled row, and pauses once nothing runs;
- a cancel's control pass leaves no pending or scheduled row (with cancel_running,
  every running row is marked for its worker to kill); an accepted cancel always
  ends `canceled`, with no live row left, once the running rows have reported;
- a resume leaves nothing held, and every row it scheduled runs later (unless a
  cancel comes first);
- a retry's control pass re-runs every task state whose failure nobody handled and
  replays what the failure stopped (the latest canceled state of a task in each route: deferred
  transitions, closed joins, stopped with-items), clears every unhandled mark, and
  never re-runs a task that succeeded; a task that does not repeat in the DAG runs
  once, plus what retries re-ran;
- a with-items task succeeds only if the final attempt of every item succeeded;
- replaying the same decisions gives the same commands.
`test_retry_reruns_only_unhandled_tasks_then_finishes` also checks, with an oracle,
how a retried workflow ends when its re-runs succeed, and that every transition
that held was served exactly once (by a run, a re-run, or a replay).

When a re-run fails inside the retry's control pass, the pass stops replaying: what
is left stays canceled for the next retry (see
test_conductor.py::test_retry_whose_rerun_fails_at_once_leaves_nothing_pending), so
the check then requires the re-runs only.

A failing example can take Hypothesis minutes to shrink (each one drives a whole
execution twice); run with `--timeout=0` (pytest-timeout) to see it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from attune_pg import machine
from attune_pg.engine.state import TaskState
from tests.unit.conductor_sim import (
    Chooser,
    ControlRefused,
    ListChooser,
    Outcome,
    Row,
    Sim,
    outcome_for,
)
from tests.unit.test_conductor_properties import (
    DataChooser,
    Plan,
    _matches,
    expected_arrivals,
    outcome,
    plans,
)

Json = Any
OutcomeFn = Callable[[Row, Chooser], Outcome | str]

REQUESTS = (
    "pause",
    "resume",
    "cancel",  # the workflow's cancellation_policy (allow_finish here)
    "cancel allow_finish",
    "cancel cancel_running",
    "retry",
)
FAILED = frozenset({"failed", "timed_out"})


def succeed(row: Row, chooser: Chooser) -> Outcome | str:
    return "succeeded"


def flaky(row: Row, chooser: Chooser) -> Outcome | str:
    """Half the attempts fail: unhandled failures, the ones a retry re-runs."""
    roll = chooser.choose(4, "outcome")
    return outcome_for(row, "succeeded" if roll < 2 else "failed" if roll < 3 else "timed_out")


@dataclass
class Redrive:
    """A retry: what the execution looked like when retry_execution accepted it."""

    unhandled: tuple[TaskState, ...]  # every state marked unhandled, older iterations too
    stopped: dict[tuple[str, str], TaskState]  # latest canceled state per task and route
    succeeded: frozenset[str]  # tasks whose latest state had succeeded
    gap: dict[str, int]  # triggers not served yet, per task
    carried_out: bool = False


@dataclass
class Driver:
    """Drives one execution through worker steps, control requests and control passes."""

    sim: Sim
    chooser: Chooser
    outcome: OutcomeFn
    requests: int  # random control requests allowed
    retries: int  # retries allowed once the workflow has failed
    max_batch: int = 1
    rerun_outcome: OutcomeFn | None = None  # how attempts end once a retry was carried out
    repeatable: frozenset[str] = frozenset()  # tasks the DAG may legitimately run again
    canceled: bool = False  # a cancel was accepted
    resumed: set[int] = field(default_factory=set)  # rows a resume scheduled again
    redrives: list[Redrive] = field(default_factory=list)
    # Bookkeeping of the states retries created, so triggers can be counted:
    extra: Counter[str] = field(default_factory=Counter)  # states created by retry passes
    resubmitted: Counter[str] = field(default_factory=Counter)  # runs of a served trigger
    copied: Counter[str] = field(default_factory=Counter)  # join arrivals carried over
    halted: str | None = None  # a known bug made the run stop here
    refused: Counter[str] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)

    # ------------------------------------------------------------ driving

    def run(self, max_steps: int = 5_000) -> None:
        self.sim.start()
        self.check()
        for _ in range(max_steps):
            if not self.step() or self.halted:
                return
            self.check()
        raise AssertionError(f"no end after {max_steps} steps")  # pragma: no cover

    def step(self) -> bool:
        sim = self.sim
        work = sim.scheduled() + sim.running()
        kind = self.chooser.choose(6, "kind")
        if kind == 0 and self.requests > 0:
            self.requests -= 1
            self.request(REQUESTS[self.chooser.choose(len(REQUESTS), "request")])
        elif kind == 1 and sim.execution.control_requested:
            self.control_pass()
        elif work:
            self.work(work)
        elif sim.execution.control_requested:
            self.control_pass()
        elif sim.status in ("pausing", "paused"):
            assert sim.status == "paused", "pausing, nothing runs and no request left: stuck"
            self.request("resume")  # nothing else can happen: the operator resumes
        elif sim.status == "failed" and self.retries > 0:
            self.retries -= 1
            self.request("retry")  # refused unless some task state is marked unhandled
        else:
            return False
        return True

    def work(self, options: list[Row]) -> None:
        """`conductor_sim.run`'s step: claim one row, or finish 1..max_batch running rows."""
        sim = self.sim
        row = options[self.chooser.choose(len(options), "step")]
        if row.status == "scheduled":
            sim.claim(row.id)
            return
        batch = [row]
        running = [r for r in sim.running() if r.id != row.id]
        if self.max_batch > 1 and running:
            extra = self.chooser.choose(min(self.max_batch, len(running) + 1), "batch")
            batch += running[:extra]
        sim.finish_many([(r.id, self.decide(r)) for r in batch])

    def decide(self, row: Row) -> Outcome | str:
        if row.cancel_requested and self.chooser.choose(5, "killed in time") != 0:
            return outcome_for(row, "canceled")
        if self.rerun_outcome is not None and any(r.carried_out for r in self.redrives):
            return self.rerun_outcome(row, self.chooser)
        return self.outcome(row, self.chooser)

    # ------------------------------------------------------------ control

    def request(self, name: str) -> None:
        sim = self.sim
        before = fingerprint(sim)
        status = sim.status
        held = {r.id for r in sim.held()}
        try:
            if name == "pause":
                sim.pause()
            elif name == "resume":
                sim.resume()
            elif name == "retry":
                sim.retry()
            else:
                sim.cancel(name.partition(" ")[2] or None)
        except ControlRefused:
            assert fingerprint(sim) == before, f"refused {name} changed the execution"
            self.refused[name] += 1
            return
        self.accepted[f"{name} while {status}"] += 1
        if name.startswith("cancel"):
            self.canceled = True
        elif name == "resume":
            assert not sim.held(), "resume left rows held"
            assert all(sim.rows[i].status == "scheduled" for i in held)
            self.resumed |= held
        elif name == "retry":
            self.redrives.append(self.redrive_record())

    def retry_pending(self) -> bool:
        return bool(self.redrives) and not self.redrives[-1].carried_out

    def redrive_record(self) -> Redrive:
        sim = self.sim
        latest = sim.latest()
        unhandled = tuple(sorted((s for s in sim.states.values() if s.unhandled), key=key_of))
        assert unhandled, "retry accepted without an unhandled task state"
        stopped = {
            (s.name, s.route): s
            for s in sim.route_latest()
            if s.status == "canceled" and sim.spec.block_of(s.name) is None
        }
        return Redrive(
            unhandled=unhandled,
            stopped=stopped,
            succeeded=frozenset(n for n, s in latest.items() if s.status == "succeeded"),
            gap=self.trigger_gap(),
        )

    def control_pass(self) -> None:
        sim = self.sim
        status = sim.status
        keys = set(sim.states)
        assert sim.control_pass()
        if status == "canceling":
            assert not sim.rows_where(status=("pending", "scheduled")), "cancel left work queued"
            if sim.execution.cancel_policy == "cancel_running":
                assert all(r.cancel_requested for r in sim.running())
            if not sim.running():
                assert sim.status == "canceled", f"canceling with nothing running: {sim.status}"
            return
        if self.retry_pending() and status in ("running", "pausing"):
            self.check_redrive(self.redrives[-1], keys)  # a pause may have come first
        if status == "pausing" and not sim.terminal:
            assert not sim.scheduled(), "pause left rows scheduled"
            assert sim.status == ("pausing" if sim.running() else "paused"), sim.status
        if self.retry_pending():
            self.redrives[-1].carried_out = True  # by a pass in whatever status

    def halt(self, bug: str) -> None:
        event(f"known bug, run halted: {bug}")
        self.halted = bug

    def check_redrive(self, redrive: Redrive, keys: set[tuple[str, int]]) -> None:
        sim = self.sim
        assert not [k for k in keys if sim.states[k].unhandled], "unhandled marks left"
        created = Counter(name for name, _ in set(sim.states) - keys)
        reruns = Counter(s.name for s in redrive.unhandled)
        dispatched = dispatched_states(sim)
        # A re-run that failed at once stops the replays (they wait for the next retry).
        failed_again = any(s.unhandled for k, s in sim.states.items() if k not in keys)
        stopped_of: dict[str, list[TaskState]] = {}
        for (name, _route), state in sorted(redrive.stopped.items()):
            stopped_of.setdefault(name, []).append(state)
        for name in sorted(set(reruns) | set(stopped_of)):
            # Replays are per route (branch): a failure may stop a task in several.
            # A deferred trigger counts its arrivals (join_arrivals); anything else stopped
            # by the failure (a join it closed, a with-items it stopped) runs once more.
            replays = 0
            for stopped in stopped_of.get(name, ()) if not failed_again else ():
                deferred = stopped.key not in dispatched and stopped.join_required is None
                replays += max(1, stopped.join_arrivals) if deferred else 1
            wanted = reruns[name] + replays
            assert created[name] >= wanted, (
                f"{name}: created {created[name]}, re-runs {reruns[name]}, replays {replays}"
            )
            if sim.spec.task(name).join is None:
                served = sum(1 for st in stopped_of.get(name, ()) if st.key in dispatched)
                self.resubmitted[name] += reruns[name] + served
            else:
                self.copied[name] += sum(
                    s.join_arrivals for s in redrive.unhandled if s.name == name
                )
                self.copied[name] += sum(st.join_arrivals for st in stopped_of.get(name, ()))
        for name, n in created.items():
            self.extra[name] += n
        once = redrive.succeeded - self.repeatable
        assert not set(created) & once, f"re-ran a succeeded task: {set(created) & once}"

    # ------------------------------------------------------------ checks

    def check(self) -> None:
        sim = self.sim
        sim.check()  # active_tasks, nothing stuck, windows, terminal => nothing live
        ex = sim.execution
        if ex.status == "paused":
            assert not sim.running(), "paused with running rows"
            assert not sim.scheduled(), "paused with scheduled rows"
        if ex.status != "requested" and not ex.control_requested:
            assert (ex.active_tasks == 0) == sim.terminal, (ex.status, ex.active_tasks)
        for name in {s.name for s in sim.states.values()}:
            runs = sim.iterations(name)
            if name not in self.repeatable:
                # One trigger in the DAG: a run (or a deferred one), plus what retries re-ran.
                assert len(runs) <= 1 + self.extra[name], f"{name} ran {len(runs)} times"
                if sim.spec.task(name).join is not None:
                    assert runs[-1].join_arrivals <= len(sim.spec.predecessors(name))

    def triggers(self, name: str) -> int:
        """How many triggers of `name` were served: joins count arrivals, other tasks
        the states that were dispatched; what retries re-ran is left out."""
        sim = self.sim
        runs = sim.iterations(name)
        if sim.spec.task(name).join is not None:
            return sum(s.join_arrivals for s in runs) - self.copied[name]
        dispatched = dispatched_states(sim)
        return sum(1 for s in runs if s.key in dispatched) - self.resubmitted[name]

    def trigger_gap(self) -> dict[str, int]:
        """Triggers not served (yet): transitions that fired minus triggers served."""
        out = {}
        for name, expected in expected_arrivals(self.sim).items():
            got = self.triggers(name)
            assert got <= expected, f"{name}: served {got} triggers, transitions fired {expected}"
            if got < expected:
                out[name] = expected - got
        return out

    def check_end(self) -> None:
        sim = self.sim
        assert sim.terminal, f"ended {sim.status} with nothing left to do"
        assert not sim.execution.control_requested
        if self.canceled:
            assert sim.status == "canceled", f"an accepted cancel ended {sim.status}"
        for row_id in self.resumed:
            row = sim.rows[row_id]
            ran = any(e == "task" and k == row_id and a == "running" for e, k, _, a in sim.changes)
            assert ran or (row.status == "canceled" and self.canceled), f"resumed {row} never ran"
        for entity, _, before, after in sim.changes:
            if before is None:
                assert after in machine.INITIAL[entity]  # type: ignore[index]
            else:
                assert machine.is_legal(entity, before, after)  # type: ignore[arg-type]
        check_results(sim)


def key_of(state: TaskState) -> tuple[str, int]:
    return state.key


def dispatched_states(sim: Sim) -> set[tuple[str, int]]:
    """Task states that were dispatched (ran, or were decided at once), as opposed to
    pending ones (joins waiting, transitions deferred by a failure) that were canceled."""
    return {
        key  # type: ignore[misc]
        for entity, key, _, after in sim.changes
        if entity == "task_state" and after not in ("pending", "canceled")
    }


def fingerprint(sim: Sim) -> tuple[Json, ...]:
    ex = sim.execution
    rows = [(r.id, r.status, r.held, r.cancel_requested) for r in sim.rows.values()]
    return (ex.status, ex.control_requested, ex.cancel_policy, ex.error, ex.active_tasks,
            rows, dict(sim.states), len(sim.log))  # fmt: skip


def check_results(sim: Sim) -> None:
    """Task states agree with their attempts."""
    for state in sim.states.values():
        rows = sim.rows_where(task=state.name, iteration=state.iteration)
        if state.items_total is None and rows:
            final = max(rows, key=lambda r: (r.attempt, r.id))
            assert final.status == state.status, (state, final)
        elif state.items_total is not None and state.status == "succeeded":
            finals = {r.item_index or 0: r for r in sorted(rows, key=lambda r: r.attempt)}
            assert sorted(finals) == list(range(state.items_total)), state
            assert all(r.status == "succeeded" for r in finals.values()), state
            assert state.result["results"] == [finals[i].result for i in sorted(finals)]


def driver_for(plan: Plan, chooser: Chooser, outcome: OutcomeFn, **kw: Any) -> Driver:
    sim = Sim(plan.spec, plan.parameters)
    return Driver(sim, chooser, outcome, repeatable=plan.repeatable, **kw)


def report(driver: Driver) -> None:
    sim = driver.sim
    error = sim.execution.error
    event(f"workflow {sim.status}" + (f" ({error['type']})" if error else ""))
    for what in sorted(driver.accepted):
        event(f"accepted {what}")
    for what in sorted(driver.refused):
        event(f"refused {what}")
    for what in sorted(sim.stats):
        if "control pass" in what or "cancel" in what or what in ("hold_scheduled", "resume"):
            event(what)
    killed = [r for r in sim.rows.values() if r.cancel_requested]
    if killed:
        ended_first = all(r.status != "canceled" for r in killed)
        event("kill requested, action ended first" if ended_first else "running row killed")


# ----------------------------------------------------------------- tests


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    report_multiple_bugs=False,
)
@given(
    plan=plans(),
    data=st.data(),
    requests=st.integers(1, 6),
    retries=st.integers(0, 2),
    max_batch=st.sampled_from([1, 1, 3]),
)
def test_control_requests_at_random_points_keep_every_invariant(
    plan: Plan, data: st.DataObject, requests: int, retries: int, max_batch: int
) -> None:
    chooser = DataChooser(data)
    kw = {"requests": requests, "retries": retries, "max_batch": max_batch}
    driver = driver_for(plan, chooser, outcome, **kw)
    driver.run()
    if not driver.halted:
        driver.check_end()
    report(driver)

    replay = driver_for(plan, ListChooser(list(chooser.record)), outcome, **kw)
    replay.run()
    assert replay.sim.log == driver.sim.log, "the same decisions gave different commands"
    assert replay.sim.changes == driver.sim.changes
    assert replay.sim.status == driver.sim.status


def expected_end(sim: Sim) -> tuple[str, str | None]:
    """(status, error type) a workflow must end with, from its latest states (of each
    task in each route)."""
    latest = sim.route_latest()
    unhandled = [
        s
        for s in latest
        if s.status in FAILED
        and not any(_matches(t.when, s.status) for t in sim.spec.task(s.name).next)
    ]
    never_fired = [
        s
        for s in latest
        if s.status == "canceled" and s.items_total is None and s.join_required is not None
    ]
    if unhandled:
        return "failed", "TaskFailed"
    if never_fired:
        return "failed", "JoinNeverFired"
    return "succeeded", None


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    report_multiple_bugs=False,
)
@given(
    plan=plans(dispatch_failures=False, on_failure=False),
    data=st.data(),
    max_batch=st.sampled_from([1, 3]),
)
def test_retry_reruns_only_unhandled_tasks_then_finishes(
    plan: Plan, data: st.DataObject, max_batch: int
) -> None:
    """Random outcomes until the workflow ends; if it failed, retry (up to 3 times)
    with every attempt succeeding from then on."""
    chooser = DataChooser(data)
    kw: dict[str, Any] = {"requests": 0, "retries": 3, "max_batch": max_batch}
    driver = driver_for(plan, chooser, flaky, rerun_outcome=succeed, **kw)
    sim = driver.sim
    driver.run()
    report(driver)
    replay = driver_for(plan, ListChooser(list(chooser.record)), flaky, rerun_outcome=succeed, **kw)
    replay.run()
    assert replay.sim.log == sim.log, "the same decisions gave different commands"
    if driver.halted:
        return
    driver.check_end()

    error = sim.execution.error
    if sim.status == "failed" and error is not None and error["type"] == "TaskFailed":
        # retry_execution needs a task state marked unhandled: the conductor marks them.
        assert driver.retries == 0, "failed with TaskFailed, yet retry_execution refused"
    if not driver.redrives:
        return
    status, error_type = expected_end(sim)
    assert (sim.status, error and error["type"]) == (status, error_type), (error, driver.redrives)
    if status == "succeeded":
        # The re-runs succeeded: every transition that held was served exactly once.
        assert not driver.trigger_gap(), "a transition that held was never served"
    event(f"retried {len(driver.redrives)} time(s), ended {sim.status}")
