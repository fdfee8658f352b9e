"""What the conductor reads (a snapshot, events) and what it writes (commands).

The store turns rows into these and commands back into guarded SQL; the
conductor never sees a connection. All of them are frozen values, except `Budget`
(shared by the executions of one tree in a transaction, on purpose).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from attune_pg.machine import TaskStateStatus, TaskStatus, WorkflowStatus
from attune_pg.spec.model import ActionSpec, WorkflowSpec

Json = Any


class Budget:
    """What one root execution's tree may still create (setting max_task_rows and
    max_descendants, minus what the tree created before this transaction).

    Mutable on purpose: every execution of the tree advanced in one transaction takes
    from the same object, and the store charges what was taken when the transaction
    writes. Concurrent transactions of one tree may each take the last rows, so a tree
    can overshoot by at most one transaction's creations per worker. The root's own rows
    are counted on its own row (`workflow_execution.task_rows`, written with the rest of
    the row, so a tree of one costs no extra write); `rows_taken` counts descendants'.
    """

    __slots__ = ("executions_left", "executions_taken", "root_id", "rows_left", "rows_taken")

    def __init__(self, root_id: int, rows_left: int, executions_left: int) -> None:
        self.root_id = root_id
        self.rows_left = rows_left
        self.executions_left = executions_left
        self.rows_taken = 0
        self.executions_taken = 0

    def take_rows(self, count: int, *, descendant: bool = True) -> bool:
        if count > self.rows_left:
            return False
        self.rows_left -= count
        if descendant:
            self.rows_taken += count
        return True

    def take_execution(self) -> bool:
        if self.executions_left < 1:
            return False
        self.executions_left -= 1
        self.executions_taken += 1
        return True


@dataclass(frozen=True)
class Execution:
    """The locked `workflow_execution` row, as the conductor needs it."""

    id: int
    ref: str
    status: WorkflowStatus
    spec: WorkflowSpec
    parameters: dict[str, Json]
    vars: dict[str, Json]
    active_tasks: int
    error: dict[str, Json] | None = None
    output: Json = None
    pack_config: dict[str, Json] = field(default_factory=dict)
    # The PostgreSQL login that started the execution (a child's: its root's), what
    # templates see as system.identity.login.
    login: str = ""
    started_at: float | None = None  # epoch seconds
    depth: int = 0
    cancel_policy: str | None = None
    # Rows of this execution still running (loaded only while it is pausing), and the
    # ids of its scheduled rows, which a hold holds (locked by that load).
    running_rows: int | None = None
    scheduled_rows: tuple[int, ...] = ()
    root_id: int = 0  # the top of its tree (its own id for a top-level execution)
    # What its tree may still create; shared by the executions of one tree in a batch.
    budget: Budget | None = None
    trace_id: str | None = None  # of its root execution: for logs and spans only


@dataclass(frozen=True)
class TaskState:
    """One `task_state` row: a logical task occurrence (task name + iteration)."""

    name: str
    iteration: int
    status: TaskStateStatus
    join_required: int | None = None
    join_arrivals: int = 0
    items_total: int | None = None
    items_released: int = 0
    items_done: int = 0
    items_failed: int = 0
    result: Json = None
    error: dict[str, Json] | None = None
    unhandled: bool = False  # failed and no transition handled it: retry_execution re-runs it
    # The branch this occurrence belongs to: "" from the start, extended with
    # "<task>__t<n>" each time a transition enters a split task (Orquesta's routes).
    route: str = ""
    # A join's arrivals so far in this round: the distinct predecessors that arrived.
    join_from: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.iteration)

    # The moves of every step, as copies that skip `__init__`: `dataclasses.replace`
    # costs five times more, and a step makes several (a frozen dataclass without
    # slots or `__post_init__` is its instance dict, which a copy takes whole).
    def to(self, status: TaskStateStatus) -> TaskState:
        """This occurrence in `status`."""
        return self._copy({"status": status})

    def ended(
        self, status: TaskStateStatus, result: Json, error: dict[str, Json] | None
    ) -> TaskState:
        """This occurrence ended in `status` with `result` and `error`."""
        return self._copy({"status": status, "result": result, "error": error})

    def _copy(self, changes: dict[str, Any]) -> TaskState:
        new = object.__new__(TaskState)
        new.__dict__.update(self.__dict__, **changes)
        return new


@dataclass(frozen=True)
class Attempt:
    """A `task_execution` row that just reached a terminal status."""

    task_execution_id: int
    execution_id: int
    task_name: str
    iteration: int
    item_index: int | None
    attempt: int
    action_ref: str
    input: dict[str, Json]
    status: TaskStatus  # succeeded | failed | timed_out | canceled
    result: Json = None
    error: dict[str, Json] | None = None


@dataclass(frozen=True)
class LiveRows:
    """A task state's rows that stay live through a cancel: those a worker is running
    and those waiting on a child execution (which reports back when it ends); and the
    ids of its queued rows, which the cancel cancels (locked when counted)."""

    running: int = 0
    waiting_on_child: int = 0
    queued: tuple[int, ...] = ()

    @property
    def total(self) -> int:
        return self.running + self.waiting_on_child


@dataclass(frozen=True)
class Snapshot:
    """One locked execution and what its conductor needs (plan.Needs), loaded at once."""

    execution: Execution
    # The latest occurrence of each task in each route, then the older ones asked for.
    states: tuple[TaskState, ...] = ()
    # Per task state, the rows a cancel leaves alive (loaded for a canceling pass).
    live: Mapping[tuple[str, int], LiveRows] = field(default_factory=dict)


class KVLookup(Protocol):
    def get(self, key: str, default: Json = None) -> Json: ...

    def get_secret(self, key: str) -> Json: ...


@dataclass(frozen=True)
class Context:
    """Everything from outside the snapshot: the DB clock, actions, kv."""

    now: float  # epoch seconds, from the database clock
    actions: Mapping[str, ActionSpec]
    kv: KVLookup | None = None
    signing_key: bytes = b""  # signs secret tokens (attune.signing_key)


# ----------------------------------------------------------------- commands


@dataclass(frozen=True)
class WriteTaskState:
    """Insert (`before` is None) or update a task_state row guarded by its old status."""

    state: TaskState
    before: TaskStateStatus | None


@dataclass(frozen=True)
class NewTaskRows:
    """Create task_execution rows: the first `release` scheduled, the rest pending."""

    task_name: str
    iteration: int
    action_ref: str
    attempt: int
    items: tuple[tuple[int | None, dict[str, Json]], ...]  # (item_index, input)
    release: int
    delay: float = 0.0
    timeout: float | None = None
    held: bool = False  # the execution is pausing: released rows wait for resume


@dataclass(frozen=True)
class ReleaseItems:
    """Promote the next `count` pending items (by item_index) to scheduled."""

    task_name: str
    iteration: int
    count: int
    held: bool = False


@dataclass(frozen=True)
class CancelPendingItems:
    task_name: str
    iteration: int


@dataclass(frozen=True)
class CancelLive:
    """Cancel the execution's live work: the pending and scheduled rows counted (`rows`:
    the ids, `LiveRows.queued`), open inquiries, child executions; with `cancel_running`,
    ask workers to kill running actions."""

    cancel_running: bool
    rows: tuple[int, ...] = ()


@dataclass(frozen=True)
class HoldScheduled:
    """Pause: the scheduled rows counted (`rows`: the ids, `Execution.scheduled_rows`)
    go back to pending (held) and child executions pause."""

    rows: tuple[int, ...] = ()


@dataclass(frozen=True)
class Publish:
    """Audit record of variables published by a task's transition."""

    task_name: str
    values: dict[str, Json]


