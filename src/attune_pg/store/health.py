"""What `attune-pg doctor` reads: facts about the server, the schema, workers, the queue
and vacuum. Each probe is bounded (partial indexes, LIMITs, catalog views) and runs on
its own (the connection is in autocommit), so one that fails for lack of privilege
leaves the others' answers intact. Judging the facts is health.py's job, not this one's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from attune_pg.store import migrate
from attune_pg.store.queries import Q

Row = dict[str, Any]


@dataclass
class Facts:
    server: Row
    applied: set[int] | None = None  # None: no attune schema here
    available: dict[int, str] = field(default_factory=dict)
    workers: list[Row] | None = None
    backlog: Row | None = None
    stuck: Row | None = None
    snapshot: Row | None = None
    holders: list[Row] | None = None
    tables: list[Row] | None = None
    notify_usage: float | None = None
    # Probes that could not run: (check, one-line reason).
    unknown: list[tuple[str, str]] = field(default_factory=list)


def _all(conn: psycopg.Connection, query: str) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query.encode()).fetchall()


def _one(conn: psycopg.Connection, query: str) -> Row | None:
    rows = _all(conn, query)
    return rows[0] if rows else None


def gather(conn: psycopg.Connection) -> Facts:
    server = _one(conn, Q.server_facts)
    assert server is not None
    facts = Facts(server=server)
    facts.available = {m.version: m.name for m in migrate.available()}
    _probe(facts, "schema", lambda: _schema(conn, facts))
    _probe(facts, "vacuum", lambda: setattr(facts, "snapshot", _one(conn, Q.snapshot_oldest)))
    _probe(facts, "vacuum", lambda: setattr(facts, "holders", _all(conn, Q.snapshot_holders)))
    _probe(facts, "notify", lambda: setattr(facts, "notify_usage", _usage(conn)))
    if facts.applied:
        _probe(facts, "workers", lambda: setattr(facts, "workers", _all(conn, Q.worker_health)))
        _probe(facts, "workers", lambda: setattr(facts, "backlog", _one(conn, Q.queue_backlog)))
        _probe(facts, "stuck", lambda: setattr(facts, "stuck", _one(conn, Q.stuck_summary)))
        _probe(facts, "dead rows", lambda: setattr(facts, "tables", _all(conn, Q.dead_tuples)))
    return facts


def _schema(conn: psycopg.Connection, facts: Facts) -> None:
    applied = migrate.applied(conn)
    facts.applied = applied or None


def _usage(conn: psycopg.Connection) -> float:
    row = _one(conn, Q.notify_usage)
    return 0.0 if row is None else float(row["usage"])


def _probe(facts: Facts, check: str, probe: Callable[[], object]) -> None:
    try:
        probe()
    except psycopg.Error as exc:
        diag = getattr(exc, "diag", None)
        text = (diag.message_primary if diag is not None else None) or str(exc).strip()
        facts.unknown.append((check, text.splitlines()[0] if text else type(exc).__name__))
