"""`packs/<pack>/triggers/<name>.yaml` -> `TriggerSpec` (event types, Attune's shape).

    name: order_placed            # ref <pack>.<name>; `ref:`, if given, must equal it
    description: An order was placed
    parameters: {...}             # JSON Schema (or parameter map) of a trigger instance's
                                  # settings, i.e. a rule's trigger_params
    output: {type: object, ...}   # JSON Schema of the event payload

`type`, `tags`, `examples` and `enabled` (Attune's informational keys) are accepted and
not used. The payload is checked by `attune.emit_event` in SQL, so `output` may only
use the JSON Schema keywords that function checks (plus annotations); anything else
would be a check that silently never happens, and is refused here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from attune_pg.engine.timers import TIMER_TRIGGERS
from attune_pg.spec.loader import read_source, validate_document
from attune_pg.spec.params import empty_schema, parameters_schema
from attune_pg.spec.yaml_lines import Document, Problem, load_yaml, one_line
from attune_pg.spec.yaml_lines import Path as DocPath

_NAME = "^[A-Za-z0-9_][A-Za-z0-9_-]*$"

TRIGGER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": _NAME},
        "ref": {"type": "string"},
        "label": {"type": "string"},
        "description": {"type": "string"},
        "parameters": {"type": "object"},
        "output": {"type": "object"},
        "type": {"type": "string"},
        "enabled": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "examples": {"type": "array"},
    },
}
_VALIDATOR = Draft202012Validator(TRIGGER_SCHEMA)

# What attune.json_schema_error (schema/0004) checks, and annotations it may ignore.
SQL_CHECKED = frozenset(
    {
        "type", "enum", "const", "required", "properties", "additionalProperties", "items",
        "minItems", "maxItems", "minLength", "maxLength", "pattern", "minimum", "maximum",
        "exclusiveMinimum", "exclusiveMaximum",
    }
)  # fmt: skip
ANNOTATIONS = frozenset(
    {"description", "title", "default", "examples", "format", "$comment", "deprecated",
     "readOnly", "writeOnly", "$schema"}
)  # fmt: skip


@dataclass(frozen=True)
class TriggerSpec:
    ref: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=empty_schema)
    output: dict[str, Any] | None = None
    timer: str | None = None  # interval | cron | datetime for the core timers
    source_file: str | None = None

    @property
    def pack(self) -> str:
        return self.ref.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.ref.split(".", 1)[1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_trigger(file: Path, pack: str) -> TriggerSpec:
    doc = load_yaml(read_source(file), file=str(file))
    if not isinstance(doc.data, dict):
        raise doc.error(f"{file.name} must be a mapping")
    validate_document(doc, _VALIDATOR)
    data: dict[str, Any] = doc.data
    ref = f"{pack}.{data['name']}"
    if data["name"] != file.stem:
        raise doc.error(f"name {data['name']!r} must equal the file name {file.stem!r}", ("name",))
    if "ref" in data and data["ref"] != ref:
        raise doc.error(f"ref {data['ref']!r} must be {ref!r} (<pack>.<name>)", ("ref",))
    try:
        parameters = parameters_schema(data.get("parameters"), ("parameters",))
    except Problem as problem:
        raise doc.problem(problem) from None
    output = data.get("output")
    if output is not None:
        _check_output(doc, output)
    return TriggerSpec(
        ref=ref,
        description=data.get("description", ""),
        parameters=parameters,
        output=output,
        timer=TIMER_TRIGGERS.get(ref),
        source_file=str(file),
    )


def _check_output(doc: Document, output: dict[str, Any]) -> None:
    try:
        Draft202012Validator.check_schema(output)
    except SchemaError as exc:
        raise doc.error(
            f"invalid JSON Schema: {one_line(exc.message, 160)}", ("output", *exc.path)
        ) from None
    _sql_checkable(doc, output, ("output",))


def _sql_checkable(doc: Document, schema: Any, path: DocPath) -> None:
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        here = (*path, key)
        if key not in SQL_CHECKED | ANNOTATIONS:
            raise doc.error(
                f"JSON Schema keyword {key!r} is not checked by attune.emit_event; an event"
                f" payload schema may use {', '.join(sorted(SQL_CHECKED))}",
                here,
            )
        if key == "properties" and isinstance(value, dict):
            for name, sub in value.items():
                _sql_checkable(doc, sub, (*here, name))
        elif key == "items":
            if not isinstance(value, dict):
                raise doc.error("'items' must be one schema (a mapping) here", here)
            _sql_checkable(doc, value, here)
        elif key == "additionalProperties" and not isinstance(value, bool):
            raise doc.error("'additionalProperties' must be true or false here", here)
