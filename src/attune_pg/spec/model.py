"""Frozen, normalised model of workflows, actions and packs.

The loader turns YAML into these; the conductor only ever sees these. Every
shorthand of the language (on_success, decision, publish, ...) is already folded
into `TaskSpec.next`, so the engine has one shape to interpret.

`to_dict`/`from_dict` give the JSON form stored as a definition snapshot in
`attune.workflow_definition.definition` and `attune.workflow_execution.definition`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, Literal

Backoff = Literal["constant", "linear", "exponential"]
TaskKind = Literal["action", "parallel"]
CancellationPolicy = Literal["allow_finish", "cancel_running"]

# Names a task may not take because they are template scopes.
RESERVED_TASK_NAMES = frozenset(
    {"parameters", "vars", "task", "tasks", "system", "kv", "pack", "item", "index"}
)


def _plain(value: Any) -> Any:
    """A model value as `dataclasses.asdict` gives it (tuples stay tuples), but sharing the
    JSON leaves (the dicts and lists read from YAML hold no dataclasses) instead of deep-
    copying them, which made `asdict` the slowest step of registering a pack. Callers
    serialise the result; they must not mutate it."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return _plain_dataclass(value)
    return value


def _plain_dataclass(obj: Any) -> dict[str, Any]:
    names = _FIELDS.get(type(obj))
    if names is None:
        names = _FIELDS[type(obj)] = tuple(f.name for f in fields(obj))
    return {name: _plain(getattr(obj, name)) for name in names}


_FIELDS: dict[type, tuple[str, ...]] = {}

DEFAULT_ITERATION_CAP = 100
DEFAULT_DEPTH_LIMIT = 10


@dataclass(frozen=True)
class Transition:
    """One canonical `next` entry: when `when` holds, publish then trigger `do`."""

    when: str | None = None  # template; None means always
    publish: tuple[tuple[str, Any], ...] = ()  # ordered (variable, template value)
    do: tuple[str, ...] = ()
    # A branch of the task's `decision`: evaluated only when the task succeeded, and
    # only the first matching branch of the decision fires.
    decision: bool = False


