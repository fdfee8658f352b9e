"""How values look on the console's pages: the Jinja filters."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from attune_pg.store.console import StatusCount

JSON_LIMIT = 20_000  # characters of one JSON value shown on a page


def json_text(value: Any) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= JSON_LIMIT else text[:JSON_LIMIT] + "\n… (cut)"


def when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def took(start: datetime | None, end: datetime | None, now: datetime | None = None) -> str:
    """How long from start to end (or to `now`, for what still runs)."""
    if start is None:
        return ""
    seconds = ((end or now or datetime.now(UTC)) - start).total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def count(value: StatusCount) -> str:
    return f"{value.count:,}" if value.exact else f"≥ {value.count:,}"


def query(params: Mapping[str, Any], **changes: Any) -> str:
    """The current query string with `changes` applied (None removes a key)."""
    merged = {k: v for k, v in params.items() if v not in ("", None)}
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return urlencode(merged)
