"""The state machines of workflow executions, task executions and task states.

Declared once with `transitions`; everything else derives from these objects:
the guarded status writes in `store/` ask `sources(entity, trigger)`, and the
SQL guard table (`attune.status_transition`, read by the guard triggers) is
generated from `guard_rows()` (by `store/sqlgen.py`, into schema/0002), so Python
and SQL cannot disagree. `attune_pg.audit` walks the audit log against `moves()`.

Three machines:
- workflow: one `attune.workflow_execution` row.
- task: one `attune.task_execution` row (one occurrence, item and attempt).
- task_state: one `attune.task_state` row, the logical task occurrence (per
  workflow, task and iteration) that carries join counters, with-items windows
  and the final result that templates read as `task.<name>`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from transitions import Machine

Entity = Literal["workflow", "task", "task_state"]


class WorkflowStatus(StrEnum):
    """`attune.workflow_status`: one workflow_execution row."""

    REQUESTED = "requested"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    CANCELING = "canceling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMED_OUT = "timed_out"


class TaskStatus(StrEnum):
    """`attune.task_status`: one task_execution row (an attempt of an occurrence or item)."""

    PENDING = "pending"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELED = "canceled"
    SKIPPED = "skipped"


class TaskStateStatus(StrEnum):
    """`attune.task_state_status`: one task_state row (a logical task occurrence)."""

    PENDING = "pending"  # waiting for its join to be satisfied
    RUNNING = "running"  # dispatched: attempts or items are in flight
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELED = "canceled"
    SKIPPED = "skipped"


W, T, S = WorkflowStatus, TaskStatus, TaskStateStatus

WORKFLOW_STATES = tuple(WorkflowStatus)
WORKFLOW_TERMINAL = frozenset({W.SUCCEEDED, W.FAILED, W.CANCELED, W.TIMED_OUT})
# Not ended: what the control functions and a root's stop act on.
WORKFLOW_LIVE = frozenset({W.REQUESTED, W.RUNNING, W.PAUSING, W.PAUSED})
# Statuses in which new tasks are dispatched (held, while pausing or paused).
WORKFLOW_DISPATCHING = frozenset({W.RUNNING, W.PAUSING, W.PAUSED})
# Statuses from which the workflow finishes once nothing is active.
WORKFLOW_FINISHABLE = frozenset({W.RUNNING, W.PAUSING, W.PAUSED, W.CANCELING})
# A root in one of these statuses stops its whole tree (execution_follow_root).
WORKFLOW_STOPPING = frozenset({W.CANCELING, *WORKFLOW_TERMINAL})

TASK_STATES = tuple(TaskStatus)
TASK_TERMINAL = frozenset({T.SUCCEEDED, T.FAILED, T.TIMED_OUT, T.CANCELED, T.SKIPPED})
TASK_ACTIVE = frozenset({T.PENDING, T.SCHEDULED, T.RUNNING, T.WAITING})
# The outcomes of an attempt that count as a failure (retries, with-items, blocks).
TASK_FAILED = frozenset({T.FAILED, T.TIMED_OUT})

TASK_STATE_STATES = tuple(TaskStateStatus)
TASK_STATE_FAILED = frozenset({S.FAILED, S.TIMED_OUT})
TASK_STATE_DONE = frozenset({S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.CANCELED, S.SKIPPED})
TASK_STATE_OPEN = frozenset({S.PENDING, S.RUNNING})

_WORKFLOW_TRANSITIONS: list[dict[str, object]] = [
    {"trigger": "start", "source": "requested", "dest": "running"},
    # A pause that arrives as the last task finishes: the workflow is simply done.
    {"trigger": "succeed", "source": ["running", "pausing", "paused"], "dest": "succeeded"},
    {
        "trigger": "fail",
        "source": ["requested", "running", "pausing", "paused", "canceling"],
        "dest": "failed",
    },
    # canceling -> timed_out: a workflow timeout first cancels what runs, then ends timed_out.
    {
        "trigger": "time_out",
        "source": ["running", "pausing", "paused", "canceling"],
        "dest": "timed_out",
    },
    {"trigger": "pause", "source": "running", "dest": "pausing"},
    {"trigger": "paused", "source": "pausing", "dest": "paused"},
    {"trigger": "resume", "source": ["pausing", "paused"], "dest": "running"},
    {"trigger": "cancel", "source": ["running", "pausing", "paused"], "dest": "canceling"},
    {"trigger": "cancel_now", "source": ["requested", "canceling"], "dest": "canceled"},
    # retry_execution: re-run the failed tasks of a failed execution, keeping the rest.
    {"trigger": "retry", "source": "failed", "dest": "running"},
]

_TASK_TRANSITIONS: list[dict[str, object]] = [
    {"trigger": "schedule", "source": "pending", "dest": "scheduled"},
    {"trigger": "hold", "source": "scheduled", "dest": "pending"},  # pause takes work back
    {"trigger": "claim", "source": "scheduled", "dest": "running"},
    {"trigger": "requeue", "source": "running", "dest": "scheduled"},  # lease expired / handed back
    {"trigger": "park", "source": "running", "dest": "waiting"},
    {"trigger": "succeed", "source": ["running", "waiting"], "dest": "succeeded"},
    {"trigger": "fail", "source": ["pending", "scheduled", "running", "waiting"], "dest": "failed"},
    {"trigger": "time_out", "source": ["running", "waiting"], "dest": "timed_out"},
    {
        "trigger": "cancel",
        "source": ["pending", "scheduled", "running", "waiting"],
        "dest": "canceled",
    },
    {"trigger": "skip", "source": "pending", "dest": "skipped"},
]

_TASK_STATE_TRANSITIONS: list[dict[str, object]] = [
    {"trigger": "dispatch", "source": "pending", "dest": "running"},
    # pending -> succeeded: a join-held with-items task whose list turned out empty.
    {"trigger": "succeed", "source": ["pending", "running"], "dest": "succeeded"},
    {"trigger": "fail", "source": ["pending", "running"], "dest": "failed"},
    {"trigger": "time_out", "source": "running", "dest": "timed_out"},
    {"trigger": "cancel", "source": ["pending", "running"], "dest": "canceled"},
    {"trigger": "skip", "source": "pending", "dest": "skipped"},
]


def _build(states: tuple[StrEnum, ...], moves: list[dict[str, object]], initial: str) -> Machine:
    return Machine(
        model=None,
        states=[str(s) for s in states],
        transitions=moves,
        initial=initial,
        auto_transitions=False,
        send_event=False,
    )


WORKFLOW_MACHINE = _build(WORKFLOW_STATES, _WORKFLOW_TRANSITIONS, "requested")
TASK_MACHINE = _build(TASK_STATES, _TASK_TRANSITIONS, "pending")
TASK_STATE_MACHINE = _build(TASK_STATE_STATES, _TASK_STATE_TRANSITIONS, "pending")

MACHINES: dict[Entity, Machine] = {
    "workflow": WORKFLOW_MACHINE,
    "task": TASK_MACHINE,
    "task_state": TASK_STATE_MACHINE,
}

# Which table and which SQL enum each entity's status lives in.
TABLES: dict[Entity, tuple[str, str]] = {
    "workflow": ("workflow_execution", "workflow_status"),
    "task": ("task_execution", "task_status"),
    "task_state": ("task_state", "task_state_status"),
}


# Statuses a row may be created in (INSERT is not a transition, but it is guarded too).
INITIAL: dict[Entity, tuple[str, ...]] = {
    "workflow": ("requested",),
    # running: created already claimed by the worker whose transaction creates it (due
    # now, no better-ranked row waiting), under that worker's lease (schema 0015).
    "task": ("pending", "scheduled", "running"),
    # A task state is born pending (join), running (dispatched), or already decided
    # (`when` false -> skipped, bad input -> failed, empty with-items -> succeeded).
    # canceled: a join whose first arrival came as the workflow was already ending.
    "task_state": ("pending", "running", "skipped", "failed", "succeeded", "canceled"),
}


def states(entity: Entity) -> tuple[str, ...]:
    return tuple(MACHINES[entity].states)


def moves(entity: Entity) -> frozenset[tuple[str, str]]:
    """Every legal (from, to) status change of `entity`."""
    machine = MACHINES[entity]
    out: set[tuple[str, str]] = set()
    for event in machine.events.values():
        for source, transitions in event.transitions.items():
            for transition in transitions:
                out.add((source, str(transition.dest)))
    return frozenset(out)


def sources(entity: Entity, trigger: str) -> tuple[str, ...]:
    """The statuses from which `trigger` is legal (for `WHERE status = ANY(...)`)."""
    event = MACHINES[entity].events.get(trigger)
    if event is None:
        raise KeyError(f"{entity} has no transition {trigger!r}")
    return tuple(sorted(event.transitions))


def dest(entity: Entity, trigger: str) -> str:
    event = MACHINES[entity].events[trigger]
    dests = {t.dest for ts in event.transitions.values() for t in ts}
    (only,) = dests
    return str(only)


def is_legal(entity: Entity, source: str, target: str) -> bool:
    return (source, target) in moves(entity)


def guard_rows() -> list[tuple[str, str, str]]:
    """(entity, from, to) rows for the SQL guard table, sorted for stable output."""
    return sorted(
        (entity, source, target) for entity in MACHINES for source, target in moves(entity)
    )
