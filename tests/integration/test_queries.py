"""Every named query (store/sql/*.sql) is used by the package and parses in PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import LiteralString, NamedTuple

import psycopg
import pytest
from psycopg.pq import ExecStatus

from attune_pg import db
from attune_pg.store import queries
from attune_pg.store.queries import Q, fetch
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


class _Row(NamedTuple):
    a: int
    b: str
    c: int = 7


class _Gap(NamedTuple):
    a: int
    b: int = 0
    c: int = 0


def test_named_row_maps_columns_by_name(schema_conn: psycopg.Connection) -> None:
    def rows(sql: LiteralString) -> list[_Row]:
        return fetch(schema_conn, sql, None, queries.named_row(_Row))

    # In field order, in another order with an extra column, and with the defaulted
    # trailing field absent: the same rows.
    assert rows("SELECT 1 AS a, 'x' AS b, 2 AS c") == [_Row(1, "x", 2)]
    assert rows("SELECT 'x' AS b, 0 AS z, 2 AS c, 1 AS a") == [_Row(1, "x", 2)]
    assert rows("SELECT 'x' AS b, 1 AS a") == [_Row(1, "x", 7)]
    with pytest.raises(psycopg.ProgrammingError, match="_Row: the query returns no column 'b'"):
        rows("SELECT 1 AS a, 2 AS c")
    # A defaulted field amid given ones cannot be built positionally: refused, not guessed.
    with pytest.raises(psycopg.ProgrammingError, match="_Gap: column 'c' follows a field"):
        fetch(schema_conn, "SELECT 1 AS a, 2 AS c", None, queries.named_row(_Gap))
