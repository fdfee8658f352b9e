"""Semantic checks on a normalised workflow: the rules a JSON Schema cannot express.

Each check raises the first problem as a one-line SpecError naming the file, the line, the
field path and the task. With a `Source` (from the loader) lines point at the exact key that
is wrong; without one (a spec rebuilt from JSON) they point at the task.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping, Set
from typing import Any

from attune_pg.errors import SpecError, TemplateError
from attune_pg.spec.model import RESERVED_TASK_NAMES, ActionSpec, TaskSpec, WorkflowSpec
from attune_pg.spec.normalize import Source
from attune_pg.spec.params import describe, property_error
from attune_pg.spec.yaml_lines import Document, Path, one_line
from attune_pg.template import check_syntax, is_template

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Where:
    """Maps tasks/transitions/publish entries to document paths, lines and field names."""

    def __init__(self, wf: WorkflowSpec, source: Source | None) -> None:
        self.source = source
        # Tasks sit at the same positions in the file and in the spec; the first of two
        # same-named tasks wins lookups (duplicates are reported by position).
        self.paths: dict[str, Path] = {}
        for path, task in task_positions(wf):
            self.paths.setdefault(task.name, path)
        if source is not None:
            self.doc = source.doc
            return
        # Without a source, stand in a skeleton document built from the spec itself.
        tasks = [{"name": t.name, "tasks": [{"name": s.name} for s in t.tasks]} for t in wf.tasks]
        self.doc = Document(file=wf.source_file or "", data={"tasks": tasks})
        for path, task in task_positions(wf):
            if task.line:
                self.doc.value_lines[path] = task.line

    def task(self, task: TaskSpec, *rest: str | int) -> Path:
        return (*self.paths.get(task.name, ()), *rest)

    def transition(self, task: TaskSpec, index: int, *rest: str | int) -> Path:
        found = self.source.transitions.get((task.name, index)) if self.source else None
        return (*(found or self.task(task, "next", index)), *rest)

    def publish(self, task: TaskSpec, index: int, pos: int) -> Path:
        found = self.source.publishes.get((task.name, index, pos)) if self.source else None
        return found or self.transition(task, index, "publish", pos)

    def error(self, message: str, path: Path) -> SpecError:
        return self.doc.error(message, path)


def check_workflow(wf: WorkflowSpec, source: Source | None = None) -> None:
    """Every check that needs only the workflow itself (not other actions)."""
    where = _Where(wf, source)
    _check_names(wf, where)
    _check_task_fields(wf, where)
    _check_targets(wf, where)
    _check_reachability(wf, where)
    _check_joins(wf, where)
    check_templates(wf, source)


def _check_names(wf: WorkflowSpec, where: _Where) -> None:
    seen: set[str] = set()
    for task_path, task in task_positions(wf):
        path = (*task_path, "name")
        if not NAME_RE.match(task.name):
            raise where.error(f"task name {task.name!r} must match {NAME_RE.pattern}", path)
        if task.name in RESERVED_TASK_NAMES:
            reserved = " ".join(sorted(RESERVED_TASK_NAMES))
            raise where.error(f"task name {task.name!r} is reserved ({reserved})", path)
        if task.name in seen:
            raise where.error(f"duplicate task name {task.name!r}", path)
        seen.add(task.name)


def task_positions(wf: WorkflowSpec) -> Iterator[tuple[Path, TaskSpec]]:
    """Every task with its path, in file order."""
    for i, task in enumerate(wf.tasks):
        yield ("tasks", i), task
        for j, sub in enumerate(task.tasks):
            yield ("tasks", i, "tasks", j), sub


def _check_task_fields(wf: WorkflowSpec, where: _Where) -> None:
    for task in wf.all_tasks():
        if task.kind == "parallel":
            if not task.tasks:
                raise where.error("a parallel block needs at least one sub-task", where.task(task))
        elif not task.action:
            raise where.error("an action task needs 'action'", where.task(task))
        for key in ("batch_size", "concurrency"):
            if getattr(task, key) is not None and task.with_items is None:
                raise where.error(f"{key!r} only applies with 'with_items'", where.task(task, key))


def _check_targets(wf: WorkflowSpec, where: _Where) -> None:
    top = {task.name for task in wf.tasks}
    subs = {sub.name: task.name for task in wf.tasks for sub in task.tasks}
    for task in wf.all_tasks():
        for i, transition in enumerate(task.next):
            for target in transition.do:
                path = where.transition(task, i)
                if target in subs:
                    raise where.error(
                        f"{target!r} is a sub-task of parallel block {subs[target]!r}; "
                        f"transition to the block instead",
                        path,
                    )
                if target not in top:
                    raise where.error(
                        f"transition target {target!r} does not exist{_suggest(target, top)}", path
                    )


def _check_reachability(wf: WorkflowSpec, where: _Where) -> None:
    starts = wf.start_tasks()
    if not starts:
        raise where.error(
            "no start task: every task is the target of a transition, so nothing runs first",
            where.task(wf.tasks[0]),
        )
    reached = {task.name for task in starts}
    pending = list(starts)
    while pending:
        task = pending.pop()
        for nxt in [*task.tasks, *(wf.task(n) for t in task.next for n in t.do)]:
            if nxt.name not in reached:
                reached.add(nxt.name)
                pending.append(nxt)
    for task in wf.tasks:
        if task.name not in reached:
            raise where.error(
                f"task {task.name!r} is unreachable: no path leads to it from a start task",
                where.task(task),
            )


def _check_joins(wf: WorkflowSpec, where: _Where) -> None:
    starts = {task.name for task in wf.start_tasks()}
    for task in wf.tasks:
        if task.join is None:
            continue
        path = where.task(task, "join")
        if task.name in starts:
            raise where.error(
                f"join on start task {task.name!r} can never fire: no transition leads to it", path
            )
        # A join counts distinct predecessor tasks, not transitions.
        preds = wf.predecessors(task.name)
        if isinstance(task.join, int) and task.join > len(preds):
            raise where.error(
                f"join {task.join} can never fire: only {len(preds)} "
                f"{'task leads' if len(preds) == 1 else 'tasks lead'} to {task.name!r}"
                f" ({', '.join(preds)}; a join counts each task once, however many of its"
                " transitions lead here)",
                path,
            )


def _suggest(name: str, choices: Set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- templates ---------------------------------------------------------------------------


def check_templates(wf: WorkflowSpec, source: Source | None = None) -> None:
    """Parse every template-bearing string, so syntax errors surface at load time."""
    where = _Where(wf, source)
    seen: set[str] = set()  # compiling is the slow part; repeated texts need it once
    for path, text in _template_strings(wf, where):
        if text in seen:
            continue
        try:
            check_syntax(text)
        except TemplateError as exc:
            raise where.error(f"template {one_line(str(exc), 240)}", path) from None
        seen.add(text)


def _template_strings(wf: WorkflowSpec, where: _Where) -> Iterator[tuple[Path, str]]:
    yield from _strings(wf.vars, ("vars",))
    yield from _strings(wf.output_map, ("output_map",))
    for task in wf.all_tasks():
        yield from _strings(task.input, where.task(task, "input"))
        for key in ("when", "with_items"):
            yield from _strings(getattr(task, key), where.task(task, key))
        if task.retry is not None:
            yield from _strings(task.retry.on_error, where.task(task, "retry", "on_error"))
        for i, transition in enumerate(task.next):
            yield from _strings(transition.when, where.transition(task, i, "when"))
            for j, (_name, value) in enumerate(transition.publish):
                yield from _strings(value, where.publish(task, i, j))


def _strings(value: Any, path: Path) -> Iterator[tuple[Path, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, (*path, i))


def _has_template(value: Any) -> bool:
    return any(is_template(text) for _path, text in _strings(value, ()))


# --- checks against known actions --------------------------------------------------------


def check_actions(
    wf: WorkflowSpec, known_action_refs: Set[str], source: Source | None = None
) -> None:
    """Every task's action must be a known action or workflow ref."""
    where = _Where(wf, source)
    for task in wf.all_tasks():
        if task.action is not None and task.action not in known_action_refs:
            raise where.error(
                f"unknown action {task.action!r}{_suggest(task.action, known_action_refs)}",
                where.task(task, "action"),
            )


def check_inputs(
    wf: WorkflowSpec, actions: Mapping[str, ActionSpec], source: Source | None = None
) -> None:
    """Statically check inputs against the parameter schema of each known action: unknown
    keys, missing required ones, and literal (template-free) values of the wrong shape."""
    where = _Where(wf, source)
    for task in wf.all_tasks():
        action = actions.get(task.action or "")
        if action is None:
            continue
        schema = action.parameters
        props: dict[str, Any] = schema.get("properties") or {}
        for key, value in task.input.items():
            path = where.task(task, "input", key)
            if key not in props:
                if schema.get("additionalProperties") is False:
                    raise where.error(
                        f"unknown input {key!r} for action {action.ref!r}"
                        f" (known: {', '.join(props) or 'none'})",
                        path,
                    )
                continue
            if not _has_template(value):
                error = property_error(schema, key, value)
                if error is not None:
                    raise where.error(f"{describe(error)} (action {action.ref!r})", path)
        for name in schema.get("required") or ():
            prop = props.get(name)
            has_default = isinstance(prop, dict) and "default" in prop
            if name not in task.input and not has_default:
                raise where.error(
                    f"missing required input {name!r} for action {action.ref!r}",
                    where.task(task, "input") if task.input else where.task(task, "action"),
                )
