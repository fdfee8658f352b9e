"""The key-value store (`attune.kv`): write, read, list, delete, and secret lookup.

Each function runs one statement on `conn` (in the caller's transaction, if any).
Secret values are only returned by `get_value` and `secret_lookup`; `list_values`
never reads them. Templates read the keys an advance loaded (`store.load.kv_entries`,
`engine.plan.SnapshotKV`), where a secret becomes a token (`attune_pg.secrets`) that
the worker resolves with `secret_lookup`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from attune_pg.errors import AttuneError
from attune_pg.secrets import TOKEN_CLOSE, TOKEN_OPEN, valid_secret_key
from attune_pg.store.queries import Q, fetch

Json = Any


@dataclass(frozen=True, slots=True)
class KVRow:
    """One `attune.kv` row as `list_values` returns it: `value` is None for secrets."""

    key: str
    value: Json
    secret: bool
    updated_by: str
    updated_at: datetime


def set_value(conn: psycopg.Connection, key: str, value: Json, *, secret: bool = False) -> None:
    """Create or replace `key` (any JSON value; `secret` marks it secret or plain).

    Keys must be non-empty and may not contain the token delimiters ⟦ ⟧.
    """
    if not valid_secret_key(key):
        raise AttuneError(
            f"invalid kv key {key!r}: it must be non-empty and may not contain"
            f" {TOKEN_OPEN} or {TOKEN_CLOSE}"
        )
    conn.execute(Q.kv_set, {"key": key, "value": Jsonb(value), "secret": secret})


def get_value(conn: psycopg.Connection, key: str) -> tuple[Json, bool] | None:
    """``(value, secret)`` for `key`, or None when it is not set."""
    row = conn.execute(Q.kv_get, {"key": key}).fetchone()
    return None if row is None else (row[0], bool(row[1]))


def list_values(conn: psycopg.Connection, prefix: str | None = None) -> list[KVRow]:
    """Every row (whose key starts with `prefix`, if given), by key; secrets without value."""
    return fetch(conn, Q.kv_list, {"prefix": prefix}, class_row(KVRow))


def delete_value(conn: psycopg.Connection, key: str) -> bool:
    """Delete `key`; False if it was not set."""
    return conn.execute(Q.kv_delete, {"key": key}).rowcount > 0


def secret_lookup(conn: psycopg.Connection) -> Callable[[str], Json]:
    """A lookup for `secrets.resolve_secrets`: key -> value of a *secret* key.

    Raises KeyError when the key is not set or is not (any more) marked secret.
    """

    def lookup(key: str) -> Json:
        row = conn.execute(Q.kv_secret_get, {"key": key}).fetchone()
        if row is None:
            raise KeyError(key)
        return row[0]

    return lookup
