"""Schema-valid workflow data -> the canonical frozen `WorkflowSpec`.

Every shorthand folds into `TaskSpec.next`, in the order the keys appear in the task:
- `on_success`/`on_failure`/`on_timeout` -> a transition guarded by succeeded()/failed()/
  timed_out(); `on_complete` -> an unguarded one;
- task-level `publish` -> published on success: attached to `on_success` if there is one,
  else its own `{{ succeeded() }}` transition with nothing to do;
- `decision` -> ordered branches (Transition.decision) plus an unguarded `default`, with
  `first_match=True`. Beside `publish` and `on_*` (as Attune writes it): the publish (with
  any `on_success` targets) comes first, then the decision's branches, then the other
  `on_*` in the order written; only `next` cannot be combined with a decision.
`Source` remembers which YAML path each task, transition and publish entry came from, so
later checks can point at the exact line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from attune_pg.errors import TemplateError
from attune_pg.spec import fastschema
from attune_pg.spec.model import (
    Backoff,
    CancellationPolicy,
    RetryPolicy,
    TaskKind,
    TaskSpec,
    Transition,
    WorkflowSpec,
)
from attune_pg.spec.params import output_schema, parameters_schema
from attune_pg.spec.yaml_lines import Document, Path, Problem, one_line
from attune_pg.template import check_syntax
from attune_pg.template.compose import all_of

SUCCEEDED = "{{ succeeded() }}"
FAILED = "{{ failed() }}"
TIMED_OUT = "{{ timed_out() }}"
RESULT = "{{ result() }}"

SHORTHANDS: dict[str, str | None] = {
    "on_success": SUCCEEDED,
    "on_failure": FAILED,
    "on_timeout": TIMED_OUT,
    "on_complete": None,
}
TRANSITION_KEYS = frozenset({"next", "publish", "decision", *SHORTHANDS})
# A parallel block only coordinates its sub-tasks; these belong on the sub-tasks.
_NOT_ON_PARALLEL = ("action", "input", "with_items", "batch_size", "concurrency", "retry",
                    "timeout", "delay")  # fmt: skip

Publish = tuple[tuple[str, Any], ...]


@dataclass
class Source:
    """Where the parts of a normalised workflow were written."""

    doc: Document
    transitions: dict[tuple[str, int], Path] = field(default_factory=dict)
    publishes: dict[tuple[str, int, int], Path] = field(default_factory=dict)


def normalize_workflow(doc: Document, *, ref: str) -> tuple[WorkflowSpec, Source]:
    """Fold a schema-valid document into a WorkflowSpec; raises Problem on cross-key errors."""
    data: dict[str, Any] = doc.data
    source = Source(doc)
    tasks = tuple(_task(raw, ("tasks", i), source) for i, raw in enumerate(data["tasks"]))
    output = output_schema(data.get("output"))
    if output is not None:
        _check_schema(output, ("output",))
    spec = WorkflowSpec(
        ref=ref,
        label=data["label"],
        version=data["version"],
        tasks=tasks,
        description=data.get("description", ""),
        parameters=parameters_schema(data.get("parameters")),
        output=output,
        vars=_vars(data.get("vars")),
        output_map=data.get("output_map"),
        tags=tuple(data.get("tags") or ()),
        timeout=_seconds(data.get("timeout")),
        cancellation_policy=cast(
            CancellationPolicy, data.get("cancellation_policy", "allow_finish")
        ),
        source_file=doc.file,
    )
    return spec, source


def _vars(value: Any) -> dict[str, Any]:
    """`vars` as a map, or as Attune's later files write it: a list of one-key maps."""
    if not isinstance(value, list):
        return dict(value or {})
    out: dict[str, Any] = {}
    for i, entry in enumerate(value):
        ((key, item),) = entry.items()
        if key in out:
            raise Problem(("vars", i, key), f"variable {key!r} is given twice")
        out[key] = item
    return out


def _check_schema(schema: dict[str, Any], path: Path) -> None:
    try:
        if not fastschema.schema_valid(schema):
            Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise Problem(
            (*path, *exc.path), f"invalid JSON Schema: {one_line(exc.message, 160)}"
        ) from None


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


