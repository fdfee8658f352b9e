"""Parameter declarations -> one JSON Schema shape, and validation of actual values.

Workflows, actions and pack configs declare parameters either StackStorm-style
(`{app: {type: string, required: true}}`) or as a full JSON Schema object (recognised by
`type: object` or a top-level `properties` map). Both become
`{"type": "object", "properties": {...}, "required": [...], "additionalProperties": false}`
so everything downstream (validation, defaults, secrets, input checks) handles one shape.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError, best_match

from attune_pg.errors import ParameterError
from attune_pg.spec import fastschema
from attune_pg.spec.yaml_lines import Path, Problem, one_line

# Keys a StackStorm-style entry may carry besides plain JSON Schema keywords.
_ENTRY_KEYS = frozenset({"type", "required", "default", "enum", "items", "description", "secret"})
# JSON Schema keywords also accepted in an entry, so simple constraints need no full schema.
_SCHEMA_KEYS = frozenset(
    {
        "title", "const", "examples", "format", "pattern", "minLength", "maxLength",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
        "minItems", "maxItems", "uniqueItems", "properties", "additionalProperties",
        "minProperties", "maxProperties", "anyOf", "oneOf", "allOf", "$defs",
    }
)  # fmt: skip
IDENTIFIER = "^[A-Za-z_][A-Za-z0-9_]*$"
_TYPES = frozenset({"string", "integer", "number", "boolean", "array", "object", "null"})


def empty_schema() -> dict[str, Any]:
    return {"type": "object", "properties": {}, "required": [], "additionalProperties": False}


def is_json_schema(value: Mapping[str, Any]) -> bool:
    """A full JSON Schema object rather than a StackStorm-style map of parameters."""
    if value.get("type") == "object":
        return True
    props = value.get("properties")
    # A parameter *named* "properties" looks like {"type": "string", ...}; a schema's
    # properties map holds one schema per name.
    return isinstance(props, dict) and not isinstance(props.get("type"), str)


# Every JSON Schema keyword: a mapping using none of them, all of whose values are
# mappings, is Attune's flat property map (`output: {headline: {type: string}}`).
_KEYWORDS = frozenset(Draft202012Validator.VALIDATORS) | {
    "$schema", "$id", "$defs", "definitions", "$comment", "$anchor", "title", "description",
    "default", "examples", "deprecated", "readOnly", "writeOnly", "format",
}  # fmt: skip


def output_schema(value: Any) -> Any:
    """An `output` declaration as JSON Schema: a JSON Schema as it is, or Attune's flat
    property map (what its action files and `docs/workflows/dynamic-parameter-forms.md`
    write) as ``{type: object, properties: {...}, required: [the ones marked
    required: true]}``. Unlike parameters, other properties stay allowed."""
    if not isinstance(value, dict) or not value or set(value) & _KEYWORDS:
        return value
    if not all(isinstance(entry, dict) for entry in value.values()):
        return value
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, entry in value.items():
        entry = dict(entry)
        if isinstance(entry.get("required"), bool) and entry.pop("required"):
            required.append(name)
        properties[name] = entry
    return {"type": "object", "properties": properties, "required": required}


class _WithUnset(Mapping[str, Any]):
    """The given parameters, whose declared-but-unset names read as None by key or
    attribute (`parameters.ref_spec`) while the mapping itself holds only what was given:
    `{{ parameters }}`, `'ref_spec' in parameters` and iteration see the given ones."""

    __slots__ = ("_declared", "_values")

    def __init__(self, values: Mapping[str, Any], declared: frozenset[str]) -> None:
        self._values = values
        self._declared = declared

    def __getitem__(self, key: str) -> Any:
        if key in self._values:
            return self._values[key]
        if key in self._declared:
            return None
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def with_unset(schema: Mapping[str, Any], values: Mapping[str, Any]) -> Mapping[str, Any]:
    """`values` as templates see them: a declared parameter that was not given and has no
    default reads as null (Attune's install_packs.yaml passes `parameters.ref_spec` on
    whether or not a ref was asked for); an undeclared name stays an error, and the
    mapping as a whole (`{{ parameters }}`) is only what was given."""
    props = schema.get("properties") or {}
    unset = frozenset(name for name in props if name not in values)
    return _WithUnset(values, unset) if unset else values


def parameters_schema(value: Any, path: Path = ("parameters",)) -> dict[str, Any]:
    """Normalise a parameter declaration (or None) into the canonical JSON Schema object."""
    if value is None:
        return empty_schema()
    if not isinstance(value, dict):
        raise Problem(path, "parameters must be a mapping")
    schema = _from_json_schema(value, path) if is_json_schema(value) else _from_map(value, path)
    try:
        if not fastschema.schema_valid(schema):
            Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise Problem(
            (*path, *_schema_path(exc, value)), f"invalid schema: {one_line(exc.message, 160)}"
        ) from None
    for name, prop in schema["properties"].items():
        if isinstance(prop, dict) and "default" in prop:
            error = property_error(schema, name, prop["default"])
            if error is not None:
                where = (*path, "properties", name) if is_json_schema(value) else (*path, name)
                raise Problem((*where, "default"), f"default {describe(error)}")
    return schema


def property_error(schema: Mapping[str, Any], name: str, value: Any) -> ValidationError | None:
    """The best error of `value` as property `name` of `schema` (validated in place, so
    `$ref`s into the schema's `$defs` resolve), or None."""
    if fastschema.instance_valid(schema, {name: value}):
        return None
    errors = Draft202012Validator(schema).iter_errors({name: value})
    found: ValidationError | None = best_match(
        e for e in errors if list(e.absolute_path)[:1] == [name]
    )
    return found


def _schema_path(exc: SchemaError, value: Mapping[str, Any]) -> Path:
    # Our map form nests each parameter under "properties"; point back at the user's layout.
    parts: list[str | int] = list(exc.path)
    if parts[:1] == ["properties"] and not is_json_schema(value):
        parts = parts[1:]
    return tuple(parts)


def _from_json_schema(value: dict[str, Any], path: Path) -> dict[str, Any]:
    if value.get("type", "object") != "object":
        raise Problem((*path, "type"), "a parameters schema must have type 'object'")
    schema = copy.deepcopy(value)
    schema["type"] = "object"
    schema.setdefault("properties", {})
    schema.setdefault("required", [])
    schema.setdefault("additionalProperties", False)
    if not isinstance(schema["properties"], dict):
        raise Problem((*path, "properties"), "'properties' must be a mapping")
    return schema


def _from_map(value: dict[str, Any], path: Path) -> dict[str, Any]:
    schema = empty_schema()
    for name, entry in value.items():
        where = (*path, name)
        if not isinstance(entry, dict):
            raise Problem(where, f"parameter {name!r} must be a mapping like {{type: string}}")
        unknown = sorted(set(entry) - _ENTRY_KEYS - _SCHEMA_KEYS)
        if unknown:
            raise Problem((*where, unknown[0]), f"unknown key {unknown[0]!r} in parameter {name!r}")
        kind = entry.get("type")
        kinds = kind if isinstance(kind, list) else [kind]
        if kind is not None and not all(isinstance(k, str) and k in _TYPES for k in kinds):
            raise Problem(
                (*where, "type"),
                f"unknown type {show(kind)} (use one of {', '.join(sorted(_TYPES))})",
            )
        required = entry.get("required", False)
        if not isinstance(required, bool):
            raise Problem((*where, "required"), "'required' must be true or false")
        secret = entry.get("secret", False)
        if not isinstance(secret, bool):
            raise Problem((*where, "secret"), "'secret' must be true or false")
        prop = {k: copy.deepcopy(v) for k, v in entry.items() if k not in ("required", "secret")}
        if secret:
            prop["secret"] = True
        schema["properties"][name] = prop
        if required:
            schema["required"].append(name)
    return schema


def secret_parameters(schema: Mapping[str, Any]) -> set[str]:
    """Names of the top-level parameters marked `secret: true`."""
    props = schema.get("properties") or {}
    return {name for name, prop in props.items() if isinstance(prop, dict) and prop.get("secret")}


def apply_defaults(schema: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `values` with missing properties filled from `default`, recursing into
    nested objects whose schema declares properties."""
    out = dict(values)
    props = schema.get("properties") or {}
    for name, prop in props.items():
        if not isinstance(prop, dict):
            continue
        if name not in out and "default" in prop:
            out[name] = copy.deepcopy(prop["default"])
        if isinstance(out.get(name), dict) and isinstance(prop.get("properties"), dict):
            out[name] = apply_defaults(prop, out[name])
    return out


def validate_parameters(schema: dict[str, Any], values: Any, *, where: str) -> dict[str, Any]:
    """`values` with defaults applied, or ParameterError naming the first bad parameter."""

    def fail(detail: str) -> ParameterError:
        return ParameterError(one_line(f"{where}: {detail}" if where else detail))

    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise fail(f"parameters must be an object, got {show(values)}")
    props = schema.get("properties") or {}
    if schema.get("additionalProperties") is False:
        for name in values:
            if name not in props:
                raise fail(f"unknown parameter {name!r}")
    result = apply_defaults(schema, values)
    for name in schema.get("required") or ():
        if name not in result:
            raise fail(f"missing required parameter {name!r}")
    fast, slow = _validators(schema)
    if fast is not None and fastschema.is_valid(fast, result):
        return result
    error = best_match(slow.iter_errors(result))
    if error is not None:
        raise fail(f"{param_name(error)}: {describe(error)}")
    return result


# Validators by schema (its canonical JSON): every workflow start and every task's input
# is validated, mostly against the same few schemas. A compiled jsonschema-rs validator
# answers "valid" (a hundred times faster); the jsonschema one explains what is not.
_Validators = tuple[Any | None, Draft202012Validator]
_VALIDATORS: dict[str, _Validators] = {}
_MAX_VALIDATORS = 512
# The same dict comes back for every task of an action (the worker's catalog holds it):
# found by identity, and trusted while it still equals the copy taken when it was first
# seen (encoding the canonical key cost more than validating a small input).
_BY_OBJECT: dict[int, tuple[dict[str, Any], dict[str, Any], _Validators]] = {}


def _validators(schema: dict[str, Any]) -> _Validators:
    seen = _BY_OBJECT.get(id(schema))
    if seen is not None and seen[0] is schema and _same(seen[1], schema):
        return seen[2]
    key = json.dumps(schema, sort_keys=True, separators=(",", ":"), default=repr)
    found = _VALIDATORS.get(key)
    if found is None:
        if len(_VALIDATORS) >= _MAX_VALIDATORS:
            _VALIDATORS.clear()
        own = copy.deepcopy(schema)  # the cache must not follow later edits of the caller's dict
        found = _VALIDATORS[key] = (fastschema.compiled(own), Draft202012Validator(own))
    if len(_BY_OBJECT) >= _MAX_VALIDATORS:
        _BY_OBJECT.clear()
    _BY_OBJECT[id(schema)] = (schema, copy.deepcopy(schema), found)
    return found


def _same(a: Any, b: Any) -> bool:
    """JSON equality that tells 1 from True and 1 from 1.0 (Python's == does not)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def check_inquiry_response(inquiry_id: int, schema: dict[str, Any], response: Any) -> None:
    """Refuse an answer the inquiry's full JSON Schema does not accept (one line, naming the
    field). SQL re-checks a subset for callers without Python; the CLI and console check all."""
    problem = best_match(Draft202012Validator(schema or {}).iter_errors(response))
    if problem is not None:
        where = ".".join(str(p) for p in problem.absolute_path) or "response"
        raise ParameterError(one_line(f"inquiry {inquiry_id}: {where}: {problem.message}"))


def param_name(error: ValidationError) -> str:
    path = list(error.absolute_path)
    if not path:
        return "parameters"
    text = str(path[0])
    for part in path[1:]:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return f"parameter {text!r}"


def show(value: Any, limit: int = 60) -> str:
    """A short JSON rendering of a value for messages (YAML users know null, not None)."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    if isinstance(value, str):
        text = "'" + value.replace("'", "\\'") + "'"
    return one_line(text, limit)


def describe(error: ValidationError) -> str:
    """A short one-line version of a jsonschema error, quoting values as JSON."""
    v, inst = error.validator, error.instance
    arg: Any = error.validator_value
    if v == "type":
        kinds = arg if isinstance(arg, list) else [arg]
        return f"{show(inst)} is not of type " + " or ".join(repr(k) for k in kinds)
    if v == "enum":
        return f"{show(inst)} is not one of " + ", ".join(show(x) for x in arg)
    if v == "const":
        return f"{show(inst)} is not {show(arg)}"
    if v == "minimum":
        return f"{show(inst)} is less than the minimum of {arg}"
    if v == "exclusiveMinimum":
        return f"{show(inst)} must be greater than {arg}"
    if v == "maximum":
        return f"{show(inst)} is greater than the maximum of {arg}"
    if v == "exclusiveMaximum":
        return f"{show(inst)} must be less than {arg}"
    if v == "pattern" and arg == IDENTIFIER:
        return (
            f"{show(inst)} is not a valid name (letters, digits and '_', not starting with a digit)"
        )
    if v == "pattern":
        return f"{show(inst)} does not match {arg!r}"
    if v == "minItems":
        return "must not be empty" if arg == 1 else f"needs at least {arg} items"
    if v == "minLength":
        return "must not be empty" if arg == 1 else f"needs at least {arg} characters"
    if v in ("minProperties", "maxProperties"):
        bound = "at least" if v == "minProperties" else "at most"
        return f"{show(inst)} must have {bound} {arg} key{'s' if arg != 1 else ''}"
    if v == "required":
        missing = [k for k in arg if isinstance(inst, dict) and k not in inst]
        return f"missing required key {missing[0]!r}" if missing else one_line(error.message)
    if v == "additionalProperties" and isinstance(inst, dict):
        schema = error.schema if isinstance(error.schema, dict) else {}
        known = set(schema.get("properties", {}))
        extra = [k for k in inst if k not in known]
        return f"unknown key {extra[0]!r}" if extra else one_line(error.message)
    return one_line(error.message, 200)
