"""Apply the numbered, forward-only migrations in `schema/`.

Runs under a transaction-scoped advisory lock so concurrent `attune-pg init` calls
(or workers starting together) apply each migration exactly once; applying twice
changes nothing. Each migration runs in the same transaction as its bookkeeping row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg

from attune_pg.store.queries import Q

# The oldest schema this code runs on: workers of a version start after its migrations
# are applied (docs/roles.md, "Upgrades"). 0006 added what the worker reads at start
# (attune.setting, attune.signing_key) and what every advance writes; 0007 the join
# rounds per branch (task_state.route, join_from) and workflow_execution.started_by;
# 0009 what every claim reads and every task insert writes (concurrency policies) and the
# timers; 0010 the trace id every claim and lock reads; 0014 the rules emit_event left to
# workers (event.deferred_rules) and the compiled rules registration writes; 0015 task rows
# created running, under the creating worker's lease.
REQUIRED_SCHEMA = 15

# Any fixed 64-bit number works; this one spells "attune" in hex-ish.
MIGRATION_LOCK_ID = 0x617474756E65

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def schema_dir() -> Path:
    return Path(str(resources.files("attune_pg") / "schema"))


def available() -> list[Migration]:
    out = []
    for path in sorted(schema_dir().iterdir()):
        match = _NAME.match(path.name)
        if match:
            out.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers in {schema_dir()}")
    return out


def applied(conn: psycopg.Connection) -> set[int]:
    exists = conn.execute(Q.migration_table_exists).fetchone()
    if not exists or not exists[0]:
        return set()
    return {row[0] for row in conn.execute(Q.migration_list)}


def migrate(conn: psycopg.Connection, target: int | None = None) -> list[Migration]:
    """Apply every migration not applied yet (up to `target`, if given); return those
    applied now."""
    wanted = [m for m in available() if target is None or m.version <= target]
    if {m.version for m in wanted} <= applied(conn):
        # Nothing pending: stay read-only, so the least-privilege roles (attune_worker,
        # attune_submitter, attune_reader), which may not create anything, can start.
        return []
    done: list[Migration] = []
    with conn.transaction():
        conn.execute(Q.migration_lock, {"lock": MIGRATION_LOCK_ID})
        conn.execute(Q.schema_create)
        conn.execute(Q.migration_table_create)
        have = applied(conn)
        for migration in available():
            if migration.version in have or (target is not None and migration.version > target):
                continue
            conn.execute(migration.sql.encode())
            conn.execute(Q.migration_record, {"version": migration.version, "name": migration.name})
            done.append(migration)
    return done


def current_version(conn: psycopg.Connection) -> int:
    return max(applied(conn), default=0)
