"""Named SQL: every statement the package runs lives in `store/sql/*.sql`, parsed once.

A file holds blocks, each headed by a `-- name: <noun>_<verb>` line (River's noun-first
names: `task_claim`, `execution_lock`, ...); the lines after it, up to the next header, are
the statement, with psycopg placeholders (`%(name)s`). Comment lines directly after the
header document the query. Names are unique across all files.

    from attune_pg.store.queries import Q, fetch
    conn.execute(Q.task_claim, {...})
    fetch(conn, Q.task_claim, {...}, class_row(ClaimedTask))  # rows as dataclasses

`Q.<name>` raises AttributeError for an unknown name, so a typo fails at import-time tests,
not in production; `tests/integration/test_queries.py` checks that every query is used
somewhere in the package and that PostgreSQL parses it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from importlib import resources
from operator import itemgetter
from typing import TYPE_CHECKING, Any, LiteralString, NamedTuple, TypeVar

import psycopg
from psycopg.pq import ExecStatus
from psycopg.rows import RowFactory, RowMaker, no_result

if TYPE_CHECKING:
    from psycopg._cursor_base import BaseCursor

T = TypeVar("T")
NT = TypeVar("NT", bound=NamedTuple)

_HEADER = re.compile(r"^--\s*name:\s*([a-z][a-z0-9_]*)\s*$")


def parse(text: str, source: str) -> dict[str, str]:
    """The named blocks of one .sql file; a duplicate or empty block is an error."""
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []

    def close() -> None:
        if name is None:
            return
        body = "\n".join(lines).strip()
        if not body:
            raise ValueError(f"{source}: query {name!r} is empty")
        queries[name] = body

    for raw in text.splitlines():
        header = _HEADER.match(raw)
        if header:
            close()
            name, lines = header.group(1), []
            if name in queries:
                raise ValueError(f"{source}: query {name!r} is defined twice")
        elif name is not None and (lines or not raw.lstrip().startswith("--")):
            lines.append(raw)
    close()
    return queries


def load() -> dict[str, str]:
    """Every named query of the package, by name."""
    found: dict[str, str] = {}
    folder = resources.files("attune_pg.store") / "sql"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, body in parse(entry.read_text(encoding="utf-8"), entry.name).items():
            if name in found:
                raise ValueError(f"{entry.name}: query {name!r} is defined in another file too")
            found[name] = body
    return found


class _Queries:
    """Attribute access to the named queries (`Q.task_claim`)."""

    def __init__(self, queries: dict[str, str]) -> None:
        self._queries = queries

    def __getattr__(self, name: str) -> LiteralString:
        try:
            # The text comes from the package's own files, never from input: a literal.
            return self._queries[name]
        except KeyError:
            raise AttributeError(f"no named query {name!r} in store/sql/*.sql") from None

    def names(self) -> list[str]:
        return sorted(self._queries)

    def __getitem__(self, name: str) -> LiteralString:
        return self.__getattr__(name)


Q = _Queries(load())


_ROWS = (ExecStatus.TUPLES_OK, ExecStatus.SINGLE_TUPLE, ExecStatus.TUPLES_CHUNK)


def named_row(cls: type[NT]) -> RowFactory[NT]:
    """Rows as the NamedTuple `cls`, by column name like `class_row`: the columns are
    matched to the fields once per result shape, then each row is one tuple build (a
    locked execution row costs a fifth of a frozen dataclass built from keywords).
    Trailing fields without a column take their defaults; other columns are left out."""
    makers: dict[tuple[bytes, ...], RowMaker[NT]] = {}

    def for_cursor(cursor: BaseCursor[Any, Any]) -> RowMaker[NT]:
        res = cursor.pgresult
        if res is None or res.status not in _ROWS:
            return no_result
        # Column names as the server sent them (not `cursor.description`, which builds
        # an object per column for every result).
        shape = tuple(res.fname(i) or b"" for i in range(res.nfields))
        maker = makers.get(shape)
        if maker is None:
            maker = makers[shape] = _maker(cls, [n.decode() for n in shape])
        return maker

    return for_cursor


def _maker(cls: type[NT], names: list[str]) -> RowMaker[NT]:
    fields = cls._fields
    given = next((i for i, f in enumerate(fields) if f not in names), len(fields))
    for f in fields[given:]:
        if f not in cls._field_defaults or f in names:
            raise psycopg.ProgrammingError(
                f"{cls.__name__}: the query returns no column {f!r}"
                if f not in names
                else f"{cls.__name__}: column {f!r} follows a field without one"
            )
    tail = tuple(cls._field_defaults[f] for f in fields[given:])
    order = [names.index(f) for f in fields[:given]]
    make = cls._make
    if not tail and order == list(range(len(names))):
        return make
    if len(order) < 2:  # itemgetter of one index returns the value, not a tuple
        return lambda values: make([values[i] for i in order] + list(tail))
    pick = itemgetter(*order)
    return lambda values: make(pick(values) + tail)


def fetch(
    conn: psycopg.Connection[Any],
    query: LiteralString,
    params: Mapping[str, Any] | Sequence[Any] | None,
    row: RowFactory[T],
) -> list[T]:
    """Run a named query and map its rows with `row` (psycopg's `class_row(Dataclass)`
    or `kwargs_row(function)`, or `named_row(NamedTuple)`: by column name, never by
    position)."""
    with conn.cursor(row_factory=row) as cur:
        return cur.execute(query, params).fetchall()
