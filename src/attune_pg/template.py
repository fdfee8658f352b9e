"""Templates: Jinja2 in a sandbox, type-preserving rendering and the scopes (DESIGN §4.2).

Rendering rules
- Only strings containing ``{{`` or ``{%`` are templates; everything else is returned
  unchanged. `render` walks dicts (values, and keys that are templates), lists and tuples.
- A string that is exactly one ``{{ expr }}`` (whitespace around it allowed) evaluates to the
  expression's own value: list, dict, int, float, bool, None or str. Tuples, ranges and
  generators (``x | select(...)``) become lists, so the value is plain JSON-like data.
- Mixed text renders to a str. Where a value turns into text (``{{ }}`` inside text, the
  ``~`` operator) lists and dicts are written as JSON, other values with ``str()``.
  A function or macro used as a value (``{{ succeeded }}`` without parentheses) is an error.
- Dot access on a dict prefers the key: ``result().items`` is the ``items`` key when the
  result has one (plain Jinja would return the dict's method).
- Every failure is one `TemplateError` line: ``<where>: '<template>': <reason>``, where
  ``where`` names the field (e.g. ``task 'build' input.cmd``). Secret values collected in
  the scope's `SecretSink` are masked in the reason.

Scopes (`build_scope`): ``parameters``, ``vars``, ``pack.config``, ``system``, ``kv``,
``task``/``tasks``, the transition functions and, in with-items, ``item`` and ``index``.

Limits (`LIMITS`), so that a template cannot exhaust a worker:
- ``range()`` yields at most 10,000 numbers;
- ``*``, ``+``, ``%``, ``~``, string methods and filters may not build a string over
  1,000,000 characters or a list over 1,000,000 items; integers stay under 65,536 bits;
- rendered text is at most 1,000,000 characters; a single-expression value at most about
  16,000,000 characters of JSON and 200 levels deep;
- one `render` call runs at most 1,000,000 loop iterations and calls, and builds at most
  50,000,000 characters/items in total;
- deep recursion (macros calling themselves) becomes a TemplateError.
What is not bounded: the time of one regular expression (``regex_*`` filters) on a
pathological pattern, because the module reads no clock; patterns come from workflow files.

Sandbox: Jinja's ImmutableSandboxedEnvironment (no ``_``/dunder attributes, no mutation of
lists and dicts) and, in addition, ``str.format``/``format_map`` are refused (use ``%`` or
the ``format`` filter). Removed built-ins: ``lipsum`` (global), ``random`` (filter: renders
must be deterministic), ``urlize``, ``xmlattr``, ``pprint`` (HTML/debug helpers with
unbounded output). Added filters: see `FILTERS`.

Pure module: no I/O, no clock, no threads.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import functools
import inspect
import json
import math
import operator
import posixpath
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Set, ValuesView
from contextvars import ContextVar
from dataclasses import dataclass
from enum import Enum
from itertools import chain
from typing import Any, Final, NamedTuple

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Template, TemplateExpression
from jinja2.exceptions import (
    SecurityError,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2.exceptions import (
    TemplateError as JinjaTemplateError,
)
from jinja2.filters import make_attrgetter
from jinja2.runtime import Context, LoopContext, Macro, StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, missing, pass_environment

from attune_pg.errors import TemplateError
from attune_pg.redact import KVLookup, SecretAwareKV, SecretSink

__all__ = [
    "FILTERS",
    "LIMITS",
    "MISSING",
    "CurrentTask",
    "Filter",
    "KVLookup",
    "Scope",
    "SecretAwareKV",
    "SecretSink",
    "build_scope",
    "check_syntax",
    "is_template",
    "render",
    "truthy",
]

# --------------------------------------------------------------------------- limits

MAX_RANGE: Final = 10_000  # numbers one range() may yield
MAX_STRING: Final = 1_000_000  # characters of a string an operation builds / of rendered text
MAX_ITEMS: Final = 1_000_000  # items of a list an operation builds
MAX_INT_BITS: Final = 65_536  # size of an integer * or ** may build
MAX_VALUE_SIZE: Final = 16_000_000  # approx. JSON characters of a single-expression value
MAX_DEPTH: Final = 200  # nesting of a value turned into data or text
MAX_STEPS: Final = 1_000_000  # loop iterations + calls (a macro call counts 10) per render()
MAX_PRODUCED: Final = 50_000_000  # characters/items built in one render() call
MAX_JSON_INDENT: Final = 16
_MACRO_CALL_COST: Final = 10  # a macro call costs about ten loop iterations

LIMITS: Final[Mapping[str, int]] = {
    "range": MAX_RANGE,
    "string_length": MAX_STRING,
    "list_length": MAX_ITEMS,
    "int_bits": MAX_INT_BITS,
    "value_size": MAX_VALUE_SIZE,
    "depth": MAX_DEPTH,
    "steps": MAX_STEPS,
    "produced": MAX_PRODUCED,
}

_CACHE_SIZE: Final = 2048  # compiled templates kept (LRU, keyed by text)
_ERROR_TEXT: Final = 200  # characters of the template quoted in an error
_ERROR_REASON: Final = 500


def _limit(message: str) -> TemplateError:
    return TemplateError(f"template limit: {message}")


class _Budget:
    """What one top-level `render` call may spend (shared by nested values)."""

    __slots__ = ("produced", "steps")

    def __init__(self) -> None:
        self.steps = 0
        self.produced = 0

    def step(self, cost: int = 1) -> None:
        self.steps += cost
        if self.steps > MAX_STEPS:
            raise _limit(f"more than {MAX_STEPS:,} steps (loop iterations and calls)")

    def produce(self, size: int) -> None:
        self.produced += size
        if self.produced > MAX_PRODUCED:
            raise _limit(f"built more than {MAX_PRODUCED:,} characters/items in total")


_BUDGET: ContextVar[_Budget | None] = ContextVar("attune_pg_template_budget", default=None)


def _step(cost: int = 1) -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.step(cost)


def _built(value: Any, what: str) -> Any:
    """Check the size of a string or list an operation just built and charge it."""
    if isinstance(value, str | bytes):
        size, cap, unit = len(value), MAX_STRING, "characters"
    elif isinstance(value, list | tuple | dict):
        size, cap, unit = len(value), MAX_ITEMS, "items"
    else:
        return value
    if size > cap:
        raise _limit(f"{what} would build {size:,} {unit} (at most {cap:,})")
    budget = _BUDGET.get()
    if budget is not None:
        budget.produce(size)
    return value


def _need_len(size: int, cap: int, what: str, unit: str = "characters") -> None:
    """Refuse before building: `size` is an upper estimate of what `what` would build."""
    if size > cap:
        raise _limit(f"{what} would build about {size:,} {unit} (at most {cap:,})")


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


# --------------------------------------------------------------- guarded operations


def _checked_mul(left: Any, right: Any) -> Any:
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, str | bytes | list | tuple) and isinstance(times, int):
            is_text = isinstance(seq, str | bytes)
            cap = MAX_STRING if is_text else MAX_ITEMS
            _need_len(len(seq) * max(times, 0), cap, "'*'", "characters" if is_text else "items")
            return _built(seq * times, "'*'")
    if isinstance(left, int) and isinstance(right, int):
        _need_len(left.bit_length() + right.bit_length(), MAX_INT_BITS, "'*'", "bits")
    return left * right


def _checked_pow(left: Any, right: Any) -> Any:
    if (
        isinstance(left, int)
        and isinstance(right, int)
        and right > 0
        and abs(left) > 1
        and math.log2(abs(left)) * right > MAX_INT_BITS
    ):
        raise _limit(f"'**' would build an integer over {MAX_INT_BITS:,} bits")
    return left**right


def _checked_add(left: Any, right: Any) -> Any:
    if isinstance(left, str | bytes | list | tuple) and isinstance(
        right, str | bytes | list | tuple
    ):
        is_text = isinstance(left, str | bytes)
        cap = MAX_STRING if is_text else MAX_ITEMS
        _need_len(len(left) + len(right), cap, "'+'", "characters" if is_text else "items")
        return _built(operator.add(left, right), "'+'")
    return left + right


# printf-style conversion specs: %[(key)][flags][width][.precision][length]type
_PERCENT_SPEC = re.compile(r"%(\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


def _checked_percent(fmt: str, args: Any) -> str:
    """``fmt % args`` with the result size estimated (and refused) before formatting."""
    specs = list(_PERCENT_SPEC.finditer(fmt))
    widest = 0
    named = False
    for spec in specs:
        named = named or spec.group(1) is not None
        for number in (spec.group(2), spec.group(3)):
            if number == "*":
                raise TemplateError("'*' widths are not allowed in % formatting")
            if number:
                widest = max(widest, int(number) if len(number) <= 9 else MAX_STRING + 1)
    if isinstance(args, tuple):
        largest = max((_text_size(a) for a in args), default=0)
    elif isinstance(args, Mapping) and named:
        largest = max((_text_size(a) for a in args.values()), default=0)
    else:
        largest = _text_size(args)
    _need_len(len(fmt) + len(specs) * (widest + largest + 32), MAX_STRING, "'%' formatting")
    return _built(fmt % args, "'%' formatting")  # type: ignore[no-any-return]


def _checked_mod(left: Any, right: Any) -> Any:
    if isinstance(left, str):
        return _checked_percent(left, right)
    return left % right


_BINOPS: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    "*": _checked_mul,
    "**": _checked_pow,
    "+": _checked_add,
    "%": _checked_mod,
}


def _safe_range(*args: int) -> range:
    rng = range(*args)
    try:
        length = len(rng)
    except OverflowError:
        length = MAX_RANGE + 1
    if length > MAX_RANGE:
        raise _limit(f"range() of {length:,} numbers (at most {MAX_RANGE:,})")
    return rng


def _counted(iterable: Iterable[Any]) -> Iterator[Any]:
    """What every ``{% for %}`` iterates: the items of `iterable`, one step each."""
    budget = _BUDGET.get()
    for item in iterable:
        if budget is not None:
            budget.step()
        yield item


def _guard_text_method(name: str, text: str | bytes, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Estimate before calling the string methods that can multiply their input."""
    what = f"{type(text).__name__}.{name}()"
    if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
        _need_len(args[0], MAX_STRING, what)
    elif name == "expandtabs":
        tab = args[0] if args and isinstance(args[0], int) else 8
        count = text.count(b"\t" if isinstance(text, bytes) else "\t")  # type: ignore[arg-type]
        _need_len(len(text) + count * tab, MAX_STRING, what)
    elif name == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        if isinstance(old, str | bytes) and isinstance(new, str | bytes):
            hits = text.count(old) if old else len(text) + 1  # type: ignore[arg-type]
            if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
                hits = min(hits, args[2])
            _need_len(len(text) + hits * len(new), MAX_STRING, what)
    elif name == "join" and args:
        items = list(args[0])
        _need_len(len(items), MAX_ITEMS, what, "items")
        total = len(text) * max(len(items) - 1, 0)
        total += sum(len(i) if isinstance(i, str | bytes) else 0 for i in items)
        _need_len(total, MAX_STRING, what)
        return (items, *args[1:])
    elif name == "translate" and args and isinstance(args[0], Mapping):
        widest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        _need_len(len(text) * widest, MAX_STRING, what)
    return args


