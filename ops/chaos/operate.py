"""The chaos soak's operator: submits the plan's workflows on time, answers the
approvals' inquiries and cancels the cancels, all through the outage, and waits until
every execution has ended. A reply lost with the connection is told apart from a
refusal by reading the row back.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cluster import TRANSIENT, Session, log
from plan import Planned


def submit_loop(
    session: Session, plan: list[Planned], t0: float, stop: threading.Event, errors: list[str]
) -> None:
    for item in plan:
        delay = t0 + item.at - time.monotonic()
        if delay > 0 and stop.wait(delay):
            return

        def start(conn: psycopg.Connection, item: Planned = item) -> int:
            row = conn.execute(
                "SELECT attune.start_execution(%s, %s, %s)",
                (item.ref, Jsonb(item.params), item.key),
            ).fetchone()
            assert row is not None
            return int(row[0])

        try:
            # Idempotent start: a retry after a lost commit returns the same execution.
            item.id = session.call(start)
            item.submitted_at = time.monotonic()
        except Exception as exc:
            errors.append(f"could not start workflow {item.index} ({item.ref}): {exc!r}")


def operate_loop(
    session: Session, plan: list[Planned], stop: threading.Event, errors: list[str]
) -> None:
    """Answer the inquiries of approvals and cancel the cancels, through the outage."""
    approvals = [p for p in plan if p.answer is not None]
    cancels = [p for p in plan if p.cancel_after is not None]
    seen: dict[int, float] = {}  # inquiry id -> first seen
    while not stop.is_set():
        now = time.monotonic()
        try:
            waiting: dict[int, Planned] = {
                p.id: p for p in approvals if p.id is not None and not p.answered
            }
            if waiting:
                ids = list(waiting)

                def pending(c: psycopg.Connection, ids: list[int] = ids) -> list[Any]:
                    return c.execute(
                        "SELECT id, workflow_execution_id FROM attune.inquiry"
                        " WHERE status = 'pending' AND workflow_execution_id = ANY(%s)",
                        (ids,),
                    ).fetchall()

                rows = session.call(pending)
                for inquiry_id, execution_id in rows:
                    item = waiting[execution_id]
                    first = seen.setdefault(inquiry_id, now)
                    if now - first >= item.answer_delay:
                        respond(session, inquiry_id, item, errors)
            for item in cancels:
                if (
                    item.id is not None
                    and item.canceled_at is None
                    and item.submitted_at is not None
                    and now >= item.submitted_at + (item.cancel_after or 0.0)
                ):
                    cancel(session, item, errors)
        except TRANSIENT:
            pass
        except Exception as exc:
            errors.append(f"operator error: {exc!r}")
        stop.wait(0.1)


def respond(session: Session, inquiry_id: int, item: Planned, errors: list[str]) -> None:
    def answer(conn: psycopg.Connection) -> None:
        try:
            conn.execute(
                "SELECT attune.respond_inquiry(%s, %s, 'chaos')", (inquiry_id, Jsonb(item.answer))
            )
        except psycopg.errors.ObjectNotInPrerequisiteState:
            # Answered already (our commit went through but its reply was lost)?
            row = conn.execute(
                "SELECT status, response FROM attune.inquiry WHERE id = %s", (inquiry_id,)
            ).fetchone()
            if row is None or row[0] != "responded" or row[1] != item.answer:
                raise

    try:
        session.call(answer)
        item.answered = True
    except TRANSIENT:
        pass  # next round
    except Exception as exc:
        item.answered = True
        errors.append(f"answering inquiry {inquiry_id} of execution {item.id} failed: {exc!r}")


def cancel(session: Session, item: Planned, errors: list[str]) -> None:
    def do(conn: psycopg.Connection) -> None:
        try:
            conn.execute("SELECT attune.cancel_execution(%s)", (item.id,))
        except psycopg.errors.ObjectNotInPrerequisiteState:
            row = conn.execute(
                "SELECT status FROM attune.workflow_execution WHERE id = %s", (item.id,)
            ).fetchone()
            status = row[0] if row else None
            if status in ("canceling", "canceled"):
                return  # the first call went through
            # Finished before the cancel arrived: the soak's timing, not the engine's fault.
            item.status = str(status)
            log(f"cancel of {item.id} came too late: it is already {status}")

    try:
        session.call(do)
        item.canceled_at = time.monotonic()
    except TRANSIENT:
        pass
    except Exception as exc:
        item.canceled_at = time.monotonic()
        errors.append(f"canceling execution {item.id} failed: {exc!r}")


def wait_terminal(
    session: Session, plan: list[Planned], deadline: float, stop: threading.Event
) -> int:
    """Wait until every execution is terminal (or the deadline); return how many are not."""
    last = 0.0
    while True:
        ids = [p.id for p in plan if p.id is not None]
        row = session.call(
            lambda c, ids=ids: c.execute(  # type: ignore[misc]
                "SELECT count(*) FILTER (WHERE status NOT IN"
                " ('succeeded', 'failed', 'canceled', 'timed_out')),"
                " count(*) FILTER (WHERE id = ANY(%s)) FROM attune.workflow_execution",
                (ids,),
            ).fetchone()
        )
        assert row is not None
        open_, known = int(row[0]), int(row[1])
        submitted = len(ids) == len(plan)
        if submitted and open_ == 0:
            return 0
        now = time.monotonic()
        if now - last >= 5:
            log(f"{known}/{len(plan)} submitted, {open_} executions not finished yet")
            last = now
            if submitted and open_ <= 5:
                for eid, ref, status, age, tasks in session.call(
                    lambda c: c.execute(
                        "SELECT e.id, e.workflow_ref, e.status,"
                        " round(extract(epoch FROM now() - e.created_at)::numeric, 1),"
                        " (SELECT string_agg(format('%s#%s/%s/%s:%s claims=%s', t.task_name,"
                        "    t.id, t.item_index, t.attempt, t.status, t.claims), ' ' ORDER BY t.id)"
                        "    FROM attune.task_execution t WHERE t.workflow_execution_id = e.id"
                        "     AND t.status NOT IN ('succeeded', 'failed', 'canceled', 'timed_out',"
                        "                          'skipped'))"
                        " FROM attune.workflow_execution e WHERE e.status NOT IN"
                        " ('succeeded', 'failed', 'canceled', 'timed_out') ORDER BY e.id"
                    ).fetchall()
                ):
                    log(f"  open: execution {eid} ({ref}) {status} for {age}s; live tasks: {tasks}")
        if now > deadline or stop.is_set():
            return open_ + (len(plan) - len(ids))
        time.sleep(0.25)
