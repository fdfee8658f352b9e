"""`packs/<pack>/rules/<name>.yaml` -> `RuleSpec` (Attune's rule shape).

    ref: shop.big_orders          # optional: must be <pack>.<file name>
    label: Big orders             # default: the ref
    description: ...
    trigger_ref: shop.order_placed
    trigger_params: {}            # settings of this rule's trigger instance (a timer's interval)
    conditions:                   # missing or empty: always
      expression: "event.payload.total > 100 and 'vip' in event.payload.tags"
    # or the legacy list, all of which must hold:
    #   - {field: total, operator: equals|not_equals|contains, value: 100}
    action_ref: shop.ship         # a workflow or a plain action
    action_params:                # templates over event.* and pack.config.*
      order_id: "{{ event.payload.id }}"
    enabled: true

As Attune's docs write rules (docs/examples/timer-types-example.yaml), `trigger: {type,
parameters}` may stand for trigger_ref/trigger_params and `action: {ref, parameters}` for
action_ref/action_params; and when `ref` is given, `name` is a free-form name (those
examples call `monitoring.health_check` "health_check_rule").

`check_rule` does the checks that need the other definitions: the trigger and action
exist, `trigger_params` fit the trigger's parameters (and a timer can be scheduled),
`action_params` fit the action's schema; every template compiles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from attune_pg.engine.timers import TimerError, check
from attune_pg.errors import ParameterError, SpecError, TemplateError
from attune_pg.spec.loader import read_source, validate_document
from attune_pg.spec.model import ActionSpec
from attune_pg.spec.params import describe, property_error, validate_parameters
from attune_pg.spec.triggers import TriggerSpec
from attune_pg.spec.yaml_lines import Document, load_yaml
from attune_pg.template import check_syntax, is_template

OPERATORS = ("equals", "not_equals", "contains")

RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    # trigger_ref or trigger, action_ref or action: checked by `_one_of`
    "additionalProperties": False,
    "properties": {
        "trigger": {
            "type": "object",
            "required": ["type"],
            "additionalProperties": False,
            "properties": {
                "type": {"type": "string", "pattern": r"^[^.\s]+\.[^\s]+$"},
                "parameters": {"type": "object"},
            },
            "description": "Attune's docs: {type: trigger_ref, parameters: trigger_params}",
        },
        "action": {
            "type": "object",
            "required": ["ref"],
            "additionalProperties": False,
            "properties": {
                "ref": {"type": "string", "pattern": r"^[^.\s]+\.[^\s]+$"},
                "parameters": {"type": "object"},
            },
            "description": "Attune's docs: {ref: action_ref, parameters: action_params}",
        },
        "ref": {"type": "string"},
        "name": {"type": "string"},
        "label": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "trigger_ref": {"type": "string", "pattern": r"^[^.\s]+\.[^\s]+$"},
        "trigger_params": {"type": "object"},
        "conditions": {
            "anyOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"expression": {"type": "string", "minLength": 1}},
                },
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["field", "operator"],
                        "additionalProperties": False,
                        "properties": {
                            "field": {"type": "string", "minLength": 1},
                            "operator": {"enum": list(OPERATORS)},
                            "value": {},
                        },
                    },
                },
            ],
            "description": "{expression: '...'} or a list of {field, operator, value}",
        },
        "action_ref": {"type": "string", "pattern": r"^[^.\s]+\.[^\s]+$"},
        "action_params": {"type": "object"},
        "enabled": {"type": "boolean"},
    },
}
_VALIDATOR = Draft202012Validator(RULE_SCHEMA)


@dataclass(frozen=True)
class RuleSpec:
    ref: str
    trigger_ref: str
    action_ref: str
    label: str = ""
    description: str = ""
    trigger_params: dict[str, Any] = field(default_factory=dict)
    # Normalised: None (always), {"expression": ...} or {"criteria": [...]}.
    conditions: dict[str, Any] | None = None
    action_params: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True
    source_file: str | None = None

    @property
    def pack(self) -> str:
        return self.ref.split(".", 1)[0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> RuleSpec:
        return RuleSpec(**data)


def expression_template(expression: str) -> str:
    """A condition is a bare expression (`event.payload.total > 100`) or a template."""
    return expression if is_template(expression) else "{{ " + expression + " }}"


def load_rule(file: Path, pack: str) -> tuple[RuleSpec, Document]:
    doc = load_yaml(read_source(file), file=str(file))
    if not isinstance(doc.data, dict):
        raise doc.error(f"{file.name} must be a mapping")
    _one_of(doc, ("trigger_ref", "trigger"), ("action_ref", "action"))
    validate_document(doc, _VALIDATOR)
    data: dict[str, Any] = doc.data
    ref = f"{pack}.{file.stem}"
    # With a ref, `name` is free-form (Attune's docs); without, it names the file.
    for key in ("ref",) if "ref" in data else ("name",):
        given = data.get(key)
        if given is not None and given not in (ref, file.stem):
            raise doc.error(f"{key} {given!r} must be {ref!r} (<pack>.<file name>)", (key,))
    trigger = data.get("trigger") or {}
    action = data.get("action") or {}
    conditions = data.get("conditions")
    normalized: dict[str, Any] | None = None
    if isinstance(conditions, dict) and conditions.get("expression"):
        text = expression_template(conditions["expression"])
        _syntax(doc, text, ("conditions", "expression"))
        normalized = {"expression": text}
    elif isinstance(conditions, list) and conditions:
        normalized = {"criteria": conditions}
    params_at = ("action", "parameters") if "action" in data else ("action_params",)
    params = (action.get("parameters") if "action" in data else data.get("action_params")) or {}
    for path, text in _strings(params, params_at):
        _syntax(doc, text, path)
    rule = RuleSpec(
        ref=ref,
        trigger_ref=data.get("trigger_ref") or trigger["type"],
        action_ref=data.get("action_ref") or action["ref"],
        label=data.get("label") or ref,
        description=data.get("description", ""),
        trigger_params=(data.get("trigger_params") or trigger.get("parameters")) or {},
        conditions=normalized,
        action_params=params,
        enabled=data.get("enabled", True),
        source_file=str(file),
    )
    return rule, doc


_NESTED: dict[str, tuple[str, ...]] = {
    "trigger_ref": ("trigger", "type"),
    "trigger_params": ("trigger", "parameters"),
    "action_ref": ("action", "ref"),
    "action_params": ("action", "parameters"),
}


class _Located:
    """`doc.error` at a flat path (`action_params.x`), pointed at the nested key instead
    when the rule is written in Attune's docs' shape (`action.parameters.x`)."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc

    def error(self, message: str, path: tuple[str | int, ...] = ()) -> SpecError:
        head = path[0] if path else None
        if isinstance(head, str) and head in _NESTED and head not in self.doc.data:
            nested = _NESTED[head]
            if nested[0] in self.doc.data:
                path = (*nested, *path[1:])
        return self.doc.error(message, path)


