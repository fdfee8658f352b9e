"""What an advance must load before the conductor runs, and the checks made on it (pure).

The conductor reads nothing while it runs: `needs()` says, per execution and events,
which rows its snapshot holds (the store's `load` reads them in one call); the actions
and kv keys its templates may use are resolved beforehand too (`action_refs`,
`kv_keys`, `SnapshotKV`). What cannot be known statically (a kv key computed by a
template) is recorded as a miss: the advance reruns its transaction with those keys
loaded. `judge_parks` and `refuse_secret_parameters` are the decisions made on loaded
data before the conductor runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from attune_pg import jsonbounds
from attune_pg.engine.run import error_of
from attune_pg.engine.state import Attempt, Execution
from attune_pg.errors import ParameterError, TemplateError
from attune_pg.machine import TaskStatus, WorkflowStatus
from attune_pg.redact import redact
from attune_pg.secrets import secret_parameter_key, secret_token
from attune_pg.spec.model import TaskSpec, WorkflowSpec
from attune_pg.spec.params import secret_parameters, validate_parameters

Json = Any
W = WorkflowStatus


@dataclass(frozen=True)
class Needs:
    """The task rows one execution's conductor needs, beyond its latest task states (the
    latest occurrence of each task in each route, always loaded)."""

    execution_id: int
    # Occurrences whose attempts end now: an older iteration is loaded too.
    occurrences: tuple[tuple[str, int], ...] = ()
    running_rows: bool = False  # pausing: does anything still run?
    open_states: bool = False  # a cancel: every pending or running state ...
    live_rows: bool = False  # ... and the rows it leaves alive
    unhandled: bool = False  # a retry: every state whose failure nobody handled


def needs(execution: Execution, attempts: Sequence[Attempt], requested: bool) -> Needs:
    """What the conductor of `execution` needs for these events (`requested`: a control
    request is carried out after the attempts)."""
    canceling = requested and execution.status == W.CANCELING
    return Needs(
        execution.id,
        occurrences=tuple(dict.fromkeys((a.task_name, a.iteration) for a in attempts)),
        running_rows=execution.status == W.PAUSING,
        open_states=canceling,
        live_rows=canceling,
        # A canceling execution never redrives; anything else may (retry_execution).
        unhandled=requested and not canceling,
    )


# ----------------------------------------------------------------- actions and kv


def _tasks(tasks: Iterable[TaskSpec]) -> Iterator[TaskSpec]:
    for task in tasks:
        yield task
        yield from _tasks(task.tasks)


def action_refs(spec: WorkflowSpec) -> frozenset[str]:
    """Every action the workflow's tasks call (sub-tasks of parallel blocks included)."""
    return _per_spec(spec)[0]


def kv_keys(spec: WorkflowSpec) -> frozenset[str]:
    """The kv keys the workflow's templates name literally (``kv.get('key')``); a key a
    template computes is found by running it (`SnapshotKV.missed`)."""
    return _per_spec(spec)[1]


# Both are constants of a spec, asked again by every batch. A worker's executions of one
# definition share one spec object (store/lock.py keeps them by digest): remembered by
# identity, holding the spec so that its id cannot be reused while it is remembered.
_PER_SPEC: dict[int, tuple[WorkflowSpec, tuple[frozenset[str], frozenset[str]]]] = {}
_MAX_PER_SPEC = 1024


def _per_spec(spec: WorkflowSpec) -> tuple[frozenset[str], frozenset[str]]:
    seen = _PER_SPEC.get(id(spec))
    if seen is not None and seen[0] is spec:
        return seen[1]
    if len(_PER_SPEC) >= _MAX_PER_SPEC:
        _PER_SPEC.clear()
    found = (frozenset(t.action for t in _tasks(spec.tasks) if t.action), _kv_keys(spec))
    _PER_SPEC[id(spec)] = (spec, found)
    return found


_KV_CALL = re.compile(r"""kv\s*\.\s*get(?:_secret)?\s*\(\s*(['"])((?:(?!\1).)*)\1""")


def _kv_keys(spec: WorkflowSpec) -> frozenset[str]:
    found: set[str] = set()
    stack: list[Json] = [spec.to_dict()]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if "kv" in value:
                found.update(match.group(2) for match in _KV_CALL.finditer(value))
        elif isinstance(value, Mapping):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
    return frozenset(found)


@dataclass(frozen=True)
class KVEntry:
    """A loaded kv key: its value (None for a secret: the conductor never holds one)."""

    value: Json
    secret: bool


