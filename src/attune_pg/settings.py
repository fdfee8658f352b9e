"""The limits the owner configures, as workers see them (table `attune.setting`).

Pure: `Settings.from_rows` turns the table's rows into a frozen value; the store reads
them (`store.settings.load`), once when a worker (re)connects and again every
`REFRESH_SECONDS`, so a change made with `UPDATE attune.setting ...` reaches running
workers without a restart. SQL functions read the same table (`attune.setting_int`).

Adding a limit: a row in the migration that introduces it, a field here (same name,
same default), and a row in the table of docs/operations.md ("Limits and settings").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

#: How often a running worker re-reads the settings.
REFRESH_SECONDS = 30.0


@dataclass(frozen=True)
class Settings:
    json_max_depth: int = 100
    json_max_bytes: int = 4 * 1024 * 1024
    priority_min: int = -100
    priority_max: int = 100
    max_descendants: int = 10_000
    max_task_rows: int = 100_000

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, Any]]) -> Settings:
        """From (name, value) rows; unknown names are ignored (a newer schema may have
        more), known ones must be integers."""
        known = {f.name for f in fields(cls)}
        values: dict[str, int] = {}
        for name, value in rows:
            if name not in known:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"setting {name!r} must be a number, is {value!r}")
            values[name] = int(value)
        return cls(**values)
