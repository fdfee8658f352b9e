"""An inquiry's answer form, derived from its JSON Schema, and the answer read back from it.

An object schema with simple properties becomes one input per property: a checkbox for a
boolean, a select for an `enum`, a number field for integer/number, a text field for a
string, a comma-separated text field for an array of strings or numbers. Anything else (no
properties, nested objects, `oneOf` …) gets one JSON text area for the whole answer, so every
schema can be answered. The answer is then checked against the full schema on the server
(spec.params.check_inquiry_response) before `attune.respond_inquiry` sees it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from attune_pg.errors import ParameterError

Widget = Literal["checkbox", "select", "number", "text", "list", "json"]
RAW_FIELD = "__json__"  # the name of the JSON text area


@dataclass(frozen=True)
class Field:
    name: str
    widget: Widget
    label: str
    required: bool = False
    choices: tuple[str, ...] = ()  # select: JSON texts of the enum values
    default: str = ""  # the initial value as the widget shows it
    step: str = "any"  # number: "1" for integers
    help: str = ""


def fields(schema: Mapping[str, Any]) -> list[Field]:
    """The inputs for `schema`; a single JSON field when it has no simple shape."""
    props = schema.get("properties")
    if schema.get("type", "object") != "object" or not isinstance(props, dict) or not props:
        return [_raw(schema)]
    required = set(schema.get("required") or ())
    out = []
    for name, prop in props.items():
        field = _field(str(name), prop if isinstance(prop, dict) else {}, name in required)
        if field is None:
            return [_raw(schema)]
        out.append(field)
    return out


def _raw(schema: Mapping[str, Any]) -> Field:
    return Field(
        RAW_FIELD,
        "json",
        "Answer (JSON)",
        required=True,
        default=json.dumps(schema.get("default", {})),
        help="Any JSON value the schema accepts.",
    )


def _field(name: str, prop: Mapping[str, Any], required: bool) -> Field | None:
    label = str(prop.get("title") or prop.get("description") or name)
    help_text = str(prop.get("description") or "") if prop.get("title") else ""
    default = prop.get("default")
    kind = prop.get("type")
    if "enum" in prop and isinstance(prop["enum"], list):
        choices = tuple(json.dumps(v) for v in prop["enum"])
        initial = json.dumps(default) if default is not None else ""
        return Field(name, "select", label, required, choices, initial, help=help_text)
    if kind == "boolean":
        initial = "on" if default else ""
        return Field(name, "checkbox", label, False, default=initial, help=help_text)
    if kind in ("integer", "number"):
        initial = "" if default is None else str(default)
        step = "1" if kind == "integer" else "any"
        return Field(name, "number", label, required, default=initial, step=step, help=help_text)
    if kind == "string":
        initial = "" if default is None else str(default)
        return Field(name, "text", label, required, default=initial, help=help_text)
    items = prop.get("items")
    item_kind = items.get("type") if isinstance(items, dict) else None
    if kind == "array" and item_kind in ("string", "integer", "number"):
        initial = ", ".join(str(v) for v in default) if isinstance(default, list) else ""
        hint = help_text or "Comma-separated values."
        return Field(name, "list", label, required, default=initial, help=hint)
    return None


def answer(schema: Mapping[str, Any], form: Mapping[str, str]) -> Any:
    """The answer the submitted `form` means, typed as the schema asks (not yet validated)."""
    wanted = fields(schema)
    if len(wanted) == 1 and wanted[0].widget == "json":
        text = form.get(RAW_FIELD, "")
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParameterError(f"answer: not valid JSON ({exc.msg})") from None
    props: Mapping[str, Any] = schema.get("properties") or {}
    out: dict[str, Any] = {}
    for field in wanted:
        raw = form.get(field.name)
        if field.widget == "checkbox":
            out[field.name] = raw is not None
            continue
        if raw is None or raw.strip() == "":
            continue  # missing: the schema's `required` decides
        out[field.name] = _typed(field, raw.strip(), props.get(field.name) or {})
    return out


def _typed(field: Field, raw: str, prop: Mapping[str, Any]) -> Any:
    if field.widget == "select":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise ParameterError(f"{field.name}: not one of the choices") from None
    if field.widget == "number":
        return _number(field.name, raw, integer=prop.get("type") == "integer")
    if field.widget == "list":
        kind = (prop.get("items") or {}).get("type")
        parts = [p.strip() for p in raw.split(",") if p.strip()]
        if kind in ("integer", "number"):
            return [_number(field.name, p, integer=kind == "integer") for p in parts]
        return parts
    return raw


def _number(name: str, raw: str, *, integer: bool) -> int | float:
    try:
        return int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ParameterError(f"{name}: {raw!r} is not {kind}") from None
