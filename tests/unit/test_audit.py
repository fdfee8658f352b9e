"""attune_pg.audit, the invariants the soak and the tests check: each one, broken on
purpose in otherwise clean facts, is reported with its kind; clean facts give nothing."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from attune_pg import audit
from attune_pg.audit import Duplicate, Facts, JoinRound, TaskRow, WorkflowRow

INDEX = "CREATE UNIQUE INDEX task_execution_occurrence ON attune.task_execution USING btree (…)"
LEASE = datetime(2025, 1, 1, tzinfo=UTC)


def _task(
    id: int = 1,
    *,
    attempt: int = 1,
    status: str = "succeeded",
    trail: str = "pending scheduled running succeeded",
    claims: int | None = None,
    task_name: str = "a",
    item_index: int | None = None,
    lease: bool = False,
) -> TaskRow:
    steps = trail.split()
    sources: list[str | None] = [None, *steps[:-1]]
    moves = list(zip(sources, steps, strict=True))
    return TaskRow(
        id=id,
        execution_id=1,
        task_name=task_name,
        iteration=1,
        item_index=item_index,
        attempt=attempt,
        status=status,
        claims=sum(1 for m in moves if m == ("scheduled", "running")) if claims is None else claims,
        lease_owner="w1" if lease else None,
        lease_expires_at=LEASE if lease else None,
        sources=sources,
        targets=steps,
    )


def _workflow(status: str = "succeeded", trail: str = "requested running succeeded") -> WorkflowRow:
    steps = trail.split()
    return WorkflowRow(1, "p.w", status, None, [None, *steps[:-1]], steps)


def _join(**changes: object) -> JoinRound:
    base = JoinRound(1, "j", 1, "", "succeeded", 2, 2, ["a", "b"], 1)
    return replace(base, **changes)  # type: ignore[arg-type]


def _facts(**changes: object) -> Facts:
    base = Facts(
        workflows=[_workflow()],
        tasks=[_task()],
        joins=[_join()],
        occurrence_index=INDEX,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _kinds(facts: Facts, finished: bool = False) -> list[str]:
    return [p.kind for p in audit.check(facts, finished=finished)]


def test_clean_facts_have_no_problem() -> None:
    retried = [
        _task(1, attempt=1, status="failed", trail="scheduled running failed"),
        _task(2, attempt=2, status="timed_out", trail="pending scheduled running timed_out"),
        _task(3, attempt=3),
        _task(4, task_name="b", status="running", trail="scheduled running", lease=True),
    ]
    # Redriven: failed -> running -> succeeded is a legal second ending of a workflow.
    redriven = _workflow(trail="requested running failed running succeeded")
    facts = _facts(tasks=retried, workflows=[redriven])
    assert audit.check(facts) == []
    assert _kinds(facts, finished=True) == ["unfinished"]  # the running row


@pytest.mark.parametrize(
    ("trail", "status", "kind"),
    [
        ("pending scheduled running succeeded succeeded", "succeeded", "duplicated"),
        ("waiting succeeded", "succeeded", "trail"),  # not born in an initial status
        ("pending running succeeded", "succeeded", "trail"),  # pending -> running: illegal
        ("pending scheduled running", "succeeded", "trail"),  # trail ends elsewhere
        ("", "succeeded", "trail"),  # no events at all
    ],
)
def test_task_trails(trail: str, status: str, kind: str) -> None:
    row = _task(status=status, trail=trail) if trail else replace(_task(), sources=[], targets=[])
    assert kind in _kinds(_facts(tasks=[row]))


def test_a_move_that_does_not_follow_the_last_one() -> None:
    row = replace(_task(), sources=[None, "pending", "pending", "running"], claims=0)
    (problem,) = audit.check(_facts(tasks=[row]))
    assert problem.kind == "trail" and "pending->running does not follow scheduled" in problem.text


def test_claims_must_match_claim_events() -> None:
    assert _kinds(_facts(tasks=[_task(claims=2)])) == ["trail"]


def test_workflow_trails() -> None:
    twice = _workflow("failed", trail="requested running succeeded failed")
    problems = audit.check(_facts(workflows=[twice]))
    assert [(p.kind, p.count) for p in problems] == [("duplicated", 1)]
    assert _kinds(_facts(workflows=[_workflow(trail="requested succeeded")])) == ["trail"]
    assert _kinds(_facts(orphan_events=3)) == ["trail"]


def test_occurrences() -> None:
    dup = Duplicate(1, "a", 1, None, 1, copies=3)
    problems = audit.check(_facts(duplicates=[dup]))
    assert [(p.kind, p.count) for p in problems] == [("duplicated", 2)]
    assert _kinds(_facts(occurrence_index=None)) == ["schema"]
    assert _kinds(_facts(occurrence_index="CREATE INDEX task_execution_occurrence …")) == ["schema"]
    # A retry after a success ran the step twice; a gap in the attempts lost one.
    again = [_task(1), _task(2, attempt=2)]
    assert _kinds(_facts(tasks=again)) == ["duplicated"]
    gap = [_task(1, status="failed", trail="scheduled running failed"), _task(2, attempt=3)]
    assert _kinds(_facts(tasks=gap)) == ["lost"]
    # Items are occurrences of their own: attempt 1 of two items is no retry.
    items = [_task(1, item_index=0), _task(2, item_index=1)]
    assert audit.check(_facts(tasks=items)) == []


def test_leases() -> None:
    left = _task(lease=True)
    assert _kinds(_facts(tasks=[left])) == ["lease"]
    bare = _task(status="running", trail="scheduled running")
    assert _kinds(_facts(tasks=[bare])) == ["lease"]


def test_joins() -> None:
    assert _kinds(_facts(joins=[_join(join_arrivals=1, join_from=["a"])])) == ["join"]
    assert _kinds(_facts(joins=[_join(status="pending")])) == ["duplicated"]
    assert _kinds(_facts(joins=[_join(join_from=["a", "a"])])) == ["duplicated"]
    assert _kinds(_facts(joins=[_join(join_arrivals=3, join_from=["a", "b"])])) == ["duplicated"]
    # Waiting for its arrivals, with no rows yet: fine. Rows from before schema 0007 have
    # no join_from.
    waiting = _join(status="pending", join_arrivals=1, join_from=["a"], task_rows=0)
    assert audit.check(_facts(joins=[waiting, _join(iteration=2, join_from=[])])) == []


def test_finished_reports_what_is_left() -> None:
    open_workflow = _workflow(status="running", trail="requested running")
    problems = audit.check(_facts(workflows=[open_workflow]), finished=True)
    assert [p.kind for p in problems] == ["unfinished"]
    assert audit.count(problems, "lost", "unfinished") == 1
    assert "execution 1 (p.w) is still running" in str(problems[0])


def test_a_row_created_claimed_is_a_clean_trail() -> None:
    """Schema 0015: a row created running by the worker that made it (claims 0), and one
    of those requeued after its worker died and claimed again (claims 1)."""
    made = _task(1, trail="running succeeded")
    requeued = _task(2, task_name="b", trail="running scheduled running succeeded")
    assert (made.claims, requeued.claims) == (0, 1)
    assert audit.check(_facts(tasks=[made, requeued])) == []