def _int(value: Any) -> int | None:
    # JSON Schema's "integer" also admits 2.0; the model wants a real int.
    return None if value is None else int(value)


def _task(raw: dict[str, Any], path: Path, source: Source) -> TaskSpec:
    name: str = raw["name"]
    # Attune's `type: workflow` is a task whose action is a workflow: an action task here.
    kind: TaskKind = "parallel" if raw.get("type") == "parallel" else "action"
    if kind == "parallel":
        for key in _NOT_ON_PARALLEL:
            if key in raw:
                raise Problem(
                    (*path, key), f"a parallel block cannot have {key!r}; put it on its sub-tasks"
                )
        if "tasks" not in raw:
            raise Problem((*path, "type"), "a parallel block needs 'tasks' (its sub-tasks)")
    elif "tasks" in raw:
        raise Problem((*path, "tasks"), "only a block with 'type: parallel' can have sub-tasks")
    transitions, first_match = _transitions(raw, path, name, source)
    subtasks = tuple(
        _task(child, (*path, "tasks", i), source) for i, child in enumerate(raw.get("tasks", ()))
    )
    retry = raw.get("retry")
    return TaskSpec(
        name=name,
        kind=kind,
        action=raw.get("action"),
        input=dict(raw.get("input") or {}),
        when=raw.get("when"),
        with_items=raw.get("with_items"),
        batch_size=_int(raw.get("batch_size")),
        concurrency=_int(raw.get("concurrency")),
        retry=_retry(retry) if retry is not None else None,
        timeout=_seconds(raw.get("timeout")),
        delay=_seconds(raw.get("delay")),
        join="all" if raw.get("join") == "all" else _int(raw.get("join")),
        next=transitions,
        first_match=first_match,
        tasks=subtasks,
        line=source.doc.line(path),
    )


def _retry(raw: dict[str, Any]) -> RetryPolicy:
    return RetryPolicy(
        count=int(raw["count"]),
        delay=float(raw.get("delay", 0.0)),
        backoff=cast(Backoff, raw.get("backoff", "constant")),
        max_delay=_seconds(raw.get("max_delay")),
        jitter=float(raw.get("jitter", 0.0)),
        on_error=raw.get("on_error"),
    )


def _transitions(
    raw: dict[str, Any], path: Path, name: str, source: Source
) -> tuple[tuple[Transition, ...], bool]:
    out: list[Transition] = []

    def add(when: str | None, publish: Any, publish_path: Path, do: Any, origin: Path) -> None:
        index = len(out)
        source.transitions[(name, index)] = origin
        pairs = _publish(publish, publish_path, name, index, source) if publish is not None else ()
        out.append(Transition(when=when, publish=pairs, do=targets(do)))

    def shorthand(key: str, publish: Any) -> None:
        """`on_*: name | [names]`, or Attune's conditional list (see `_branches`)."""
        here = (*path, key)
        guard = SHORTHANDS[key]
        value = raw[key]
        if not is_conditional(value):
            add(guard, publish, (*path, "publish"), value, here)
            return
        if publish is not None:  # published on success, whatever the conditions say
            add(guard, publish, (*path, "publish"), None, (*path, "publish"))
        for branch in _branches(value, [] if guard is None else [guard], here):
            add(all_of(branch.guards), branch.publish, (*branch.origin, "publish"), branch.do,
                branch.origin)  # fmt: skip

    if "decision" in raw:
        if "next" in raw:
            raise Problem(
                (*path, "next"),
                "'decision' cannot be combined with 'next'; "
                "write all the transitions under 'next' instead",
            )
        # Publish on success first, so the decision's branches see what it published.
        if "on_success" in raw:
            shorthand("on_success", raw.get("publish"))
        elif "publish" in raw:
            add(SUCCEEDED, raw["publish"], (*path, "publish"), None, (*path, "publish"))
        out.extend(_decision(raw["decision"], (*path, "decision"), name, source, len(out)))
        for key in raw:
            if key in SHORTHANDS and key != "on_success":
                shorthand(key, None)
        return tuple(out), True

    for key in raw:
        here = (*path, key)
        if key == "next":
            for i, entry in enumerate(raw["next"]):
                pub = entry.get("publish")
                if not is_conditional(entry.get("do")):
                    add(entry.get("when"), pub, (*here, i, "publish"), entry.get("do"), (*here, i))
                    continue
                for branch in _branches([entry], [], (*here, i), first_origin=(*here, i)):
                    add(all_of(branch.guards), branch.publish, (*branch.origin, "publish"),
                        branch.do, branch.origin)  # fmt: skip
        elif key in SHORTHANDS:
            shorthand(key, raw.get("publish") if key == "on_success" else None)
        elif key == "publish" and "on_success" not in raw:
            add(SUCCEEDED, raw[key], here, None, here)
    return tuple(out), False


