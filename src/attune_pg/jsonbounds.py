"""The JSON bounds (settings json_max_depth, json_max_bytes) checked in Python.

The same limits as `attune.json_check` in SQL, for values a worker produces or passes on:
action results, and parameters a parent hands to a nested workflow (checked before the
child is created, so a refused INSERT cannot fail a whole batch). Pure.
"""

from __future__ import annotations

import json
from typing import Any


def depth_over(value: Any, limit: int) -> bool:
    """True if some value inside `value` sits more than `limit` levels down (the root is
    level 0; an empty array or object adds no level), as SQL's `strict $.**{limit+1}`
    counts. Iterative: no recursion limit to hit; stops at the first branch too deep."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if children and depth + 1 > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def problem(value: Any, max_depth: int, max_bytes: int | None = None) -> str | None:
    """Why `value` is out of bounds (naming the setting), or None."""
    if depth_over(value, max_depth):
        return f"nested deeper than {max_depth} levels (setting json_max_depth)"
    if max_bytes is not None:
        size = len(json.dumps(value, ensure_ascii=False, default=str).encode("utf-8"))
        if size > max_bytes:
            return (
                f"{size} bytes of JSON, over the limit of {max_bytes} bytes"
                " (setting json_max_bytes)"
            )
    return None