# ---------------------------------------------------------------------------- filters


class Filter(NamedTuple):
    """A filter attune_pg adds to Jinja's built-ins: the function and a one-line doc."""

    func: Callable[..., Any]
    doc: str


def _f_to_json(value: Any, indent: int | None = None, sort_keys: bool = False) -> str:
    if indent is not None and not 0 <= indent <= MAX_JSON_INDENT:
        raise TemplateError(f"to_json indent must be between 0 and {MAX_JSON_INDENT}")
    data = _to_data(value, MAX_STRING)
    return json.dumps(data, ensure_ascii=False, indent=indent, sort_keys=sort_keys, default=str)


def _f_from_json(text: Any) -> Any:
    if not isinstance(text, str | bytes):
        raise TemplateError(f"from_json needs a string, not {type(text).__name__}")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise TemplateError(f"from_json: invalid JSON: {exc}") from None


def _as_list(value: Any, what: str) -> list[Any]:
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise TemplateError(f"{what} needs a list, not {type(value).__name__}")
    return list(value)


def _f_append(seq: Any, item: Any) -> list[Any]:
    items = _as_list(seq, "append")
    _need_len(len(items) + 1, MAX_ITEMS, "append", "items")
    return [*items, item]


def _f_prepend(seq: Any, item: Any) -> list[Any]:
    items = _as_list(seq, "prepend")
    _need_len(len(items) + 1, MAX_ITEMS, "prepend", "items")
    return [item, *items]


