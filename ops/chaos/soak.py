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
4. Waits until every workflow is terminal, stops everything, and checks. First the
   engine's invariants, attune_pg.audit (the tests assert the same): each row's audit
   trail in attune.execution_event is a legal path of the state machine that ends in
   the row's status, with one terminal event; no occurrence (workflow, task, iteration,
   item, attempt) exists twice and the unique index that forbids it is in place;
   retries follow failures only; no lease is left behind; joins counted each arrival
   once; nothing is unfinished. Then the plan's: every workflow ends with the status and
   output its kind must have; every expected task occurrence exists exactly once; each
   join ran once; each inquiry was answered once; each nested task started one child;
   workers alive across the restart reconnected.

The parts: plan.py (the seeded mix and what each workflow must end with), cluster.py
(the server, the workers, the killer, the restart), operate.py (submit, answer, cancel,
wait) and audit.py (the checks: attune_pg.audit's invariants plus the plan's). This file
is the command line and the run's order of events.

It prints one line on stdout, e.g.
    workflows=200 tasks=1234 kills=17 restarts=1 lost=0 duplicated=0
(progress and any problem go to stderr) and exits 0 only if every check passed.

    python ops/chaos/soak.py                      # 200 workflows over ~45 s
    python ops/chaos/soak.py --minutes 10         # the long run
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

# Run as a script, this folder is first on sys.path: its modules import as plan, cluster,
# operate and audit (operate.py, not operator.py, which would shadow the stdlib module).
from audit import report, scan_logs, self_exits, verify
from cluster import Pool, Server, Session, chaos_loop, create_database, log, restart_on_schedule
from operate import operate_loop, submit_loop, wait_terminal
from plan import MIN_EACH, MIX, make_plan


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

        ready_db = restart_on_schedule(
            server, pool, session, spare, t0, duration, args.restarts, args.down_seconds
        )
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
        self_exits(verdict, pool, server)
        report(dsn, pool)
        scan_logs(pool)
        verdict.tell()
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
            # Clean: everything goes. Failed (or --keep): the logs and the data stay.
            server.clean_up(database, drop=ok and not args.keep)
        if ok and not args.keep:
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"logs kept in {logdir}")


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
