"""Small helpers shared by integration and e2e tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from attune_pg import audit
from attune_pg.store import audit as audit_store
from attune_pg.worker.loop import Worker, WorkerConfig

TERMINAL = ("succeeded", "failed", "canceled", "timed_out")
T = TypeVar("T")


def start(conn: psycopg.Connection, ref: str, params: dict[str, Any] | None = None) -> int:
    row = conn.execute(
        "INSERT INTO attune.workflow_execution (workflow_ref, parameters)"
        " VALUES (%s, %s) RETURNING id",
        (ref, Jsonb(params or {})),
    ).fetchone()
    assert row is not None
    return int(row[0])


def poll_until(
    check: Callable[[], T | None],
    what: str = "the condition",
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """The tests' one poll loop: call `check` until it returns something truthy and return
    that; AssertionError naming `what` after `timeout` s. Exceptions of the `ignore`
    types count as "not yet" (a page swapping a region, a server restarting)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except ignore as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not within {timeout}s" + (f" ({last!r})" if last else "")
            )
        time.sleep(interval)


def wait_done(conn: psycopg.Connection, execution_id: int, timeout: float = 30.0) -> dict[str, Any]:
    """Wait until the execution is terminal; return its row."""
    last: dict[str, Any] = {}

    def terminal() -> dict[str, Any] | None:
        with conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(
                "SELECT * FROM attune.workflow_execution WHERE id = %s", (execution_id,)
            ).fetchone()
        assert row is not None
        last.update(row)
        return row if row["status"] in TERMINAL else None

    try:
        return poll_until(terminal, f"execution {execution_id}", timeout=timeout, interval=0.02)
    except AssertionError:
        raise AssertionError(
            f"execution {execution_id} still {last.get('status')} after {timeout}s"
        ) from None


def tasks(conn: psycopg.Connection, execution_id: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM attune.task_execution WHERE workflow_execution_id = %s ORDER BY id",
            (execution_id,),
        ).fetchall()


def statuses(conn: psycopg.Connection, execution_id: int) -> dict[str, str]:
    """task_name -> status of its latest row (by id)."""
    return {t["task_name"]: t["status"] for t in tasks(conn, execution_id)}


def execution_and_tasks(conn: psycopg.Connection, execution_id: int) -> tuple[str, dict[str, str]]:
    """The execution's status, and `statuses` of its tasks."""
    row = conn.execute(
        "SELECT status FROM attune.workflow_execution WHERE id = %s", (execution_id,)
    ).fetchone()
    assert row is not None, f"no execution {execution_id}"
    return row[0], statuses(conn, execution_id)


def task_states(conn: psycopg.Connection, execution_id: int) -> dict[str, str]:
    """task_name -> status of its latest iteration (the logical task, items combined)."""
    rows = conn.execute(
        "SELECT DISTINCT ON (task_name) task_name, status FROM attune.task_state"
        " WHERE workflow_execution_id = %s ORDER BY task_name, iteration DESC",
        (execution_id,),
    ).fetchall()
    return {name: status for name, status in rows}


# ----------------------------------------------------------------- in-process workers

# What a test worker runs with unless the test says otherwise: short enough to be quick,
# long enough that a loaded CI machine does not expire leases mid-task.
WORKER_DEFAULTS: dict[str, object] = {
    "concurrency": 8,
    "lease_seconds": 10.0,
    "poll_seconds": 1.0,
    "grace_seconds": 5.0,
}


class WorkerThreads:
    """The tests' one way to run in-process workers: each a thread running
    `Worker.run`, on `dsn` or the one given to `start` (a role's login, an old schema's
    database). `stop()` asks them all to stop, then joins them, and fails if one hangs."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.started: list[tuple[Worker, threading.Thread]] = []

    def start(self, *, dsn: str | None = None, **config: object) -> Worker:
        options = {**WORKER_DEFAULTS, **config}
        worker = Worker(dsn or self.dsn, WorkerConfig(**options))  # type: ignore[arg-type]
        thread = threading.Thread(
            target=worker.run, name=f"test-worker-{len(self.started)}", daemon=True
        )
        thread.start()
        self.started.append((worker, thread))
        return worker

    def stop(self) -> None:
        for worker, _ in self.started:
            worker.request_stop()
        hung = []
        for _, thread in self.started:
            thread.join(timeout=20)
            if thread.is_alive():
                hung.append(thread.name)
        self.started.clear()
        assert not hung, f"test workers did not stop: {hung}"


@contextlib.contextmanager
def worker_running(dsn: str, **config: object) -> Iterator[Worker]:
    """One in-process worker on `dsn` for the `with` block, stopped (and joined) after it."""
    threads = WorkerThreads(dsn)
    try:
        yield threads.start(**config)
    finally:
        threads.stop()


# ----------------------------------------------------------------- the audit


def audit_problems(conn: psycopg.Connection, *, finished: bool = False) -> list[str]:
    """What attune_pg.audit finds wrong in the database (empty: every invariant holds):
    the tests that run workflows assert this once they are done."""
    return [p.text for p in audit.check(audit_store.gather(conn), finished=finished)]