def _f_combine(first: Any, *others: Any) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in (first, *others):
        if not isinstance(part, Mapping):
            raise TemplateError(f"combine needs dicts, not {type(part).__name__}")
        merged.update(part)
    return merged


def _regex(pattern: Any, ignorecase: bool) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise TemplateError(f"a regular expression must be a string, not {type(pattern).__name__}")
    try:
        return re.compile(pattern, re.IGNORECASE if ignorecase else 0)
    except re.error as exc:
        raise TemplateError(f"invalid regular expression {pattern!r}: {exc}") from None


def _f_regex_match(value: Any, pattern: str, ignorecase: bool = False) -> bool:
    return _regex(pattern, ignorecase).match(_to_text(value)) is not None


def _f_regex_search(value: Any, pattern: str, ignorecase: bool = False) -> Any:
    found = _regex(pattern, ignorecase).search(_to_text(value))
    if found is None:
        return None
    groups = found.groups()
    if not groups:
        return found.group(0)
    return groups[0] if len(groups) == 1 else list(groups)


_GROUP_REF = re.compile(r"\\g<(\w+)>|\\(\d{1,2})")


def _f_regex_replace(
    value: Any, pattern: str, replacement: str = "", ignorecase: bool = False, count: int = 0
) -> str:
    regex = _regex(pattern, ignorecase)
    text = _to_text(value)
    if not isinstance(replacement, str):
        raise TemplateError("regex_replace needs a string replacement")
    refs = [m.group(1) or m.group(2) for m in _GROUP_REF.finditer(replacement)]
    total = len(text)

    def expand(match: re.Match[str]) -> str:
        nonlocal total
        size = len(replacement)
        for ref in refs:
            group = match.group(int(ref) if ref.isdigit() else ref)
            size += len(group or "")
        total += size
        _need_len(total, MAX_STRING, "regex_replace")
        return match.expand(replacement)

    return regex.sub(expand, text, count=count)