def is_conditional(value: Any) -> bool:
    """Does a transition's target hold conditional entries (`[{when: ..., do: ...}]`)?"""
    return isinstance(value, list) and any(isinstance(item, dict) for item in value)


@dataclass(frozen=True)
class _Branch:
    guards: tuple[str, ...]  # the conditions on the way here, all of which must hold
    publish: Any
    do: Any
    origin: Path  # where the entry was written


def _branches(
    value: list[Any], guards: list[str], path: Path, first_origin: Path | None = None
) -> list[_Branch]:
    """Attune's conditional targets, flattened: `on_failure: [{when: a, do: [{when: b,
    next: t}]}]` is the transition `failed() and a and b -> t`. Every entry whose
    conditions hold fires, in the order written (as `next` entries do); a plain name in
    the list is taken under the enclosing conditions alone. An entry that publishes and
    holds further entries publishes when its own conditions hold."""
    out: list[_Branch] = []
    for i, item in enumerate(value):
        here = first_origin if first_origin is not None else (*path, i)
        if isinstance(item, str):
            out.append(_Branch(tuple(guards), None, item, here))
            continue
        if "do" in item and "next" in item:
            raise Problem(here, "a conditional entry takes 'do' or 'next', not both")
        own = [*guards]
        when = item.get("when")
        if when is not None:
            _check_condition(when, (*here, "when"))
            own.append(when)
        key = "do" if "do" in item else "next"
        target = item.get(key)
        if is_conditional(target):
            if "publish" in item:
                out.append(_Branch(tuple(own), item["publish"], None, here))
            out.extend(_branches(target, own, (*here, key)))
        else:
            out.append(_Branch(tuple(own), item.get("publish"), target, here))
    return out


def _check_condition(text: str, path: Path) -> None:
    """A condition's own syntax, checked before it is joined with others (so an error
    quotes what the author wrote, at its line)."""
    try:
        check_syntax(text)
    except TemplateError as exc:
        raise Problem(path, str(exc)) from None


def _decision(
    entries: list[dict[str, Any]], path: Path, name: str, source: Source, first: int
) -> tuple[Transition, ...]:
    """The decision's branches, numbered from `first` among the task's transitions."""
    out: list[Transition] = []
    for i, entry in enumerate(entries):
        source.transitions[(name, first + i)] = (*path, i)
        if entry.get("default") not in (None, False):
            if i != len(entries) - 1:
                raise Problem((*path, i), "'default' must be the last decision entry")
            # {default: task}, or {default: true, next: task} as Attune's parser reads it
            target = entry["next"] if entry["default"] is True else entry["default"]
            out.append(Transition(when=None, do=targets(target), decision=True))
        else:
            out.append(Transition(when=entry["when"], do=targets(entry["next"]), decision=True))
    return tuple(out)


def targets(value: Any) -> tuple[str, ...]:
    """`do`/`on_*` targets: a name, a list of names, or nothing."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _publish(value: Any, path: Path, name: str, index: int, source: Source) -> Publish:
    """Publish forms -> ordered (variable, value) pairs; a bare name publishes the result."""
    pairs: list[tuple[str, Any]] = []
    paths: list[Path] = []
    if isinstance(value, str):
        pairs.append((value, RESULT))
        paths.append(path)
    elif isinstance(value, dict):
        for key, item in value.items():
            pairs.append((key, item))
            paths.append((*path, key))
    else:
        for i, entry in enumerate(value):
            ((key, item),) = entry.items()
            pairs.append((key, item))
            paths.append((*path, i, key))
    for j, where in enumerate(paths):
        source.publishes[(name, index, j)] = where
    return tuple(pairs)