def check_rule(
    rule: RuleSpec,
    raw: Document,
    triggers: Mapping[str, TriggerSpec],
    actions: Mapping[str, ActionSpec],
) -> RuleSpec:
    """The rule with its trigger_params' defaults applied, or a located SpecError."""
    doc = _Located(raw)
    trigger = triggers.get(rule.trigger_ref)
    if trigger is None:
        raise doc.error(f"unknown trigger {rule.trigger_ref!r}", ("trigger_ref",))
    try:
        params = validate_parameters(trigger.parameters, rule.trigger_params, where="")
    except ParameterError as exc:
        raise doc.error(f"{exc} (trigger {trigger.ref!r})", ("trigger_params",)) from None
    if trigger.timer is not None:
        try:
            check(trigger.timer, params)  # type: ignore[arg-type]
        except TimerError as exc:
            raise doc.error(exc.message, ("trigger_params", exc.field)) from None
    action = actions.get(rule.action_ref)
    if action is None:
        raise doc.error(f"unknown action or workflow {rule.action_ref!r}", ("action_ref",))
    _check_action_params(rule, doc, action)
    return RuleSpec(**{**rule.to_dict(), "trigger_params": params})


def _check_action_params(rule: RuleSpec, doc: _Located, action: ActionSpec) -> None:
    schema = action.parameters
    props: dict[str, Any] = schema.get("properties") or {}
    for key, value in rule.action_params.items():
        path = ("action_params", key)
        if key not in props:
            if schema.get("additionalProperties") is False:
                raise doc.error(
                    f"unknown parameter {key!r} for {action.ref!r}"
                    f" (known: {', '.join(props) or 'none'})",
                    path,
                )
            continue
        if not any(is_template(text) for _, text in _strings(value, ())):
            error = property_error(schema, key, value)
            if error is not None:
                raise doc.error(f"{describe(error)} ({action.ref!r})", path)
    for name in schema.get("required") or ():
        prop = props.get(name)
        if name not in rule.action_params and not (isinstance(prop, dict) and "default" in prop):
            raise doc.error(
                f"missing required parameter {name!r} for {action.ref!r}",
                ("action_params",) if rule.action_params else ("action_ref",),
            )


def _one_of(doc: Document, *pairs: tuple[str, str]) -> None:
    """trigger_ref or trigger (and action_ref or action): one of each, said in one line."""
    data = doc.data
    for flat, nested in pairs:
        if flat in data and nested in data:
            raise doc.error(f"give {flat!r} or {nested!r}, not both", (nested,))
        if flat not in data and nested not in data:
            raise doc.error(f"missing required key {flat!r} (or {nested!r})")


def _syntax(doc: Document, text: str, path: tuple[str | int, ...]) -> None:
    try:
        check_syntax(text, where=None)
    except TemplateError as exc:
        raise doc.error(str(exc), path) from None


def _strings(value: Any, path: tuple[str | int, ...]) -> list[tuple[tuple[str | int, ...], str]]:
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(v, (*path, str(k)))]
    if isinstance(value, list):
        return [s for i, v in enumerate(value) for s in _strings(v, (*path, i))]
    return []


__all__ = ["OPERATORS", "RuleSpec", "SpecError", "check_rule", "expression_template", "load_rule"]