def _f_basename(path: Any) -> str:
    return posixpath.basename(_to_text(path))


def _f_dirname(path: Any) -> str:
    return posixpath.dirname(_to_text(path))


FILTERS: Final[Mapping[str, Filter]] = {
    "to_json": Filter(_f_to_json, "value as JSON text (to_json(indent=2, sort_keys=true))"),
    "from_json": Filter(_f_from_json, "parse JSON text into a value"),
    "append": Filter(_f_append, "a new list with the item added at the end"),
    "prepend": Filter(_f_prepend, "a new list with the item added at the front"),
    "combine": Filter(_f_combine, "a new dict merging the given dicts (later keys win)"),
    "regex_match": Filter(_f_regex_match, "true if the pattern matches at the start (re.match)"),
    "regex_search": Filter(
        _f_regex_search, "first match: whole text, its one group, or list of groups; else none"
    ),
    "regex_replace": Filter(
        _f_regex_replace, "replace matches: regex_replace(pattern, replacement, count=0)"
    ),
    "basename": Filter(_f_basename, "last component of a /-separated path"),
    "dirname": Filter(_f_dirname, "a /-separated path without its last component"),
}

_REMOVED_FILTERS: Final = frozenset({"random", "urlize", "xmlattr", "pprint"})

# Built-in filters that turn their input into text: the input must be writable as text
# within the limits, and the result is a built string.
_TEXT_FILTERS: Final = frozenset(
    {
        "capitalize", "center", "e", "escape", "forceescape", "format", "indent", "lower",
        "upper", "title", "trim", "striptags", "string", "truncate", "wordwrap", "wordcount",
        "urlencode", "replace", "tojson", "join", "filesizeformat",
    }
)  # fmt: skip
# Built-in filters that build lists.
_LIST_FILTERS: Final = frozenset({"batch", "slice", "list", "sum"})


