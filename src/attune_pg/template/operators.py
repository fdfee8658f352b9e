"""Guarded operations: ``* ** + %``, range(), counted loops and string-method estimates."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

from attune_pg.errors import TemplateError
from attune_pg.template.limits import (
    _BUDGET,
    MAX_INT_BITS,
    MAX_ITEMS,
    MAX_RANGE,
    MAX_STRING,
    _built,
    _limit,
    _need_len,
)
from attune_pg.template.values import _text_size

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
