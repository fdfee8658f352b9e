"""Template limits: the caps, the per-render budget and the size checks (see the package doc)."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Final

from attune_pg.errors import TemplateError

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