def _pre_checks(name: str, a: Mapping[str, Any]) -> None:
    """Estimates for the built-in filters that can multiply their input."""
    if name == "center" and isinstance(a.get("width"), int):
        _need_len(a["width"], MAX_STRING, "center")
    elif name == "indent":
        text, width = str(a["s"]), a.get("width", 4)
        per_line = width if isinstance(width, int) else len(str(width))
        _need_len(len(text) + (text.count("\n") + 1) * per_line, MAX_STRING, "indent")
    elif name == "replace":
        text, old, new = str(a["s"]), str(a["old"]), str(a["new"])
        hits = text.count(old) if old else len(text) + 1
        if isinstance(a.get("count"), int) and a["count"] >= 0:
            hits = min(hits, a["count"])
        _need_len(len(text) + hits * len(new), MAX_STRING, "replace")
    elif name == "wordwrap":
        text = str(a["s"])
        wrap = a.get("wrapstring") or "\n"
        lines = min(len(text) + 1, len(text.split()) + text.count("\n") + 1)
        lines += len(text) // max(int(a.get("width", 79)), 1)
        _need_len(len(text) + lines * len(str(wrap)), MAX_STRING, "wordwrap")
    elif name in ("batch", "slice"):
        count = a.get("linecount", a.get("slices"))
        if isinstance(count, int):
            _need_len(count, MAX_ITEMS, name, "items")
    elif name == "tojson":
        indent = a.get("indent")
        if indent is not None and not (isinstance(indent, int) and 0 <= indent <= MAX_JSON_INDENT):
            raise TemplateError(f"tojson indent must be between 0 and {MAX_JSON_INDENT}")


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(func)
    value_at = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0
    # Jinja's async-aware wrappers take a pass argument their signature does not show.
    first = next(iter(signature.parameters), "")
    bind_from = 0 if first in ("environment", "eval_ctx", "context") else value_at

    def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = signature.bind(*args[bind_from:], **kwargs).arguments
        return {**bound, **bound.get("kwargs", {})}

    text_filter = name in _TEXT_FILTERS
    builds = text_filter or name in _LIST_FILTERS

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if text_filter and len(args) > value_at:
            value = args[value_at]
            if name == "join" and not isinstance(value, str):
                items = list(value)
                _need_len(len(items), MAX_ITEMS, "join", "items")
                sep = kwargs.get("d", args[value_at + 1] if len(args) > value_at + 1 else "")
                size = sum(_text_size(i) for i in items) + len(str(sep)) * len(items)
                _need_len(size, MAX_STRING, "join")
                args = (*args[:value_at], items, *args[value_at + 1 :])
            elif not isinstance(value, str | Iterator):  # an iterator prints as a short repr
                _text_size(value)
            _pre_checks(name, bind(args, kwargs))
        elif name in ("batch", "slice"):
            _pre_checks(name, bind(args, kwargs))
        result = func(*args, **kwargs)
        return _built(result, f"the {name} filter") if builds else result

    return guarded


@pass_environment
def _f_sum(
    environment: Any, iterable: Any, attribute: str | int | None = None, start: Any = 0
) -> Any:
    """Jinja's sum, without the quadratic cost of adding lists one by one."""
    items: Iterable[Any] = iterable
    if attribute is not None:
        items = map(make_attrgetter(environment, attribute), items)
    if isinstance(start, list | tuple):
        parts = list(items)
        if all(isinstance(p, type(start)) for p in parts):
            total = len(start) + sum(len(p) for p in parts)
            _need_len(total, MAX_ITEMS, "sum", "items")
            joined = list(chain(start, *parts))
            return joined if isinstance(start, list) else tuple(joined)
        items = parts
    return sum(items, start)


def _f_format(value: Any, *args: Any, **kwargs: Any) -> str:
    """Jinja's format filter (``'%s-%s' | format(a, b)``) with the size estimated first."""
    if args and kwargs:
        raise TemplateError("format takes positional or keyword arguments, not both")
    return _checked_percent(_to_text(value), kwargs or args)


# ------------------------------------------------------------------------ environment


