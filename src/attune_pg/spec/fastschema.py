"""A fast yes for valid documents; the slow path only explains the invalid ones.

Registration checks every workflow file against workflow.schema.json, every parameter
schema against the JSON Schema meta-schema and every default against its schema. With the
`jsonschema` package that was three quarters of the time of registering a pack (about 10 ms
a file). `jsonschema-rs` (a compiled validator of the same Draft 2020-12) answers "valid?"
about a hundred times faster, so it answers first; only when it says no does the caller run
`jsonschema` for the located, explained message it always gave. The outcome is the same
either way: jsonschema-rs never decides that a document is invalid, and it is not trusted
where the two could disagree (regular expressions: `pattern` uses Python's `re` at run
time, and Python's meta-schema check compiles them).

Every function returns False when jsonschema-rs is unavailable (an exotic platform without
its wheel), which only means "take the slow path".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

jsonschema_rs: Any
try:
    import jsonschema_rs
except ImportError:  # pragma: no cover - the dependency is installed everywhere we test
    jsonschema_rs = None

# Validators of our own schemas (workflow, pack, action files), compiled once each. Keyed
# by id(): the schemas are module-level constants that live as long as the process.
_compiled: dict[int, Any] = {}

_REGEX_KEYS = frozenset({"pattern", "patternProperties", "$dynamicRef", "$dynamicAnchor"})


def document_valid(schema: Mapping[str, Any], document: Any) -> bool:
    """True if `document` is certainly valid against one of our own file schemas."""
    if jsonschema_rs is None:
        return False
    try:
        validator = _compiled.get(id(schema))
        if validator is None:
            validator = _compiled[id(schema)] = jsonschema_rs.Draft202012Validator(dict(schema))
        return bool(validator.is_valid(document))
    except Exception:  # e.g. an integer too large for it: the slow path decides
        return False


def schema_valid(schema: Any) -> bool:
    """True if a user's JSON Schema (parameters, output) is certainly valid Draft 2020-12."""
    if jsonschema_rs is None or _uses_regex(schema):
        return False
    try:
        return bool(jsonschema_rs.meta.is_valid(schema))
    except Exception:  # anything it cannot take (e.g. a huge integer): the slow path decides
        return False


def instance_valid(schema: Any, instance: Any) -> bool:
    """True if `instance` certainly satisfies a (valid) user schema."""
    if jsonschema_rs is None or _uses_regex(schema):
        return False
    try:
        return bool(jsonschema_rs.Draft202012Validator(schema).is_valid(instance))
    except Exception:
        return False


def compiled(schema: Any) -> Any | None:
    """A compiled validator of a (valid) user schema whose "valid" can be trusted, or None
    (no jsonschema-rs, a schema with regular expressions, one it cannot compile)."""
    if jsonschema_rs is None or _uses_regex(schema):
        return None
    try:
        return jsonschema_rs.Draft202012Validator(schema)
    except Exception:
        return None


def is_valid(validator: Any, instance: Any) -> bool:
    """True if a validator from `compiled` certainly accepts `instance`."""
    try:
        return bool(validator.is_valid(instance))
    except Exception:  # e.g. an integer too large for it: the slow path decides
        return False


def _uses_regex(value: Any) -> bool:
    """Does the schema hold a regular expression (or dynamic refs, rare and subtle)?"""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if not _REGEX_KEYS.isdisjoint(node):
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False
