"""JSON from the database that a worker cannot decode does not stop its batch.

psycopg decodes json/jsonb with `json.loads`, which raises RecursionError on a deeply
nested value: one such row in a batch would fail the whole batch on every turn (a
poison pill). `install(conn)` makes the connection decode such a value into an
`Undecodable` instead; the store checks for it where rows become work and fails that
one execution or task with an error naming the cause (quarantine). Values that enter
are bounded in depth (attune.json_check), so this only meets rows written before the
bounds existed or past them (the owner writing SQL by hand).
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg.types.json import set_json_loads


class Undecodable:
    """Stands for a JSON value the worker could not decode; `reason` says why."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Undecodable({self.reason!r})"


def loads(data: bytes | str) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        return Undecodable("it is nested too deeply for the worker to decode")


def install(conn: psycopg.Connection) -> None:
    """Decode json/jsonb on `conn` with `loads` (an Undecodable instead of a crash)."""
    set_json_loads(loads, conn)


def problem(*values: Any) -> str | None:
    """The reason of the first Undecodable among `values` (top level only), or None."""
    for value in values:
        if isinstance(value, Undecodable):
            return value.reason
    return None
