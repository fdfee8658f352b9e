"""Filters: the ones attune_pg adds (`FILTERS`) and the guards around Jinja's built-ins."""

from __future__ import annotations

import functools
import inspect
import json
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import chain
from typing import Any, Final, NamedTuple

from jinja2 import filters as jinja_filters
from jinja2.filters import make_attrgetter
from jinja2.utils import pass_environment, pass_eval_context

from attune_pg.errors import TemplateError
from attune_pg.template.limits import (
    MAX_ITEMS,
    MAX_JSON_INDENT,
    MAX_STRING,
    _built,
    _need_len,
)
from attune_pg.template.operators import _checked_percent
from attune_pg.template.values import _text_size, _to_data, _to_text, truthy

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


def _f_append(seq: Any, item: Any) -> Any:
    if isinstance(seq, str):  # Attune: `path | append('/logs')`
        text = _to_text(item)
        _need_len(len(seq) + len(text), MAX_STRING, "append")
        return seq + text
    items = _as_list(seq, "append")
    _need_len(len(items) + 1, MAX_ITEMS, "append", "items")
    return [*items, item]


def _f_prepend(seq: Any, item: Any) -> Any:
    if isinstance(seq, str):  # Attune: `host | prepend('https://')`
        text = _to_text(item)
        _need_len(len(seq) + len(text), MAX_STRING, "prepend")
        return text + seq
    items = _as_list(seq, "prepend")
    _need_len(len(items) + 1, MAX_ITEMS, "prepend", "items")
    return [item, *items]


def _f_slice(
    value: Any,
    slices: Any = None,
    fill_with: Any = None,
    *,
    start: Any = None,
    end: Any = None,
    stop: Any = None,
    step: Any = None,
) -> Any:
    """Attune's (Tera's) `slice(start=1, end=3)`: Python slicing of a list or string.
    Called positionally (`slice(3)`) it is Jinja's: split into that many columns."""
    if slices is not None and (start, end, stop, step) == (None, None, None, None):
        return [list(column) for column in jinja_filters.sync_do_slice(value, slices, fill_with)]
    for name, bound in (("start", start), ("end", end), ("stop", stop), ("step", step)):
        if bound is not None and (not isinstance(bound, int) or isinstance(bound, bool)):
            raise TemplateError(f"slice {name} must be an integer, not {bound!r}")
    if step == 0:
        raise TemplateError("slice step cannot be zero")
    seq = value if isinstance(value, str) else _as_list(value, "slice")
    return seq[start : end if end is not None else stop : step]


def _f_batch(value: Any, linecount: Any = None, fill_with: Any = None, *, size: Any = None) -> Any:
    """Jinja's batch, also as Attune writes it: `batch(size=100)`."""
    count = size if size is not None else linecount
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise TemplateError(f"batch needs a size of at least 1, not {count!r}")
    _need_len(count, MAX_ITEMS, "batch", "items")
    return [list(chunk) for chunk in jinja_filters.do_batch(value, count, fill_with)]


def _lookup(item: Any, path: str) -> tuple[bool, Any]:
    for part in path.split("."):
        if not isinstance(item, Mapping) or part not in item:
            return False, None
        item = item[part]
    return True, item


def _f_filter(seq: Any, *args: Any, **match: Any) -> list[Any]:
    """Attune's `filter(enabled=true)`: the items whose keys equal every given value.
    Tera's `filter(attribute='a.b', value=v)` also works (no value: the attribute is
    truthy)."""
    if args or not match:
        raise TemplateError("filter takes keyword arguments: filter(key=value, ...)")
    items = _as_list(seq, "filter")
    if set(match) <= {"attribute", "value"} and "attribute" in match:
        path = match["attribute"]
        if not isinstance(path, str):
            raise TemplateError("filter attribute must be a string")
        out = []
        for item in items:
            found, got = _lookup(item, path)
            if found and (got == match["value"] if "value" in match else bool(got)):
                out.append(item)
        return out
    return [
        item
        for item in items
        if all(_lookup(item, key) == (True, want) for key, want in match.items())
    ]


@pass_eval_context
def _f_join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None, *,
            sep: Any = None) -> str:  # fmt: skip
    """Jinja's join, also with Tera's keyword: `join(sep=', ')`."""
    return jinja_filters.sync_do_join(eval_ctx, value, d if sep is None else sep, attribute)


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
    "append": Filter(_f_append, "a new list with the item added at the end (strings: joined)"),
    "prepend": Filter(_f_prepend, "a new list with the item added at the front (strings: joined)"),
    "slice": Filter(_f_slice, "slice(start=1, end=3): part of a list or string; slice(n): columns"),
    "batch": Filter(_f_batch, "batch(size=n) or batch(n): the list in chunks of n"),
    "filter": Filter(_f_filter, "filter(key=value): the items whose keys equal the values"),
    "join": Filter(_f_join, "join(', ') or join(sep=', '): the items as one text"),
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
    "truthy": Filter(
        truthy, "true or false as a `when` judges it (the text false/no/0/none/null is false)"
    ),
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
