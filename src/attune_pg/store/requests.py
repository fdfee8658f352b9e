"""The request pass's SQL: which executions need attention (a control request, an
inquiry that ended, a child that finished), taking their requests, and the deadlines
every worker sweeps (inquiry expiry, workflow timeouts).

Nothing here commits; advance.py owns the transaction. Lock order is kept: workflow
rows are locked (by lock.lock_executions) before any of their task rows change.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from attune_pg.store.queries import Q


def candidates(conn: psycopg.Connection, limit: int) -> list[int]:
    """Executions with a control request, an answered/expired inquiry or a finished
    child. Not locked here: lock_executions locks them in id order afterwards."""
    return [row[0] for row in conn.execute(Q.execution_request_candidates, {"limit": limit})]


def take_requests(conn: psycopg.Connection, ids: Sequence[int]) -> set[int]:
    """Clear the control requests of locked executions; return which had one."""
    return {row[0] for row in conn.execute(Q.execution_take_requests, {"ids": list(ids)})}


def expire_inquiries(conn: psycopg.Connection) -> int:
    count = conn.execute(Q.inquiry_expire).rowcount
    if count:
        conn.execute(Q.control_notify)
    return count


def time_out_workflows(conn: psycopg.Connection, limit: int = 100) -> int:
    """Executions past their `timeout`: cancel what runs, then end as timed_out."""
    count = conn.execute(Q.execution_time_out, {"limit": limit}).rowcount
    if count:
        conn.execute(Q.control_notify)
    return count
