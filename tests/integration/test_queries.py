"""Every named query (store/sql/*.sql) is used by the package and parses in PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.pq import ExecStatus

from attune_pg import db
from attune_pg.store import queries
from attune_pg.store.queries import Q
from tests.conftest import fresh_database

PACKAGE = Path(queries.__file__).resolve().parents[1]
_NAMED = re.compile(r"%\((\w+)\)s")


def _numbered(text: str) -> str:
    """psycopg placeholders -> $n, as the server sees them."""
    numbers: dict[str, int] = {}

    def named(match: re.Match[str]) -> str:
        return f"${numbers.setdefault(match.group(1), len(numbers) + 1)}"

    text = _NAMED.sub(named, text)
    count = iter(range(len(numbers) + 1, 10_000))
    return re.sub(r"%s", lambda _: f"${next(count)}", text).replace("%%", "%")


def test_every_named_query_is_used_in_the_package() -> None:
    source = "\n".join(
        path.read_text(encoding="utf-8") for path in PACKAGE.rglob("*.py") if path.is_file()
    )
    unused = [
        name for name in Q.names() if not re.search(rf"\bQ\.{name}\b|Q\[\"{name}\"\]", source)
    ]
    assert unused == []


def test_parse_rejects_duplicates_and_empty_blocks() -> None:
    assert queries.parse("-- name: a_get\n-- doc\nSELECT 1\n-- name: b_get\nSELECT 2\n", "x") == {
        "a_get": "SELECT 1",
        "b_get": "SELECT 2",
    }
    with pytest.raises(ValueError, match="defined twice"):
        queries.parse("-- name: a_get\nSELECT 1\n-- name: a_get\nSELECT 2\n", "x.sql")
    with pytest.raises(ValueError, match="is empty"):
        queries.parse("-- name: a_get\n-- only a comment\n", "x.sql")
    with pytest.raises(AttributeError, match="no named query"):
        _ = Q.no_such_query


@pytest.fixture(scope="module")
def schema_conn(server_dsn: str, template_dsn: str) -> Iterator[psycopg.Connection]:
    """One database for every parse check: PREPARE changes nothing, and a fresh database per
    query cost more than two minutes of the suite."""
    with fresh_database(server_dsn, template_dsn) as dsn, db.connect(dsn) as connection:
        yield connection


@pytest.mark.parametrize("name", Q.names())
def test_named_query_parses(schema_conn: psycopg.Connection, name: str) -> None:
    conn = schema_conn
    # PREPARE parses and analyses the statement against the real schema without running it.
    result = conn.pgconn.prepare(f"check_{name}".encode(), _numbered(Q[name]).encode())
    message = (result.error_message or b"").decode()
    assert result.status == ExecStatus.COMMAND_OK, f"{name}: {message}"
