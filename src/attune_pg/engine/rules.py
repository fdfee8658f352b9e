"""Does a rule fire on an event, and with which parameters? Pure.

Templates see `event` (`id`, `trigger_ref` (also `trigger`, as Attune's template
resolver names it), `payload`, `created`), `trigger` (the same object, as Attune's docs
write `trigger.payload.x`), `rule` (`ref`), `pack.config` (the rule's pack) and, as
Attune's rule docs write them, `system.timestamp` (the event's `created`),
`system.rule.ref` and `system.event.id`. Conditions use the workflow template engine:
an `expression` must be truthy; the legacy `criteria` must all hold. A condition or an
action_params template that fails to evaluate does not fire the rule: the verdict carries
the error, which the enforcement records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from attune_pg import template
from attune_pg.errors import TemplateError
from attune_pg.spec.rules import RuleSpec

Json = Any
_MISSING = object()


@dataclass(frozen=True)
class EventView:
    id: int
    trigger_ref: str
    payload: dict[str, Json]
    created: str  # ISO-8601, DB clock

    def as_dict(self) -> dict[str, Json]:
        return {
            "id": self.id,
            "trigger_ref": self.trigger_ref,
            "trigger": self.trigger_ref,
            "payload": self.payload,
            "created": self.created,
        }


@dataclass(frozen=True)
class Verdict:
    outcome: Literal["fire", "skip", "error"]
    parameters: dict[str, Json] | None = None
    error: dict[str, Json] | None = None


def _scope(rule: RuleSpec, event: EventView, pack_config: Mapping[str, Json]) -> template.Scope:
    view = event.as_dict()
    system = {"timestamp": event.created, "rule": {"ref": rule.ref}, "event": {"id": event.id}}
    return template.Scope(
        event=view,
        trigger=view,
        rule={"ref": rule.ref},
        pack={"config": dict(pack_config)},
        system=system,
    )


def _field(payload: Mapping[str, Json], path: str) -> Json:
    node: Json = payload
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _criterion(payload: Mapping[str, Json], criterion: Mapping[str, Json]) -> bool:
    """equals / not_equals / contains on a payload field (dotted path). A missing field
    equals nothing and contains nothing, so `not_equals` holds for it."""
    value = _field(payload, criterion["field"])
    wanted = criterion.get("value")
    op = criterion["operator"]
    if op == "equals":
        return value is not _MISSING and value == wanted
    if op == "not_equals":
        return value is _MISSING or value != wanted
    if isinstance(value, str):
        return isinstance(wanted, str) and wanted in value
    if isinstance(value, list | dict):
        return wanted in value
    return False


def evaluate(rule: RuleSpec, event: EventView, pack_config: Mapping[str, Json]) -> Verdict:
    scope = _scope(rule, event, pack_config)
    conditions = rule.conditions or {}
    try:
        if "expression" in conditions:
            value = template.render(
                conditions["expression"], scope, where=f"rule {rule.ref!r} conditions"
            )
            if not template.truthy(value):
                return Verdict("skip")
        elif "criteria" in conditions and not all(
            _criterion(event.payload, c) for c in conditions["criteria"]
        ):
            return Verdict("skip")
    except TemplateError as exc:
        return Verdict("error", error={"type": "ConditionError", "message": str(exc)})
    try:
        params = template.render(
            rule.action_params, scope, where=f"rule {rule.ref!r} action_params"
        )
    except TemplateError as exc:
        return Verdict("error", error={"type": "TemplateError", "message": str(exc)})
    if not isinstance(params, dict):
        message = f"rule {rule.ref!r} action_params must render to a mapping"
        return Verdict("error", error={"type": "TemplateError", "message": message})
    return Verdict("fire", parameters=params)
