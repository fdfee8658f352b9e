"""The invariants every database of this engine keeps, whatever ran in it: facts in
(store/audit.py reads them in one snapshot), problems out.

Pure: no database, no clock. The chaos soak (ops/chaos/) judges its runs with it, and the
tests that run workflows assert that it finds nothing once they are done:

    problems = audit.check(store.audit.gather(conn))

What is checked (`finished=True` adds the last one):

- **Trails.** The `*_status` events of every task and workflow row in
  attune.execution_event form a legal path of `machine.moves()`: a creation first, each
  move from where the previous one ended, the last ending in the row's status. A terminal
  event while the row was already terminal is a duplicate (a step finished twice). A task
  row's `claims` equals its claim events (scheduled -> running). No status event names a
  row that does not exist.
- **Occurrences.** No occurrence (execution, task, iteration, item, attempt) exists twice,
  and the unique index that forbids it is in place. The attempts of an occurrence are 1..n,
  and each one before the last failed or timed out: a retry follows a failure only, so
  anything else means the step ran again.
- **Leases.** A row holds a lease exactly while it is running.
- **Joins.** A join round (a task_state with `join_required`) that has task rows had its
  arrivals; one still pending has none; each predecessor is counted once per round.
- **Finished.** Nothing is left unfinished: every workflow and task row is terminal.

A problem has a kind, so a caller can count them: the soak's `lost` is `lost` plus
`unfinished`, its `duplicated` is `duplicated` (weighted by `count`, the extra copies).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from attune_pg import machine

Kind = Literal["unfinished", "lost", "duplicated", "trail", "lease", "join", "schema"]


@dataclass(frozen=True)
class Problem:
    kind: Kind
    text: str
    count: int = 1  # how many lost or duplicated things this one problem stands for

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class TaskRow:
    """One task_execution row and its status trail (events in id order)."""

    id: int
    execution_id: int
    task_name: str
    iteration: int
    item_index: int | None
    attempt: int
    status: str
    claims: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    sources: list[str | None]
    targets: list[str]

    @property
    def occurrence(self) -> tuple[int, str, int, int | None]:
        return (self.execution_id, self.task_name, self.iteration, self.item_index)


@dataclass(frozen=True)
class WorkflowRow:
    """One workflow_execution row and its status trail."""

    id: int
    workflow_ref: str
    status: str
    parent_task_id: int | None
    sources: list[str | None]
    targets: list[str]


@dataclass(frozen=True)
class JoinRound:
    """One task_state row of a join, with how many task rows its occurrence has."""

    execution_id: int
    task_name: str
    iteration: int
    route: str
    status: str
    join_required: int
    join_arrivals: int
    join_from: list[str]
    task_rows: int


@dataclass(frozen=True)
class Duplicate:
    """An occurrence with more than one task_execution row."""

    execution_id: int
    task_name: str
    iteration: int
    item_index: int | None
    attempt: int
    copies: int


@dataclass
class Facts:
    workflows: list[WorkflowRow] = field(default_factory=list)
    tasks: list[TaskRow] = field(default_factory=list)
    joins: list[JoinRound] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    occurrence_index: str | None = None  # its definition; None: missing
    orphan_events: int = 0  # status events whose row does not exist


def check(facts: Facts, *, finished: bool = False) -> list[Problem]:
    """Every invariant `facts` break; empty if none. `finished`: the caller waited until
    everything ended, so an unfinished row is a problem too."""
    out: list[Problem] = []
    out += _occurrences(facts)
    out += _trails(facts)
    out += _leases(facts.tasks)
    out += _joins(facts.joins)
    if finished:
        out += _unfinished(facts)
    return out


def count(problems: Sequence[Problem], *kinds: Kind) -> int:
    return sum(p.count for p in problems if p.kind in kinds)


# ----------------------------------------------------------------- trails


def trail_problem(
    entity: machine.Entity, sources: Sequence[str | None], targets: Sequence[str], final: str
) -> tuple[str | None, int]:
    """Walk one row's status events. Returns (what is wrong with the path or None, how
    many terminal events came while the row was already terminal)."""
    if not targets:
        return "no status events", 0
    legal = machine.moves(entity)
    terminal = machine.WORKFLOW_TERMINAL if entity == "workflow" else machine.TASK_TERMINAL
    wrong: str | None = None
    if sources[0] is not None or targets[0] not in machine.INITIAL[entity]:
        wrong = f"first event {sources[0]}->{targets[0]} is not a creation"
    current = targets[0]
    again = 0
    for src, dst in zip(sources[1:], targets[1:], strict=True):
        if dst in terminal and current in terminal:
            again += 1
        elif wrong is None and src != current:
            wrong = f"event {src}->{dst} does not follow {current}"
        elif wrong is None and (src, dst) not in legal:
            wrong = f"illegal move {src}->{dst}"
        current = dst
    if wrong is None and current != final:
        wrong = f"events end in {current}, the row is {final}"
    return wrong, again


def _path(sources: Sequence[str | None], targets: Sequence[str]) -> str:
    return " ".join(f"{s or ''}->{t}" for s, t in zip(sources, targets, strict=True))


def _trails(facts: Facts) -> list[Problem]:
    out: list[Problem] = []
    for t in facts.tasks:
        wrong, again = trail_problem("task", t.sources, t.targets, t.status)
        trail = _path(t.sources, t.targets)
        name = f"task row {t.id} ({t.task_name}, execution {t.execution_id})"
        if again:
            out.append(Problem("duplicated", f"{name} ended {again + 1} times: {trail}", again))
        if wrong:
            out.append(Problem("trail", f"{name}: {wrong}: {trail}"))
        claims = sum(
            1
            for s, d in zip(t.sources, t.targets, strict=True)
            if (s, d) == ("scheduled", "running")
        )
        if claims != t.claims:
            out.append(Problem("trail", f"{name}: claims={t.claims} but {claims} claim events"))
    for w in facts.workflows:
        wrong, again = trail_problem("workflow", w.sources, w.targets, w.status)
        trail = _path(w.sources, w.targets)
        name = f"execution {w.id} ({w.workflow_ref})"
        if again:
            out.append(Problem("duplicated", f"{name} ended {again + 1} times: {trail}", again))
        if wrong:
            out.append(Problem("trail", f"{name}: {wrong}: {trail}"))
    if facts.orphan_events:
        out.append(
            Problem(
                "trail",
                f"{facts.orphan_events} status events name no row (rolled-back work leaked?)",
            )
        )
    return out


# ----------------------------------------------------------------- occurrences


def _occurrences(facts: Facts) -> list[Problem]:
    out: list[Problem] = []
    if facts.occurrence_index is None or "UNIQUE" not in facts.occurrence_index:
        out.append(
            Problem("schema", "the unique index attune.task_execution_occurrence is missing")
        )
    for d in facts.duplicates:
        key = (d.execution_id, d.task_name, d.iteration, d.item_index, d.attempt)
        out.append(
            Problem("duplicated", f"task occurrence {key} exists {d.copies} times", d.copies - 1)
        )
    attempts: dict[tuple[int, str, int, int | None], dict[int, TaskRow]] = defaultdict(dict)
    for t in facts.tasks:
        attempts[t.occurrence].setdefault(t.attempt, t)
    for occurrence, rows in attempts.items():
        last = max(rows)
        for n in range(1, last + 1):
            row = rows.get(n)
            if row is None:
                out.append(Problem("lost", f"occurrence {occurrence} has no attempt {n} of {last}"))
            elif n < last and row.status not in machine.TASK_FAILED:
                out.append(
                    Problem(
                        "duplicated",
                        f"occurrence {occurrence}: attempt {n + 1} after attempt {n} ended"
                        f" {row.status} (task row {row.id}): a retry follows a failure only",
                    )
                )
    return out


# ----------------------------------------------------------------- leases


def _leases(tasks: Sequence[TaskRow]) -> list[Problem]:
    out: list[Problem] = []
    for t in tasks:
        leased = t.lease_owner is not None or t.lease_expires_at is not None
        if t.status == machine.TaskStatus.RUNNING:
            if t.lease_owner is None or t.lease_expires_at is None:
                out.append(Problem("lease", f"task row {t.id} is running without a lease"))
        elif leased:
            out.append(
                Problem(
                    "lease",
                    f"task row {t.id} is {t.status} but still holds a lease:"
                    f" {t.lease_owner} until {t.lease_expires_at}",
                )
            )
    return out


# ----------------------------------------------------------------- joins


def _joins(joins: Sequence[JoinRound]) -> list[Problem]:
    out: list[Problem] = []
    for j in joins:
        name = f"join {j.task_name}#{j.iteration} of execution {j.execution_id}"
        if j.route:
            name += f" (route {j.route})"
        if j.status == machine.TaskStateStatus.PENDING and j.task_rows:
            out.append(
                Problem("duplicated", f"{name} is still pending but ran {j.task_rows} task rows")
            )
        elif j.task_rows and j.join_arrivals < j.join_required:
            out.append(
                Problem(
                    "join",
                    f"{name} ran with {j.join_arrivals} of {j.join_required} arrivals",
                )
            )
        # Rows from before join_from existed (schema 0007) have it empty.
        if j.join_from and (
            len(set(j.join_from)) != len(j.join_from) or len(j.join_from) != j.join_arrivals
        ):
            out.append(
                Problem(
                    "duplicated",
                    f"{name} counted {j.join_arrivals} arrivals from {j.join_from}:"
                    " each predecessor counts once per round",
                )
            )
    return out


# ----------------------------------------------------------------- finished


def _unfinished(facts: Facts) -> list[Problem]:
    out: list[Problem] = []
    for w in facts.workflows:
        if w.status not in machine.WORKFLOW_TERMINAL:
            out.append(
                Problem("unfinished", f"execution {w.id} ({w.workflow_ref}) is still {w.status}")
            )
    for t in facts.tasks:
        if t.status not in machine.TASK_TERMINAL:
            out.append(
                Problem(
                    "unfinished",
                    f"task row {t.id} ({t.task_name}) of execution {t.execution_id}"
                    f" is still {t.status}",
                )
            )
    return out
