"""What the audit (attune_pg/audit.py) judges: every row with its status trail, the join
rounds, duplicate occurrences and the unique index that forbids them.

Read in one REPEATABLE READ snapshot, so rows and their events agree even while workers
run. Whole tables: meant for test databases, the chaos soak and a post-mortem, not for a
large production history.
"""

from __future__ import annotations

import psycopg
from psycopg.rows import class_row

from attune_pg.audit import Duplicate, Facts, JoinRound, TaskRow, WorkflowRow
from attune_pg.store.queries import Q, fetch


def gather(conn: psycopg.Connection) -> Facts:
    """The facts of the whole database (`conn` must be idle: outside a transaction)."""
    previous = conn.isolation_level
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    try:
        with conn.transaction():
            index = conn.execute(Q.audit_occurrence_index).fetchone()
            orphans = conn.execute(Q.audit_orphans).fetchone()
            return Facts(
                workflows=fetch(conn, Q.audit_workflows, None, class_row(WorkflowRow)),
                tasks=fetch(conn, Q.audit_tasks, None, class_row(TaskRow)),
                joins=fetch(conn, Q.audit_joins, None, class_row(JoinRound)),
                duplicates=fetch(conn, Q.audit_duplicates, None, class_row(Duplicate)),
                occurrence_index=str(index[0]) if index else None,
                orphan_events=int(orphans[0]) if orphans else 0,
            )
    finally:
        conn.isolation_level = previous