@dataclass(frozen=True)
class AggregateItems:
    """All items of a with-items task are done: the store loads their results
    (one query, once per task) and answers with `ItemsAggregated`."""

    task_name: str
    iteration: int


@dataclass(frozen=True)
class ItemsAggregated:
    """Event: the final results of a with-items task's items, in item order (the
    store's answer to `AggregateItems`), for `Conductor.items_aggregated`."""

    task_name: str
    iteration: int
    results: list[Json]
    failed_items: list[int]


@dataclass(frozen=True)
class ParkTask:
    """A claimed `core.inquiry` or workflow task now waits: create its inquiry or its
    child execution (plan.judge_parks accepted it)."""

    task_execution_id: int
    kind: str  # "inquiry" | "workflow"
    action_ref: str
    input: dict[str, Json]


@dataclass(frozen=True)
class WriteExecution:
    """Update the workflow_execution row, guarded by its status `before`."""

    before: WorkflowStatus
    status: WorkflowStatus
    active_tasks: int
    # None means unchanged: a 10,000-element parameter list is not rewritten per item.
    parameters: dict[str, Json] | None = None  # with defaults applied, set at start
    vars: dict[str, Json] | None = None
    error: dict[str, Json] | None = None
    output: Json = None
    timeout_at: float | None = None


Command = (
    WriteTaskState
    | NewTaskRows
    | ReleaseItems
    | CancelPendingItems
    | CancelLive
    | HoldScheduled
    | Publish
    | AggregateItems
    | WriteExecution
    | ParkTask
)
