"""Template values turned into plain data or text, with size and depth checked."""

from __future__ import annotations

import datetime as _dt
import decimal
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Set, ValuesView
from typing import Any, Final

from jinja2.exceptions import UndefinedError
from jinja2.runtime import Undefined
from jinja2.utils import Namespace

from attune_pg.errors import TemplateError
from attune_pg.template.limits import MAX_DEPTH, MAX_ITEMS, MAX_STRING, _limit, _need_len

# ------------------------------------------------------------------- value -> data/text

_EXTRA_SCALARS: Final = (_dt.date, _dt.time, _dt.timedelta, decimal.Decimal, uuid.UUID)
_SEQUENCES: Final = (list, tuple, range, Set, ValuesView, Iterator)


def _not_a_value(obj: Any) -> TemplateError:
    if isinstance(obj, Namespace):
        return TemplateError("a namespace() is not a value; use its attributes")
    if callable(obj):
        name = getattr(obj, "__name__", None) or getattr(obj, "name", None) or "function"
        return TemplateError(f"{name} is a function, not a value: call it, e.g. {name}()")
    return TemplateError(f"a {type(obj).__name__} object is not a value")


def _fail_undefined(obj: Undefined) -> TemplateError:
    try:
        obj._fail_with_undefined_error()
    except UndefinedError as exc:
        return TemplateError(str(exc))
    return TemplateError("undefined value")  # pragma: no cover - the call always raises


def _ordered(items: Iterable[Any]) -> Iterable[Any]:
    """Sets in a stable order (their own order depends on string hashing)."""
    if isinstance(items, set | frozenset) and len(items) <= MAX_ITEMS:
        try:
            return sorted(items)
        except TypeError:
            return items
    return items


def _to_data(value: Any, limit: int) -> Any:
    """`value` as plain data (dict, list, str, numbers, bool, None), size and depth checked.

    The size is an estimate of the JSON text (at least one character per item). Counting
    while copying stops early on values that share structure (``[[x] * 1000] * 1000``),
    so the cost is bounded by `limit`, not by the apparent size of the value.
    """
    size = 0

    def too_big() -> TemplateError:
        return _limit(f"value larger than {limit:,} characters")

    def walk(obj: Any, depth: int) -> Any:
        nonlocal size
        kind = type(obj)
        if kind is str:
            size += len(obj) + 3
            return obj
        if kind is int:
            size += obj.bit_length() // 3 + 2
            return obj
        if kind is bool or kind is float or obj is None:
            size += 6
            return obj
        if depth >= MAX_DEPTH:
            raise _limit(f"value nested deeper than {MAX_DEPTH} levels")
        if isinstance(obj, Undefined):
            raise _fail_undefined(obj)
        if isinstance(obj, str):  # subclasses (Markup): the plain string
            return walk(str.__str__(obj), depth)
        if isinstance(obj, int):  # IntEnum and friends
            return walk(int(obj), depth)
        if isinstance(obj, float):
            return walk(float(obj), depth)
        if isinstance(obj, Mapping):
            result: Any = {}
            size += 2
            for key, item in obj.items():
                if type(key) is str:
                    size += len(key) + 4
                else:
                    key = walk(key, depth + 1)
                kind = type(item)
                if kind is str:
                    size += len(item) + 3
                elif kind is int or kind is bool or kind is float or item is None:
                    size += 8
                    if kind is int and item.bit_length() > 64:
                        size += item.bit_length() // 3
                else:
                    item = walk(item, depth + 1)
                    if size > limit:
                        raise too_big()
                result[key] = item
            return result
        if isinstance(obj, _SEQUENCES):
            result = []
            size += 2
            append = result.append
            for item in _ordered(obj):
                kind = type(item)
                if kind is str:
                    size += len(item) + 3
                elif kind is int or kind is bool or kind is float or item is None:
                    size += 8
                    if kind is int and item.bit_length() > 64:
                        size += item.bit_length() // 3
                else:
                    item = walk(item, depth + 1)
                    if size > limit:
                        raise too_big()
                append(item)
            if size > limit:
                raise too_big()
            return result
        if isinstance(obj, _EXTRA_SCALARS):
            size += 32
            return obj
        raise _not_a_value(obj)

    data = walk(value, 0)
    if size > limit:
        raise too_big()
    return data


def _to_text(value: Any) -> str:
    """How a value is written into text: str for scalars, JSON for lists and dicts."""
    if isinstance(value, str):
        text = str(value) if type(value) is not str else value
    elif isinstance(value, Undefined):
        raise _fail_undefined(value)
    elif isinstance(value, bool | float) or value is None:
        text = str(value)
    elif isinstance(value, int):
        _need_len(value.bit_length() // 3, MAX_STRING, "writing an integer")
        text = str(value)
    elif isinstance(value, _EXTRA_SCALARS):
        text = str(value)
    else:
        data = _to_data(value, MAX_STRING)
        text = json.dumps(data, ensure_ascii=False, default=str)
    if len(text) > MAX_STRING:
        raise _limit(f"a value written as text is longer than {MAX_STRING:,} characters")
    return text


def _text_size(value: Any) -> int:
    """Upper estimate of len(str(value)); refuses values that cannot be written as text."""
    if isinstance(value, str):
        return len(value)
    return len(_to_text(value))


_FALSE_TEXT: Final = frozenset({"", "false", "no", "0", "none", "null"})


def truthy(value: Any) -> bool:
    """Python truthiness, except that the strings false/no/0/none/null/'' are false.

    `when`, `on_error` and transition conditions are templates; when one is not a single
    ``{{ expr }}`` its value is text, so ``{{ a }} {{ b }}``-style or quoted results such as
    "False" or "None" must not count as true just because the string is not empty.
    Case and surrounding whitespace are ignored.
    """
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE_TEXT
    return bool(value)
