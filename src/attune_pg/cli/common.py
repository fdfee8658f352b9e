"""What every command shares: finding the database, one-line errors, output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import wraps
from typing import Any, TypeVar

import click
import psycopg

from attune_pg import db
from attune_pg.errors import AttuneError
from attune_pg.store import migrate

F = TypeVar("F", bound=Callable[..., Any])

dsn_option = click.option(
    "--dsn",
    envvar="ATTUNE_DSN",
    default=None,
    help="PostgreSQL DSN (default: $ATTUNE_DSN, else the embedded server).",
)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def errors_to_exit(func: F) -> F:
    """Turn our errors and database errors into one line on stderr and an exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AttuneError as exc:
            fail(str(exc), exc.exit_code)
        except psycopg.Error as exc:
            diag = getattr(exc, "diag", None)
            primary = diag.message_primary if diag is not None and diag.message_primary else None
            text = primary or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            fail(text, 1)
        return None

    return wrapper  # type: ignore[return-value]


@contextmanager
def connection(dsn: str | None, *, init: bool = True) -> Iterator[psycopg.Connection]:
    """A connection to the chosen server, with the schema applied if `init`."""
    conn = db.connect(db.resolve_dsn(dsn))
    try:
        if init and migrate.migrate(conn):
            # A database set up just now also gets the shipped core pack, as `init` does.
            from attune_pg import packs, shipped

            packs.register(conn, shipped.pack_dir("core"))
        yield conn
    finally:
        conn.close()


def to_json(value: Any) -> str:
    return json.dumps(value, default=_default, indent=2, sort_keys=False)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def clock(value: datetime | None) -> str:
    return value.astimezone().strftime("%H:%M:%S.%f")[:-3] if value else "-"


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    text = value if isinstance(value, str) else json.dumps(value, default=_default)
    return text if len(text) <= 60 else text[:57] + "..."