@dataclass(frozen=True)
class RetryPolicy:
    count: int  # retries after the first attempt
    delay: float = 0.0
    backoff: Backoff = "constant"
    max_delay: float | None = None
    jitter: float = 0.0  # fraction of the delay, 0..1, added at random
    on_error: str | None = None  # template that must be truthy to retry

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before `attempt` (2 = first retry), without jitter."""
        n = attempt - 1
        if self.backoff == "linear":
            delay = self.delay * n
        elif self.backoff == "exponential":
            delay = self.delay * (2 ** (n - 1))
        else:
            delay = self.delay
        if self.max_delay is not None:
            delay = min(delay, self.max_delay)
        return max(0.0, delay)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: TaskKind = "action"
    action: str | None = None  # pack.name of an action or a workflow
    input: dict[str, Any] = field(default_factory=dict)  # values may be templates
    when: str | None = None
    with_items: str | None = None
    batch_size: int | None = None
    concurrency: int | None = None
    retry: RetryPolicy | None = None
    timeout: float | None = None
    delay: float | None = None
    join: Literal["all"] | int | None = None
    next: tuple[Transition, ...] = ()
    first_match: bool = False  # the task has a `decision` (see `decision_flags`)
    tasks: tuple[TaskSpec, ...] = ()  # sub-tasks of a `type: parallel` block
    line: int | None = None  # line in the source file, for error messages

    def decision_flags(self) -> tuple[bool, ...]:
        """Which transitions are decision branches. Snapshots from before decisions
        could sit beside other transitions mark none: there `first_match` made every
        transition a branch."""
        flags = tuple(t.decision for t in self.next)
        if self.first_match and not any(flags):
            return tuple(True for _ in self.next)
        return flags


@dataclass(frozen=True)
class WorkflowSpec:
    ref: str
    label: str
    version: str
    tasks: tuple[TaskSpec, ...]
    description: str = ""
    parameters: dict[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )  # always a JSON Schema object
    output: dict[str, Any] | None = None  # JSON Schema for the final output
    vars: dict[str, Any] = field(default_factory=dict)
    output_map: dict[str, Any] | None = None
    tags: tuple[str, ...] = ()
    timeout: float | None = None
    cancellation_policy: CancellationPolicy = "allow_finish"
    source_file: str | None = None

    @property
    def pack(self) -> str:
        return self.ref.split(".", 1)[0]

    def task(self, name: str) -> TaskSpec:
        """The task called `name`, including sub-tasks of parallel blocks."""
        for task in self.all_tasks():
            if task.name == name:
                return task
        raise KeyError(name)

    def all_tasks(self) -> tuple[TaskSpec, ...]:
        out: list[TaskSpec] = []
        for task in self.tasks:
            out.append(task)
            out.extend(task.tasks)
        return tuple(out)

    def block_of(self, name: str) -> TaskSpec | None:
        """The `type: parallel` block that `name` is a sub-task of, if any."""
        for task in self.tasks:
            if any(sub.name == name for sub in task.tasks):
                return task
        return None

    def inbound(self, name: str) -> int:
        """How many transitions (across all tasks) name `name` as a target."""
        return self._graph.inbound.get(name, 0)

    def predecessors(self, name: str) -> tuple[str, ...]:
        """The distinct tasks with a transition to `name`, in file order: what a
        `join` counts (each predecessor once, however many of its transitions lead
        here)."""
        return self._graph.predecessors.get(name, ())

    def join_required(self, name: str) -> int | None:
        """How many distinct predecessors the join of `name` waits for (None: no join)."""
        join = self.task(name).join
        if join is None:
            return None
        return len(self.predecessors(name)) if join == "all" else int(join)

    def is_split(self, name: str) -> bool:
        """Orquesta's split task: no `join`, more than one inbound transition, and not
        in a cycle. Each transition that reaches it opens a branch (a route) of its
        own, and everything downstream runs once per branch; joins count per branch."""
        return name in self._graph.splits

    def in_cycle(self, name: str) -> bool:
        """Can `name` reach itself through transitions?"""
        return name in self._graph.cyclic

    @cached_property
    def _graph(self) -> _Graph:
        return _Graph.of(self)

    def start_tasks(self) -> tuple[TaskSpec, ...]:
        """Top-level tasks no transition points at: they run when the workflow starts."""
        targets = {name for task in self.all_tasks() for t in task.next for name in t.do}
        return tuple(task for task in self.tasks if task.name not in targets)

    def to_dict(self) -> dict[str, Any]:
        return _plain_dataclass(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> WorkflowSpec:
        return WorkflowSpec(
            ref=data["ref"],
            label=data["label"],
            version=data["version"],
            tasks=tuple(_task_from_dict(t) for t in data["tasks"]),
            description=data.get("description", ""),
            parameters=data.get("parameters") or {"type": "object", "properties": {}},
            output=data.get("output"),
            vars=data.get("vars") or {},
            output_map=data.get("output_map"),
            tags=tuple(data.get("tags") or ()),
            timeout=data.get("timeout"),
            cancellation_policy=data.get("cancellation_policy", "allow_finish"),
            source_file=data.get("source_file"),
        )


def _task_from_dict(data: dict[str, Any]) -> TaskSpec:
    retry = data.get("retry")
    return TaskSpec(
        name=data["name"],
        kind=data.get("kind", "action"),
        action=data.get("action"),
        input=data.get("input") or {},
        when=data.get("when"),
        with_items=data.get("with_items"),
        batch_size=data.get("batch_size"),
        concurrency=data.get("concurrency"),
        retry=RetryPolicy(**retry) if retry else None,
        timeout=data.get("timeout"),
        delay=data.get("delay"),
        join=data.get("join"),
        next=tuple(
            Transition(
                when=t.get("when"),
                publish=tuple((k, v) for k, v in t.get("publish", ())),
                do=tuple(t.get("do", ())),
                decision=bool(t.get("decision", False)),
            )
            for t in data.get("next", ())
        ),
        first_match=bool(data.get("first_match", False)),
        tasks=tuple(_task_from_dict(t) for t in data.get("tasks", ())),
        line=data.get("line"),
    )


@dataclass(frozen=True)
class _Graph:
    """The transition graph of a workflow, computed once per spec (the conductor asks
    for predecessors and splits on every trigger)."""

    inbound: dict[str, int]
    predecessors: dict[str, tuple[str, ...]]
    cyclic: frozenset[str]
    splits: frozenset[str]

    @staticmethod
    def of(wf: WorkflowSpec) -> _Graph:
        inbound: dict[str, int] = {}
        preds: dict[str, list[str]] = {}
        succ: dict[str, set[str]] = {}
        for task in wf.all_tasks():
            for transition in task.next:
                for target in transition.do:
                    inbound[target] = inbound.get(target, 0) + 1
                    seen = preds.setdefault(target, [])
                    if task.name not in seen:
                        seen.append(task.name)
                    succ.setdefault(task.name, set()).add(target)
        cyclic = set()
        for start in succ:
            stack, reached = list(succ[start]), set()
            while stack:
                node = stack.pop()
                if node == start:
                    cyclic.add(start)
                    break
                if node not in reached:
                    reached.add(node)
                    stack.extend(succ.get(node, ()))
        joins = {t.name for t in wf.all_tasks() if t.join is not None}
        splits = frozenset(
            n for n, count in inbound.items() if count > 1 and n not in joins and n not in cyclic
        )
        return _Graph(
            inbound=inbound,
            predecessors={k: tuple(v) for k, v in preds.items()},
            cyclic=frozenset(cyclic),
            splits=splits,
        )


@dataclass(frozen=True)
class ActionSpec:
    ref: str  # pack.name
    runner: Literal["python", "shell", "http", "builtin", "workflow"]
    entry_point: str | None = None  # python: "file.py:function"; shell: command; builtin: name
    description: str = ""
    parameters: dict[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )  # JSON Schema object
    output_schema: dict[str, Any] | None = None
    timeout: float | None = None
    pack_path: str | None = None  # directory of the pack, for python entry points
    source_file: str | None = None

    @property
    def pack(self) -> str:
        return self.ref.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.ref.split(".", 1)[1]

    def to_dict(self) -> dict[str, Any]:
        return _plain_dataclass(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ActionSpec:
        return ActionSpec(**data)


@dataclass(frozen=True)
class PackSpec:
    ref: str
    label: str
    version: str
    path: str
    description: str = ""
    config_schema: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)  # with config_schema defaults applied
    actions: tuple[ActionSpec, ...] = ()
    workflows: tuple[WorkflowSpec, ...] = ()