class _Undefined(StrictUndefined):
    """StrictUndefined whose message lists the keys a dict does have."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        obj, name = self._undefined_obj, self._undefined_name
        if self._undefined_hint or obj is missing or not isinstance(obj, Mapping):
            return super()._undefined_message
        keys = sorted(str(k) for k in obj)
        shown = ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "")
        return f"no key {name!r} (keys: {shown or 'none'})"


class _CodeGenerator(CodeGenerator):
    """Counts every loop iteration and checks the size of every ``~``."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        lineno = node.lineno
        counted = nodes.Call(
            nodes.EnvironmentAttribute("attune_counted", lineno=lineno),
            [node.iter],
            [],
            None,
            None,
            lineno=lineno,
        )
        wrapped = nodes.For(
            node.target, counted, node.body, node.else_, node.test, node.recursive, lineno=lineno
        )
        counted.set_environment(self.environment)
        super().visit_For(wrapped, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.attune_tilde((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _checked_concat(parts: Iterable[str]) -> str:
    """Join the output of a macro, block or call: bounded like rendered text."""
    pieces = list(parts)
    size = sum(len(p) for p in pieces)
    _need_len(size, MAX_STRING, "the output of a block or macro")
    return "".join(pieces)


class _Environment(ImmutableSandboxedEnvironment):
    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset(_BINOPS)
    concat = staticmethod(_checked_concat)

    def __init__(self) -> None:
        super().__init__(
            undefined=_Undefined,
            autoescape=False,
            finalize=_to_text,
            keep_trailing_newline=True,
            extensions=["jinja2.ext.loopcontrols"],
        )
        self.globals["range"] = _safe_range
        self.globals.pop("lipsum", None)
        for name in _REMOVED_FILTERS:
            self.filters.pop(name, None)
        self.filters["sum"] = _f_sum
        self.filters["format"] = _f_format
        for name, func in list(self.filters.items()):
            self.filters[name] = _guard_filter(name, func)
        for name, spec in FILTERS.items():
            self.filters[name] = _guard_filter(name, spec.func)

    # Called from generated code (see _CodeGenerator).
    @staticmethod
    def attune_counted(iterable: Iterable[Any]) -> Iterator[Any]:
        return _counted(iterable)

    @staticmethod
    def attune_tilde(parts: tuple[Any, ...]) -> str:
        texts = [_to_text(p) for p in parts]
        _need_len(sum(len(t) for t in texts), MAX_STRING, "'~'")
        return _built("".join(texts), "'~'")  # type: ignore[no-any-return]

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        return _BINOPS[operator](left, right)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr in ("format", "format_map"):
            return False
        return super().is_safe_attribute(obj, attr, value)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        return None  # str.format is refused by is_safe_attribute instead

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _step(_MACRO_CALL_COST if isinstance(obj, Macro) else 1)
        if isinstance(obj, LoopContext) and args:  # the recursive loop(...) call
            args = (_counted(args[0]), *args[1:])
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, str | bytes):
            name = getattr(obj, "__name__", "")
            args = _guard_text_method(name, owner, args)
            result = super().call(context, obj, *args, **kwargs)
            return _built(result, f"{type(owner).__name__}.{name}()")
        return super().call(context, obj, *args, **kwargs)


_ENV: Final = _Environment()


# ----------------------------------------------------------------------- compiling


class _Compiled(NamedTuple):
    expression: TemplateExpression | None  # the string is exactly one {{ expr }}
    template: Template | None  # mixed text


_SINGLE = re.compile(r"\s*\{\{(.*)\}\}\s*", re.DOTALL)


def _single_expression(text: str, tree: nodes.Template) -> str | None:
    """The source of the expression when `text` is exactly one ``{{ expr }}``."""
    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
        return None
    parts = [
        n
        for n in tree.body[0].nodes
        if not (isinstance(n, nodes.TemplateData) and not n.data.strip())
    ]
    if len(parts) != 1 or isinstance(parts[0], nodes.TemplateData):
        return None
    match = _SINGLE.fullmatch(text)
    if match is None:
        return None
    inner = match.group(1)
    if inner[:1] in ("-", "+"):  # {{- and {{+ whitespace control
        inner = inner[1:]
    if inner[-1:] == "-":  # -}}
        inner = inner[:-1]
    return inner


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _compile(text: str) -> _Compiled:
    tree = _ENV.parse(text)
    source = _single_expression(text, tree)
    if source is not None:
        return _Compiled(_ENV.compile_expression(source, undefined_to_none=False), None)
    return _Compiled(None, _ENV.from_string(tree))


def _quote(text: str) -> str:
    if len(text) > _ERROR_TEXT:
        return repr(text[:_ERROR_TEXT]) + "..."
    return repr(text)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TemplateSyntaxError):
        line = f" (line {exc.lineno})" if exc.lineno and exc.lineno > 1 else ""
        return f"syntax error: {exc.message}{line}"
    if isinstance(exc, RecursionError):
        return "recursion too deep (a macro or recursive loop that does not end?)"
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, TemplateError | SecurityError | JinjaTemplateError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _error(
    where: str | None, text: str, exc: BaseException, secrets: SecretSink | None
) -> TemplateError:
    reason = " ".join(_reason(exc).split())
    if secrets:
        reason = secrets.redact(reason)
    if len(reason) > _ERROR_REASON:
        reason = reason[:_ERROR_REASON] + "..."
    prefix = f"{where}: " if where else ""
    return TemplateError(f"{prefix}{_quote(text)}: {reason}")


# ------------------------------------------------------------------------ public API


def is_template(value: object) -> bool:
    """True for a str containing ``{{`` or ``{%`` (only those are rendered)."""
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def check_syntax(text: str, *, where: str | None = None) -> None:
    """Raise TemplateError (naming `where` and the template) if `text` does not compile.

    Compiling also finds unknown filters and tests. The result is cached for `render`.
    """
    if not is_template(text):
        return
    try:
        _compile(text)
    except Exception as exc:
        raise _error(where, text, exc, None) from None


def render(value: Any, scope: Mapping[str, Any], *, where: str) -> Any:
    """Render every template inside `value` (see the module doc for the rules).

    `where` names the field for error messages (``task 'build' input.cmd``); nested
    values extend it (``.key``, ``[0]``). The limits apply to the whole call.
    """
    if _BUDGET.get() is not None:
        return _render(value, scope, where)
    token = _BUDGET.set(_Budget())
    try:
        return _render(value, scope, where)
    finally:
        _BUDGET.reset(token)


def _render(value: Any, scope: Mapping[str, Any], where: str) -> Any:
    if isinstance(value, str):
        return _render_str(value, scope, where) if is_template(value) else value
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            new_key = key
            if is_template(key):
                new_key = _to_text(_render_str(key, scope, f"{where} key {key!r}"))
                if new_key in out or (new_key != key and new_key in value):
                    raise TemplateError(f"{where}: key {key!r} renders to a duplicate {new_key!r}")
            out[new_key] = _render(item, scope, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        items = [_render(item, scope, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    return value


def _render_str(text: str, scope: Mapping[str, Any], where: str) -> Any:
    secrets = getattr(scope, "secrets", None)
    try:
        compiled = _compile(text)
        if compiled.expression is not None:
            return _to_data(compiled.expression(scope), MAX_VALUE_SIZE)
        assert compiled.template is not None
        pieces: list[str] = []
        size = 0
        for piece in compiled.template.generate(scope):
            size += len(piece)
            _need_len(size, MAX_STRING, "the rendered text")
            pieces.append(piece)
        return "".join(pieces)
    except Exception as exc:
        raise _error(
            where, text, exc, secrets if isinstance(secrets, SecretSink) else None
        ) from None


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


# ------------------------------------------------------------------------------ scopes


class _Missing(Enum):
    MISSING = "MISSING"


MISSING: Final = _Missing.MISSING
"""Default of `build_scope`'s item/index: the names are absent unless given."""


@dataclass(frozen=True, slots=True)
class CurrentTask:
    """The task whose transitions are being evaluated.

    `status` is its final status; `failed()` is true for ``failed`` and for ``timed_out``
    (a timeout is a failure; `timed_out()` tells them apart).
    """

    status: str
    result: Any = None
    error: Any = None


class Scope(dict[str, Any]):
    """The names a template sees (a plain dict), plus the secret sink, which it does not."""

    secrets: SecretSink | None = None


class _StrictMapping(Mapping[str, Any]):
    """A read-only mapping whose missing keys are errors, not undefined values."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def _missing(self, key: str) -> TemplateError:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        try:
            return self._wrap(key, self._data[key])
        except (KeyError, TypeError):
            raise self._missing(key) from None

    def _wrap(self, key: str, value: Any) -> Any:
        return value

    def __contains__(self, key: object) -> bool:
        try:
            return key in self._data
        except TypeError:
            return False

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self:
            return default
        return self[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def _names(self) -> str:
        names = sorted(self._data)
        return ", ".join(names[:20]) + (", ..." if len(names) > 20 else "") or "none"


class _TaskView(_StrictMapping):
    """``task.<name>``: result, status, error (+ results, failed_items, total_count)."""

    __slots__ = ("_name",)

    def __init__(self, name: str, data: Mapping[str, Any]) -> None:
        super().__init__(data)
        self._name = name

    def _missing(self, key: str) -> TemplateError:
        return TemplateError(f"task {self._name!r} has no {key!r} (it has: {self._names()})")


class _TaskMap(_StrictMapping):
    """``task`` / ``tasks``: an unknown task name is an error naming it."""

    __slots__ = ()

    def _missing(self, key: str) -> TemplateError:
        return TemplateError(f"task {key!r} has not run (tasks that have: {self._names()})")

    def _wrap(self, key: str, value: Any) -> Any:
        return _TaskView(key, value) if isinstance(value, Mapping) else value


class _KVScope:
    """``kv`` in templates: `get(key, default)` and `get_secret(key)`."""

    __slots__ = ("_kv",)

    def __init__(self, kv: KVLookup | None) -> None:
        self._kv = kv

    def _store(self) -> KVLookup:
        if self._kv is None:
            raise TemplateError("kv is not available here")
        return self._kv

    def get(self, key: str, default: Any = None) -> Any:
        return self._store().get(key, default)

    def get_secret(self, key: str) -> Any:
        return self._store().get_secret(key)

    def __repr__(self) -> str:
        return "<kv>"


def _transition_functions(current: CurrentTask | None) -> dict[str, Callable[[], Any]]:
    def need(name: str) -> CurrentTask:
        if current is None:
            raise TemplateError(f"{name}() is only available in transitions")
        return current

    def succeeded() -> bool:
        return need("succeeded").status == "succeeded"

    def failed() -> bool:
        return need("failed").status in ("failed", "timed_out")

    def timed_out() -> bool:
        return need("timed_out").status == "timed_out"

    def result() -> Any:
        return need("result").result

    def error() -> Any:
        return need("error").error

    return {f.__name__: f for f in (succeeded, failed, timed_out, result, error)}


def build_scope(
    *,
    parameters: Mapping[str, Any],
    vars: Mapping[str, Any],
    tasks: Mapping[str, Mapping[str, Any]],
    pack_config: Mapping[str, Any] | None,
    system: Mapping[str, Any],
    kv: KVLookup | None,
    current: CurrentTask | None = None,
    item: Any = MISSING,
    index: Any = MISSING,
    secrets: SecretSink | None = None,
) -> Scope:
    """The names templates see (DESIGN §4.2).

    - ``parameters``, ``vars``, ``system``: the mappings as given (read-only in templates);
      ``pack``: ``{"config": pack_config}``.
    - ``task`` and ``tasks``: task name -> ``{result, status, error}`` (with-items tasks also
      ``results``, ``failed_items``, ``total_count``); an unknown name raises "task 'x' has
      not run" (test with ``'x' in task``).
    - ``kv``: ``kv.get(key, default)``, ``kv.get_secret(key)``; with `secrets`, every secret
      read is recorded there (and masked in error messages). Without a store, using kv is an
      error "kv is not available here".
    - ``succeeded() failed() timed_out() result() error()``: about `current`; without it they
      raise "succeeded() is only available in transitions".
    - ``item`` and ``index`` only when given.
    """
    store: KVLookup | None = kv
    if store is not None and secrets is not None:
        store = SecretAwareKV(store, secrets)
    task_map = _TaskMap(tasks)
    scope = Scope(
        parameters=parameters,
        vars=vars,
        pack={"config": pack_config if pack_config is not None else {}},
        system=system,
        kv=_KVScope(store),
        task=task_map,
        tasks=task_map,
        **_transition_functions(current),
    )
    scope.secrets = secrets
    if item is not MISSING:
        scope["item"] = item
    if index is not MISSING:
        scope["index"] = index
    return scope
