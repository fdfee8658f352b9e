"""Choose the PostgreSQL server and open connections to it.

Order: an explicit DSN (`--dsn`), then $ATTUNE_DSN, then the embedded server.
Every session uses READ COMMITTED and an idle-in-transaction timeout, so a worker
that hangs inside a transaction cannot hold workflow locks for long.
"""

from __future__ import annotations

import os
from typing import TypedDict

import psycopg
from psycopg.rows import dict_row

from attune_pg import embedded
from attune_pg.errors import DatabaseUnavailable

APPLICATION_NAME = "attune_pg"


def resolve_dsn(dsn: str | None = None) -> str:
    if dsn:
        return dsn
    env = os.environ.get("ATTUNE_DSN")
    if env:
        return env
    return embedded.start()


class SessionOptions(TypedDict):
    application_name: str
    options: str
    connect_timeout: int


def session_options(name: str = APPLICATION_NAME) -> SessionOptions:
    """Connection settings every session uses (also for pools: the console's)."""
    return {
        "application_name": name,
        "options": (
            "-c idle_in_transaction_session_timeout=60000"
            " -c default_transaction_isolation=read\\ committed"
        ),
        "connect_timeout": 10,
    }


def connect(
    dsn: str, *, autocommit: bool = True, name: str = APPLICATION_NAME
) -> psycopg.Connection:
    try:
        conn = psycopg.connect(dsn, autocommit=autocommit, **session_options(name))
    except psycopg.OperationalError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {message}") from exc
    return conn


def connect_dict(
    dsn: str, *, name: str = APPLICATION_NAME
) -> psycopg.Connection[dict[str, object]]:
    conn = connect(dsn, name=name)
    conn.row_factory = dict_row  # type: ignore[assignment]
    return conn  # type: ignore[return-value]
