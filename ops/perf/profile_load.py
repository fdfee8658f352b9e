"""Profile a saturated load: where a task step's time goes, in the workers and the server.

Keeps W workers saturated with single no-op workflows (or `--ref bench.three`) for
`--seconds`, while py-spy samples each worker (only the thread holding the GIL: the
Python CPU) and pg_stat_statements (loaded by the server: shared_preload_libraries,
track = all, so statements inside triggers count too) times every statement. Writes the
collapsed stacks next to `--out` and prints: the top Python functions by self and by
inclusive samples, and the top statements by total time, with calls and time per step.

    ATTUNE_HOME=... python ops/perf/profile_load.py --seconds 20 --out /tmp/prof
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from attune_pg import db, packs, shipped
from attune_pg.cli.bench_suite import Poller, start_workers, suite_pack, warm_up
from attune_pg.store import benchdata, benchsuite, migrate
from attune_pg.worker.procs import stop_worker

TAG = "bench-profile"


def _top(stacks: Path, n: int) -> list[str]:
    selfs: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        k = int(count)
        total += k
        names = [f.split(" (")[0] + " " + f.split("/")[-1].rstrip(")") for f in frames.split(";")]
        selfs[names[-1]] += k
        for name in set(names):
            incl[name] += k
    out = [f"{stacks.name}: {total} samples"]
    out += [f"  self {v / total:6.1%}  {k}" for k, v in selfs.most_common(n)]
    out += [f"  incl {v / total:6.1%}  {k}" for k, v in incl.most_common(n)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--ref", default="bench.single")
    ap.add_argument("--rate", type=int, default=250)
    ap.add_argument("--out", default="/tmp/attune-profile")
    ap.add_argument("--no-pyspy", action="store_true")
    ap.add_argument(
        "--hold",
        action="store_true",
        help="hold an idle REPEATABLE READ snapshot during the load (what degrades?)",
    )
    ap.add_argument(
        "--wall",
        action="store_true",
        help="sample every thread, idle or not (where the wall time goes), not only the"
        " thread holding the GIL",
    )
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dsn = db.resolve_dsn(None)
    with db.connect(dsn) as conn, tempfile.TemporaryDirectory() as tmp:
        migrate.migrate(conn)
        packs.register(conn, shipped.pack_dir("core"))
        packs.register(conn, suite_pack(Path(tmp)))
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        procs = start_workers(conn, dsn, a.workers, a.concurrency)
        spies: list[subprocess.Popen[bytes]] = []
        try:
            warm_up(conn, a.ref, a.workers * a.concurrency, 60)
            poller = Poller(conn)
            # A backlog of 40 turns' worth: with 4, the workers drained it between two
            # 50 ms refills and sat idle a third of the time (py-spy --wall showed it).
            target = a.workers * a.concurrency * 40
            conn.execute("SELECT pg_stat_statements_reset()")
            holder = None
            if a.hold:
                holder = psycopg.connect(
                    dsn, options="-c idle_in_transaction_session_timeout=0"
                )
                benchsuite.hold_snapshot(holder)
            t0 = benchdata.clock(conn)
            if not a.no_pyspy:
                for i, p in enumerate(procs):
                    spies.append(
                        subprocess.Popen(
                            [
                                str(Path(sys.executable).parent / "py-spy"), "record",
                                "--pid", str(p.pid), "--duration", str(int(a.seconds)),
                                "--rate", str(a.rate), "--format", "raw", "--nonblocking",
                                *(["--idle", "--threads"] if a.wall else ["--gil"]),
                                "-o", str(out / f"worker{i}.txt"),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    )
            end = time.monotonic() + a.seconds
            open_ids: list[int] = []
            while time.monotonic() < end:
                open_ids = benchsuite.still_open(conn, open_ids) if open_ids else []
                missing = target - len(open_ids)
                if missing > target // 4:
                    open_ids += poller.start(a.ref, missing, TAG)
                time.sleep(0.05)
            t1 = benchdata.clock(conn)
            if holder is not None:
                holder.close()
            for spy in spies:
                spy.wait(60)
            done = benchsuite.finished_between(conn, TAG, t0, t1)
            steps = done * (3 if a.ref == "bench.three" else 1)
            secs = (t1 - t0).total_seconds()
            print(f"load: {done} workflows, {steps} steps in {secs:.1f}s = {steps / secs:.0f}/s")
            rows = conn.execute(
                "SELECT calls, total_exec_time, rows, left(regexp_replace(query, '\\s+', ' ',"
                " 'g'), 110) FROM pg_stat_statements WHERE dbid = (SELECT oid FROM"
                " pg_database WHERE datname = current_database()) AND toplevel"
                " ORDER BY total_exec_time DESC LIMIT 30"
            ).fetchall()
            total_ms = sum(float(r[1]) for r in rows)
            print(
                f"top-level statements: {total_ms:.0f} ms in the top 30 ="
                f" {total_ms / steps:.3f} ms/step (triggers included in their statement)"
            )
            for calls, ms, nrows, q in rows:
                print(
                    f"  {ms / steps * 1000:7.1f} us/step {calls / steps:6.3f} calls/step"
                    f" {nrows / max(calls, 1):6.1f} rows/call  {q}"
                )
        finally:
            for proc in procs:
                stop_worker(proc)
    for i in range(len(spies)):
        path = out / f"worker{i}.txt"
        if path.exists():
            print("\n".join(_top(path, 25)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