class SnapshotKV:
    """`kv` for templates, from keys loaded before the conductor runs.

    A `template.scope.SecretFlagKV`: ``kv.get_secret`` renders a token from the secret
    flag alone, and ``kv.get`` refuses secret keys. A key that was not loaded reads as
    not set and is recorded in `missed`: the caller must load it and run again.
    """

    def __init__(self, entries: Mapping[str, KVEntry | None]) -> None:
        # None: loaded and not set.
        self._entries = dict(entries)
        self.missed: set[str] = set()

    def _entry(self, key: str) -> KVEntry | None:
        if key not in self._entries:
            self.missed.add(key)
            return None
        return self._entries[key]

    def is_secret(self, key: str) -> bool | None:
        """True for a secret key, False for a plain one, None when the key is not set."""
        entry = self._entry(key)
        return None if entry is None else entry.secret

    def get(self, key: str, default: Json = None) -> Json:

        entry = self._entry(key)
        if entry is None:
            return default
        if entry.secret:
            raise TemplateError(f"kv key {key!r} is secret; use kv.get_secret")
        return entry.value

    def get_secret(self, key: str) -> Json:
        # Never called for a SecretFlagKV (templates render tokens): refuse plainly.
        raise KeyError(f"kv key {key!r}: secret values are not loaded for templates")


# ----------------------------------------------------------------- checks on loaded rows


@dataclass(frozen=True)
class ParkRequest:
    """A claimed task the engine itself handles (an inquiry, a nested workflow)."""

    task_execution_id: int
    execution_id: int
    kind: str  # "inquiry" | "workflow"
    action_ref: str
    input: dict[str, Json]


@dataclass(frozen=True)
class ParkLimits:
    max_depth: int
    json_max_depth: int
    json_max_bytes: int


def judge_parks(
    parks: Sequence[ParkRequest],
    executions: Mapping[int, Execution],
    runnable: frozenset[str] | set[str],
    limits: ParkLimits,
) -> dict[int, tuple[TaskStatus, dict[str, Json] | None]]:
    """Parks that may not wait, by task execution id -> (status, error) they end with
    instead: a nested workflow that cannot start fails its task rather than waiting
    forever; an execution that is canceling (its root was canceled) parks nothing.
    Takes from the tree's budget for every child it lets start."""
    out: dict[int, tuple[TaskStatus, dict[str, Json] | None]] = {}
    for park in parks:
        execution = executions.get(park.execution_id)
        if execution is None:
            continue
        if execution.status == W.CANCELING:
            out[park.task_execution_id] = (TaskStatus.CANCELED, None)
            continue
        if park.kind != "workflow":
            continue
        problem = None
        bounds = jsonbounds.problem(park.input, limits.json_max_depth, limits.json_max_bytes)
        if park.action_ref not in runnable:
            problem = error_of(
                "UnknownWorkflow", f"workflow {park.action_ref!r} is not registered or disabled"
            )
        elif execution.depth + 1 > limits.max_depth:
            problem = error_of(
                "DepthLimit",
                f"nested workflows may be {limits.max_depth} deep (setting max_depth);"
                f" {park.action_ref!r} would be level {execution.depth + 1}",
            )
        elif bounds is not None:
            problem = error_of("ParameterError", f"parameters of {park.action_ref!r}: {bounds}")
        elif execution.budget is not None and not execution.budget.take_execution():
            problem = error_of(
                "SpawnBudget",
                f"the execution tree of root {execution.root_id} has created as many"
                " nested executions as it may (setting max_descendants)",
            )
        if problem is not None:
            out[park.task_execution_id] = (TaskStatus.FAILED, problem)
    return out


def stashed_secret_keys(execution: Execution) -> dict[str, str]:
    """Secret parameters the INSERT moved to kv (schema 0006): name -> kv key."""
    names = secret_parameters(execution.spec.parameters)
    keys = {n: secret_parameter_key(execution.id, n) for n in names}
    return {n: k for n, k in keys.items() if execution.parameters.get(n) == secret_token(k)}


def refuse_secret_parameters(
    execution: Execution, values: Mapping[str, Json]
) -> dict[str, Json] | None:
    """Validate the real values of `secret: true` parameters (`values`: kv key -> value,
    as loaded; a key absent is missing from kv), since the row only holds references.
    The error, if any, never shows a value."""
    keys = stashed_secret_keys(execution)
    if not keys:
        return None
    real = dict(execution.parameters)
    for name, key in keys.items():
        if key not in values:
            return error_of("ParameterError", f"secret parameter {name!r} is missing from kv")
        real[name] = values[key]
    try:
        validate_parameters(
            execution.spec.parameters, real, where=f"workflow {execution.spec.ref!r}"
        )
    except ParameterError as exc:
        shown = [v for n, v in real.items() if n in keys and isinstance(v, str) and v]
        return error_of("ParameterError", redact(str(exc), shown))
    return None
