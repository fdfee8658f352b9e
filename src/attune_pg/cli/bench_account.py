"""Per-step accounting for `attune-pg bench`: what each task step costs the server.

A `Meter` reads, before and after a measured load: the database's committed and
rolled-back transactions, the tuples written to attune's tables (inserted, updated,
deleted), the WAL position, and the CPU time of the worker processes and of the
PostgreSQL server (from /proc: each process's own time, plus its reaped children's,
plus every live descendant's; the postmaster reaps exited backends, so their CPU stays
counted). The server's CPU is only known when it runs on this machine (it does with the
embedded server); otherwise it is reported as unknown.

The cumulative statistics (commits, tuples) are flushed by each backend at most once a
second while it is busy; one that goes idle less than a second after its last flush
waits 10 s (PostgreSQL's PGSTAT_IDLE_INTERVAL) before flushing the rest, and no backend
can make another flush. So `settle()` waits 11 s before a reading: exact, at the price
of a few idle-worker polls (well under 0.01 commits per step at N = 5000). The bench's
own transactions (its polls) are counted by the caller and taken off the commits.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from attune_pg.store import benchsuite

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
SETTLE_SECONDS = 11.0  # > PGSTAT_IDLE_INTERVAL (10 s)


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, own CPU s, reaped children's CPU s) of a live process, from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    own = (int(fields[11]) + int(fields[12])) / _TICK
    children = (int(fields[13]) + int(fields[14])) / _TICK
    return ppid, own, children


def _processes() -> dict[int, tuple[int, float, float]]:
    found: dict[int, tuple[int, float, float]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            found[int(entry)] = st
    return found


def tree_cpu(roots: Iterable[int]) -> float:
    """CPU seconds used so far by the given processes and all their descendants (live
    ones read directly, exited ones through their parent's reaped-children time)."""
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total = 0.0
    seen: set[int] = set()
    todo = [pid for pid in roots if pid in procs]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        _, own, reaped = procs[pid]
        total += own + reaped
        todo.extend(children.get(pid, ()))
    return total


def postmaster_of(backend_pid: int) -> int | None:
    """The postmaster of a backend on this machine, or None when the server is elsewhere
    (no such process here, or one that is not PostgreSQL)."""
    st = _stat(backend_pid)
    if st is None:
        return None
    try:
        cmdline = Path(f"/proc/{st[0]}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return None
    return st[0] if os.path.basename(cmdline).startswith(b"postgres") else None


@dataclass(frozen=True)
class Reading:
    server: benchsuite.ServerCounters
    worker_cpu: float
    pg_cpu: float | None


@dataclass(frozen=True)
class Cost:
    """What `steps` task steps cost, in total; per step through the properties."""

    steps: int
    commits: int
    rollbacks: int
    inserted: int
    updated: int
    deleted: int
    hot_updated: int
    wal_bytes: int
    wal_fpi: int
    worker_cpu: float
    pg_cpu: float | None

    def per_step(self, value: float) -> float:
        return value / max(self.steps, 1)

    def __add__(self, other: Cost) -> Cost:
        """Two measured windows as one (the halves of a paired scenario)."""
        pg = None if self.pg_cpu is None or other.pg_cpu is None else self.pg_cpu + other.pg_cpu
        return Cost(
            steps=self.steps + other.steps,
            commits=self.commits + other.commits,
            rollbacks=self.rollbacks + other.rollbacks,
            inserted=self.inserted + other.inserted,
            updated=self.updated + other.updated,
            deleted=self.deleted + other.deleted,
            hot_updated=self.hot_updated + other.hot_updated,
            wal_bytes=self.wal_bytes + other.wal_bytes,
            wal_fpi=self.wal_fpi + other.wal_fpi,
            worker_cpu=self.worker_cpu + other.worker_cpu,
            pg_cpu=pg,
        )

    @property
    def tuples(self) -> int:
        return self.inserted + self.updated + self.deleted

    def line(self) -> str:
        pg = "n/a" if self.pg_cpu is None else f"{self.per_step(self.pg_cpu) * 1000:.3f}"
        return (
            f"per step: {self.per_step(self.commits):.2f} commits,"
            f" {self.per_step(self.tuples):.1f} tuples written"
            f" ({self.per_step(self.inserted):.1f} ins, {self.per_step(self.updated):.1f} upd"
            f" [{self.per_step(self.hot_updated):.1f} HOT], {self.per_step(self.deleted):.1f} del),"
            f" {self.per_step(self.wal_bytes):,.0f} WAL bytes"
            f" ({self.per_step(self.wal_fpi):.2f} full-page images),"
            f" CPU ms: workers {self.per_step(self.worker_cpu) * 1000:.3f}, PostgreSQL {pg}"
        )


class Meter:
    """Readings of one database and a set of worker processes."""

    def __init__(self, conn: psycopg.Connection, worker_pids: Sequence[int]) -> None:
        self.conn = conn
        self.worker_pids = list(worker_pids)
        self.postmaster = postmaster_of(benchsuite.counters(conn).backend_pid)

    def read(self) -> Reading:
        server = benchsuite.counters(self.conn)
        pg = None if self.postmaster is None else tree_cpu([self.postmaster])
        return Reading(server, tree_cpu(self.worker_pids), pg)

    @staticmethod
    def settle() -> None:
        time.sleep(SETTLE_SECONDS)

    @staticmethod
    def cost(a: Reading, b: Reading, steps: int, own_transactions: int = 0) -> Cost:
        """From reading `a` to `b`; `own_transactions`: the bench's own commits between
        them (polls), not the engine's. The reading `a` itself commits once, counted."""
        sa, sb = a.server, b.server
        pg = None if a.pg_cpu is None or b.pg_cpu is None else b.pg_cpu - a.pg_cpu
        return Cost(
            steps=steps,
            commits=max(sb.commits - sa.commits - own_transactions - 1, 0),
            rollbacks=sb.rollbacks - sa.rollbacks,
            inserted=sb.inserted - sa.inserted,
            updated=sb.updated - sa.updated,
            deleted=sb.deleted - sa.deleted,
            hot_updated=sb.hot_updated - sa.hot_updated,
            wal_bytes=sb.wal_bytes - sa.wal_bytes,
            wal_fpi=sb.wal_fpi - sa.wal_fpi,
            worker_cpu=b.worker_cpu - a.worker_cpu,
            pg_cpu=pg,
        )
