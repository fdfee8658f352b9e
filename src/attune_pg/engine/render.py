"""Everything the conductor renders: the template scope, with-items lists, task inputs
and the final output. Pure, like the conductor; errors are TemplateError or
ParameterError naming the task and the field."""

from __future__ import annotations

import hashlib
import itertools
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import jsonschema

from attune_pg import template
from attune_pg.engine.state import Execution, TaskState
from attune_pg.errors import TemplateError
from attune_pg.spec.model import TaskSpec, WorkflowSpec
from attune_pg.spec.params import validate_parameters

Json = Any
ScopeFor = Callable[..., dict[str, Json]]


def task_views(latest: Mapping[str, TaskState]) -> dict[str, dict[str, Json]]:
    """`task.<name>` for templates: the latest iteration of every task that ran."""
    tasks: dict[str, dict[str, Json]] = {}
    for name, state in latest.items():
        view: dict[str, Json] = {
            "status": state.status,
            "result": state.result,
            "error": state.error,
        }
        if state.items_total is not None and isinstance(state.result, dict):
            view["results"] = state.result.get("results")
            view["failed_items"] = state.result.get("failed_items")
            view["total_count"] = state.result.get("total_count")
        tasks[name] = view
    return tasks


def system_view(execution: Execution, now: float, attempt: int) -> dict[str, Json]:
    return {
        "execution_id": execution.id,
        "workflow_ref": execution.spec.ref,
        # Integer epoch seconds, as Attune's docs use it: `system.timestamp - vars.start`
        # is a whole number of seconds.
        "timestamp": int(now),
        "started_at": execution.started_at,
        "depth": execution.depth,
        "attempt": attempt,
        "identity": {"login": execution.login},
    }


def uuid_source(execution_id: int, now: float) -> Callable[[], str]:
    """`uuid()` for one advance: version-4-shaped ids derived from the execution, the
    database clock of the transaction and a counter, so the pure conductor stays
    deterministic (the same snapshot and events give the same ids) while two
    transactions (never at the same microsecond on one execution) give different ones."""
    counter = itertools.count()

    def next_uuid() -> str:
        seed = f"attune-uuid:{execution_id}:{now!r}:{next(counter)}"
        raw = bytearray(hashlib.sha256(seed.encode()).digest()[:16])
        raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
        return str(uuid.UUID(bytes=bytes(raw)))

    return next_uuid


def items(spec: TaskSpec, scope_for: ScopeFor, limit: int | None = None) -> list[Json] | None:
    """The with-items list (chunked by batch_size), or None for a plain task. More than
    `limit` items (setting max_items) is an error naming the limit."""
    if spec.with_items is None:
        return None
    where = f"task {spec.name!r} with_items"
    value = template.render(spec.with_items, scope_for(), where=where)
    if not isinstance(value, list):
        raise TemplateError(
            f"{where}: must render to a list, got {type(value).__name__}: {str(value)[:80]!r}"
        )
    if limit is not None and len(value) > limit:
        raise TemplateError(
            f"{where}: {len(value):,} items, over the limit of {limit:,} (setting max_items)"
        )
    if spec.batch_size:
        size = spec.batch_size
        return [value[i : i + size] for i in range(0, len(value), size)]
    return value


def inputs(
    spec: TaskSpec, item_list: list[Json] | None, schema: dict[str, Json], scope_for: ScopeFor
) -> list[dict[str, Json]]:
    """One validated input per item (or one for a plain task), in item order. An input
    without templates is rendered without a scope: building one costs more than the rest
    of a plain task's dispatch (docs/scaling.md, lever 4)."""
    where = f"task {spec.name!r} input"
    if not template.has_templates(spec.input):
        scope_for = _no_scope
    if item_list is None:
        rendered = template.render(spec.input, scope_for(), where=where)
        return [validate_parameters(schema, rendered, where=where)]
    out = []
    for index, item in enumerate(item_list):
        here = f"{where} (item {index})"
        rendered = template.render(spec.input, scope_for(item=item, index=index), where=here)
        out.append(validate_parameters(schema, rendered, where=here))
    return out


def _no_scope(**names: Json) -> dict[str, Json]:
    return {}


def output(spec: WorkflowSpec, scope_for: ScopeFor) -> tuple[Json, dict[str, Json] | None]:
    """The rendered output_map, checked against `output`: (output, error or None)."""
    value: Json = None
    if spec.output_map is not None:
        scope = scope_for() if template.has_templates(spec.output_map) else {}
        try:
            value = template.render(
                spec.output_map, scope, where=f"workflow {spec.ref!r} output_map"
            )
        except TemplateError as exc:
            return None, {"type": "TemplateError", "message": str(exc)}
    if spec.output is not None:
        problem = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(spec.output).iter_errors(value)
        )
        if problem is not None:
            path = ".".join(str(p) for p in problem.absolute_path) or "(root)"
            message = f"output {path}: {problem.message}"[:500]
            return value, {"type": "OutputInvalid", "message": message}
    return value, None
