"""The worker: claim, run, advance, wait; heartbeat and reap on the side.

One thread (this loop) owns the main database connection; actions run on a
thread pool and report back through a queue; a listener thread turns NOTIFY into
a wake-up. Completions are advanced in batches: everything that finished since
the last turn goes into one transaction.

Stopping: SIGTERM (`request_stop`) stops claiming, lets running actions finish for
`grace` seconds, then cancels them and hands their rows back so another worker
runs them at once. SIGKILL loses nothing either: the leases expire and any
worker's reaper hands the rows back.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from attune_pg import advance, automation, db
from attune_pg.errors import DatabaseUnavailable
from attune_pg.settings import REFRESH_SECONDS
from attune_pg.store import claims, decode, lock, requests
from attune_pg.store.catalog import ActionCatalog
from attune_pg.store.fence import Finished
from attune_pg.worker.dispatch import dispatch
from attune_pg.worker.listener import Listener
from attune_pg.worker.observe import Observer
from attune_pg.worker.runner import TaskRunner

log = logging.getLogger("attune_pg.worker")

# How long a worker with no free slot puts off starting requested executions (another
# worker with room, or its own next free slot, normally takes them first).
START_WAIT = 1.0

# A session keeps the generic plan of a prepared statement until the table is analyzed,
# which autovacuum does a minute or more later: a plan made while the hot tables were
# nearly empty (a new install, a bench, after a purge) scans them whole on every batch as
# they grow. So a worker forgets its plans each time the task steps it ran doubled, from
# REPLAN_FIRST to REPLAN_LAST (by then the tables were analyzed); a dozen re-plans in all.
REPLAN_FIRST = 128
REPLAN_LAST = 1 << 20

# A turn about to advance what finished first waits, GATHER at most, for the tasks sent
# to their threads less than GATHER ago (TaskRunner.gather). A quick action (a python call:
# 1 ms idle, 4-8 ms on 2 loaded cores) otherwise misses the turn by a hair and waits for
# the next one (a loaded turn takes ~20 ms, more than GATHER), and commits carry half the
# steps. Long actions are never waited for; an idle worker never waits.
GATHER = 0.015


@dataclass(frozen=True)
class WorkerConfig:
    concurrency: int = 10
    lease_seconds: float = 30.0
    poll_seconds: float = 5.0  # safety net when a notification is missed
    grace_seconds: float = 30.0  # SIGTERM: how long running actions may finish
    start_batch: int = 100  # requested executions started per transaction
    metrics_port: int | None = None  # Prometheus endpoint (0: any free port)
    metrics_host: str = "0.0.0.0"


class Worker:
    def __init__(
        self, dsn: str, config: WorkerConfig | None = None, name: str | None = None
    ) -> None:
        self.dsn = dsn
        self.config = config or WorkerConfig()
        host = socket.gethostname()
        self.id = name or f"{host}:{os.getpid()}:{secrets.token_hex(3)}"
        self._host = host
        self._wake = threading.Event()
        self._stopping = threading.Event()
        # Hints that a query may find something: set by NOTIFY, by a poll timeout,
        # or by our own progress; a query that comes back short clears them.
        self._work_hint = threading.Event()
        self._start_hint = threading.Event()
        self._control_hint = threading.Event()
        self._event_hint = threading.Event()
        for hint in self._hints():
            hint.set()
        # Set by NOTIFY attune_catalog (a registration changed something): reload actions.
        self._catalog_hint = threading.Event()
        self._runner = TaskRunner(self.config.concurrency, self._wake)
        self._pending: list[Finished] = []  # finished, not yet committed
        # Where the next claim of requested executions resumes (store.lock.StartCursor).
        self._cursor = lock.StartCursor()
        self._hand_back: list[int] = []
        self.tasks_done = 0
        self._replan_at = REPLAN_FIRST  # tasks_done at which the session plans afresh
        self._stop_deadline: float | None = None
        # Logs, metrics and spans: fed from what the loop already holds, no SQL of its own.
        self.observe = Observer(
            self.id,
            self.config.concurrency,
            metrics_port=self.config.metrics_port,
            metrics_host=self.config.metrics_host,
        )

    def _hints(self) -> tuple[threading.Event, ...]:
        return (self._work_hint, self._start_hint, self._control_hint, self._event_hint)

    # ------------------------------------------------------------ control

    def request_stop(self) -> None:
        """Graceful stop (SIGTERM): stop claiming, finish or hand back running tasks."""
        if not self._stopping.is_set():
            log.info("worker %s stopping: %d tasks running", self.id, len(self._runner.running))
            self._stop_deadline = time.monotonic() + self.config.grace_seconds
            self._stopping.set()
            self._wake.set()

    def wait_for_database(self, prepare: Callable[[psycopg.Connection], object]) -> bool:
        """Connect (and `prepare`: apply pending migrations) before starting, waiting
        out an outage with backoff instead of exiting: a worker started while the
        database is down must not crash-loop. False if stopped while waiting."""
        backoff = 0.2
        warned = False
        while not self._stopping.is_set():
            try:
                with db.connect(self.dsn, name="attune_worker") as conn:
                    prepare(conn)
                return True
            except DatabaseUnavailable as exc:
                if not warned:
                    log.warning("waiting for the database: %s", exc)
                    warned = True
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        return False

    # ------------------------------------------------------------ main loop

    def run(self) -> None:
        listener = Listener(
            self.dsn,
            self._wake,
            self._stopping,
            {
                "attune_work": self._work_hint,
                "attune_start": self._start_hint,
                "attune_control": self._control_hint,
                "attune_catalog": self._catalog_hint,
                "attune_event": self._event_hint,
            },
            on_reconnect=lambda: self.observe.reconnected("listen"),
        )
        self.observe.start(self.dsn, lambda: len(self._runner.running))
        listener.start()
        conn: psycopg.Connection | None = None
        outage_since: float | None = None
        failed = False
        backoff = 0.2
        try:
            while True:
                try:
                    if conn is None or conn.closed:
                        conn = db.connect(self.dsn, name="attune_worker")
                        if failed:
                            self.observe.reconnected("main")
                            failed = False
                        decode.install(conn)
                        claims.plan_generic(conn)
                        self._env = None  # re-read on every (re)connect
                        self._load_env(conn)
                        claims.register_worker(
                            conn, self.id, self._host, os.getpid(), self.config.concurrency
                        )
                        actions = ActionCatalog(conn)
                        if outage_since is not None:
                            log.warning(
                                "database is back after %.1fs; worker %s resumes",
                                time.monotonic() - outage_since,
                                self.id,
                            )
                        else:
                            log.info(
                                "worker %s started: concurrency=%d lease=%ss",
                                self.id,
                                self.config.concurrency,
                                self.config.lease_seconds,
                            )
                        outage_since = None
                        backoff = 0.2
                    if self._turn(conn, actions):
                        break
                except Exception as exc:
                    # Neither an outage nor a bug kills the worker: it keeps the results
                    # in hand, backs off and starts over with a fresh connection.
                    if isinstance(exc, psycopg.OperationalError | DatabaseUnavailable):
                        if outage_since is None:  # one line per outage
                            outage_since = time.monotonic()
                            first = str(exc).strip().splitlines()
                            log.warning(
                                "database unreachable (%s); keeping %d results and retrying",
                                first[0] if first else type(exc).__name__,
                                len(self._pending),
                            )
                    else:
                        log.exception("worker %s: unexpected error; retrying", self.id)
                    failed = True
                    if conn is not None:
                        conn.close()
                    conn = None
                    if self._stopping.wait(backoff) and self._may_leave():
                        break
                    backoff = min(backoff * 2, 5.0)
            if conn is not None and not conn.closed:
                claims.stop_worker(conn, self.id, self.tasks_done)
        finally:
            self._stopping.set()
            self._runner.cancel_all(hand_back=True)
            self._runner.shutdown()
            if conn is not None:
                conn.close()
            listener.join(timeout=2)
            self.observe.stop()
            log.info("worker %s stopped after %d tasks", self.id, self.tasks_done)

    _env: advance.Env | None = None
    _env_at = 0.0

    def _load_env(self, conn: psycopg.Connection) -> advance.Env:
        """The owner's limits and the token key: read at connect, refreshed every
        REFRESH_SECONDS (a changed setting reaches running workers without a restart)."""
        if self._env is None or time.monotonic() - self._env_at > REFRESH_SECONDS:
            self._env = advance.Env.load(conn)
            self._env_at = time.monotonic()
            self._runner.max_depth = self._env.settings.json_max_depth
            self._runner.max_result_bytes = self._env.settings.max_result_bytes
        return self._env

    def _may_leave(self) -> bool:
        """Stopping without a database: leave once nothing is left to report, or when
        the grace period is over (unreported results then re-run elsewhere when their
        leases expire: at least once, never lost)."""
        nothing_left = not self._runner.running and not self._pending
        late = self._stop_deadline is not None and time.monotonic() > self._stop_deadline
        return nothing_left or late

    def _turn(self, conn: psycopg.Connection, actions: ActionCatalog) -> bool:
        """One pass of the loop; True when the worker should exit."""
        self._wake.clear()
        self._runner.collect(self._pending, self._hand_back)
        if self._pending and not self._stopping.is_set():
            self._runner.gather(self._pending, self._hand_back, GATHER)
        if self._hand_back:
            claims.hand_back(conn, self.id, self._hand_back)
            self.observe.handed_back(self._hand_back)
            self._hand_back = []
        env = self._load_env(conn)
        if self._stopping.is_set():
            if self._pending:
                self._advance(conn, actions, env, None)  # no new claims while stopping
            if not self._runner.running:
                return True
            if self._stop_deadline is not None and time.monotonic() > self._stop_deadline:
                log.warning("grace period over: handing back %d tasks", len(self._runner.running))
                self._runner.cancel_all(hand_back=True)
                self._stop_deadline = None
        else:
            self._work(conn, actions, env)
        self._housekeeping(conn)
        if not self._wake.wait(self._sleep_for(conn, self._stopping.is_set())):
            # Poll timeout: the safety net for a missed notification.
            for hint in self._hints():
                hint.set()
        return False

    def _advance(
        self,
        conn: psycopg.Connection,
        actions: ActionCatalog,
        env: advance.Env,
        slots: claims.Slots | None,
    ) -> None:
        """Advance what finished in a transaction of its own."""
        stats = advance.complete(conn, self.id, self._pending, actions, env, slots)
        self._pending = []
        self._committed(conn, stats, actions, env)

    def _committed(
        self,
        conn: psycopg.Connection,
        stats: advance.AdvanceStats,
        actions: ActionCatalog,
        env: advance.Env,
    ) -> None:
        """After a commit: report it, and run what it claimed for this worker."""
        self.observe.advanced(stats)
        self.tasks_done += stats.advanced
        if self.tasks_done >= self._replan_at and self._replan_at <= REPLAN_LAST:
            self._replan_at *= 2
            claims.forget_plans(conn)
        if stats.stale:
            log.info("dropped %d stale results (lease lost to another worker)", stats.stale)
        if stats.queued:
            self._work_hint.set()  # rows went to the queue: claim them
        self._dispatch(conn, stats.claimed, actions, env)

    def _work(self, conn: psycopg.Connection, actions: ActionCatalog, env: advance.Env) -> None:
        """Advance, start and claim: one transaction for the three (advance.turn)."""
        if self._catalog_hint.is_set():
            self._catalog_hint.clear()
            actions.refresh()
        if self._control_hint.is_set() or self._event_hint.is_set():
            # Rare: control requests and events, each in its own transaction, after
            # what finished was advanced and before anything starts.
            if self._pending:
                self._advance(conn, actions, env, self._slots())
            self._requests_and_events(conn, actions, env)
        want_start = self._start_hint.is_set()
        want_claim = self._work_hint.is_set()
        self._start_hint.clear()
        self._work_hint.clear()
        if self._pending or want_start or want_claim:
            start = self.config.start_batch if want_start else 0
            t = advance.turn(
                conn, self._pending, actions, env, self._slots(), start, want_claim, self._cursor
            )
            self._pending = []
            self._committed(conn, t.stats, actions, env)
            if want_start:
                self._started(conn, actions, env, t)
            if want_claim:
                if t.claim_limit <= 0:
                    self._work_hint.set()  # no slot was free: claim once one is
                else:
                    if t.from_queue == t.claim_limit:
                        self._work_hint.set()  # the queue may hold more for the next slot
                    self._claimed_none = t.from_queue == 0
        if self._free() <= 0:
            self._claimed_none = False  # full: the next completion wakes us

    def _started(
        self, conn: psycopg.Connection, actions: ActionCatalog, env: advance.Env, t: advance.Turn
    ) -> None:
        """A turn starts only as many executions as it has free slots (their first
        tasks are created claimed, and run here), so that a full worker leaves them to a
        worker with room instead of queueing tasks it cannot run. A worker that stays
        full still starts a batch after START_WAIT seconds: an execution whose first
        task needs no slot (an inquiry, a delay) never waits for one."""
        if t.start_limit > 0:
            self._start_deferred = None
            if t.stats.started + t.stats.errors >= t.start_limit:
                self._start_hint.set()  # there may be more
            return
        self._start_hint.set()  # no slot was free: start once one is
        now = time.monotonic()
        if self._start_deferred is None:
            self._start_deferred = now
        elif now - self._start_deferred >= START_WAIT:
            self._start_deferred = None
            self._start_hint.clear()
            batch = self.config.start_batch
            stats = advance.start_requested(conn, actions, batch, env, self._slots(), self._cursor)
            self._committed(conn, stats, actions, env)
            if stats.started + stats.errors >= batch:
                self._start_hint.set()

    def _requests_and_events(
        self, conn: psycopg.Connection, actions: ActionCatalog, env: advance.Env
    ) -> None:
        if self._control_hint.is_set():
            self._control_hint.clear()
            self._cancel_requested(conn)
            stats = advance.request_pass(conn, actions, env=env)
            self.observe.advanced(stats)
            if stats.started or stats.advanced:
                self._work_hint.set()
                self._control_hint.set()  # there may be more; the next pass finds none
        if self._event_hint.is_set():
            self._event_hint.clear()
            matched = automation.process_events(conn, self.config.start_batch)
            if matched.executions:
                self._start_hint.set()
            if matched.events >= self.config.start_batch:
                self._event_hint.set()  # there may be more

    def _free(self) -> int:
        return self.config.concurrency - len(self._runner.running)

    def _slots(self) -> claims.Slots:
        """The free slots a transaction that creates task rows may fill as it creates
        them (schema 0015): no claim of its own, the rows run once it commits."""
        return claims.Slots(self.id, self.config.lease_seconds, max(self._free(), 0))

    def _dispatch(
        self,
        conn: psycopg.Connection,
        claimed: list[claims.ClaimedTask],
        actions: ActionCatalog,
        env: advance.Env,
    ) -> None:
        """Run what this worker claimed (by a claim, or created claimed and committed)."""
        if claimed:
            self.observe.claimed(claimed)
            ended = dispatch(conn, claimed, actions, env.signing_key, self._runner)
            self._pending.extend(ended)
            if ended:
                self._wake.set()

    _start_deferred: float | None = None  # since when a full worker put off starting
    _last_heartbeat = 0.0
    _last_reap = 0.0
    _claimed_none = False
    _deadline_at: float | None = None
    _pending_deadline: float | None = None
    _acted_deadline: float | None = None
    _timer_at: float | None = None  # monotonic time of the next timer tick we know of

    def _cancel_requested(self, conn: psycopg.Connection) -> None:
        """Heartbeat now; kill the actions whose execution was canceled (cancel_running)."""
        for task_id in claims.heartbeat(
            conn, self.id, list(self._runner.running), self.config.lease_seconds, self.tasks_done
        ):
            entry = self._runner.running.get(task_id)
            if entry is not None and not entry.cancel.is_set():
                log.info("canceling task %s: its execution was canceled", task_id)
                entry.cancel.set()
        self._last_heartbeat = time.monotonic()

    def _housekeeping(self, conn: psycopg.Connection) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat >= self.config.lease_seconds / 3:
            self._cancel_requested(conn)
        deadline_passed = self._deadline_at is not None and now >= self._deadline_at
        if deadline_passed or now - self._last_reap >= min(self.config.lease_seconds / 2, 5.0):
            if deadline_passed:
                self._acted_deadline = self._pending_deadline
            self._deadline_at = None
            requeued, closed = claims.reap_expired(conn)
            self.observe.reaped(requeued + closed)
            if requeued:
                log.warning("requeued %d tasks whose worker stopped heartbeating", requeued)
                self._wake.set()
            if closed:
                log.warning(
                    "closed %d tasks whose worker stopped heartbeating after their"
                    " execution had ended",
                    closed,
                )
            if requests.expire_inquiries(conn) + requests.time_out_workflows(conn):
                self._control_hint.set()
                self._wake.set()
            self._last_reap = now
            self._timer_at = now  # look at the timers now too
        if self._timer_at is not None and now >= self._timer_at:
            self._fire_timers(conn)

    def _fire_timers(self, conn: psycopg.Connection) -> None:
        """Fire the due timers (any worker may; SKIP LOCKED makes each tick one
        worker's) and remember when the next one is due, so a busy worker, which
        skips the idle wait below, still fires ticks on time."""
        fired = automation.fire_timers(conn)
        self.observe.timers(fired.rules, fired.triggers)
        if fired.executions:
            self._start_hint.set()
            self._wake.set()
        due = automation.timer_due_in(conn)
        # Overdue but not ours (another worker holds it right now): look again shortly.
        wait = due + 0.002 if due is not None and due > 0 else 0.05
        self._timer_at = None if due is None else time.monotonic() + wait

    def _sleep_for(self, conn: psycopg.Connection, stopping: bool) -> float:
        room = len(self._runner.running) < self.config.concurrency
        if self._runner.has_outcomes() or (
            room and (self._work_hint.is_set() or self._start_hint.is_set()) and not stopping
        ):
            return 0.0
        delay = self.config.poll_seconds * random.uniform(0.8, 1.2)
        delay = min(delay, self.config.lease_seconds / 3)
        if stopping:
            return min(delay, 0.2)
        if self._timer_at is not None:
            delay = min(delay, max(self._timer_at - time.monotonic(), 0.0))
        if self._start_deferred is not None:
            delay = min(delay, max(self._start_deferred + START_WAIT - time.monotonic(), 0.0))
        if self._claimed_none:
            # Nothing claimable now: sleep until the next delayed task is due, or the
            # next workflow timeout or inquiry expiry (DB clock, like everything else).
            due, deadline, at = claims.next_due_in(conn)
            if due is not None:
                # Due now but not claimed: another worker holds the row; look again shortly.
                delay = min(delay, max(due, 0.01))
            # Each deadline is acted on once: one still in the past afterwards (another
            # worker holds its row) is left to the periodic pass, not spun on.
            if deadline is not None and at != self._acted_deadline:
                wait = max(deadline, 0.0) + 0.005
                self._deadline_at = time.monotonic() + wait
                self._pending_deadline = at
                delay = min(delay, wait)
        return delay
