"""`attune-pg doctor`'s judgement: facts in (store/health.py), findings out.

Pure: no database, no clock. Every problem says what is wrong and what to do about it,
in one line. A `note` is something worth knowing that is not a fault (a check this login
may not run, a worker that was not started yet); only problems make doctor exit 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from attune_pg.store.health import Facts

Status = Literal["ok", "problem", "note"]

MIN_VERSION = 140000
HOT_TABLES = ("task_execution", "task_state", "workflow_execution", "inquiry", "worker")


@dataclass(frozen=True)
class Thresholds:
    snapshot_seconds: float = 300.0  # a snapshot held longer holds back vacuum for too long
    dead_ratio: float = 0.2  # dead rows / all rows of a hot table
    dead_min: int = 10_000  # ...and at least this many dead rows (small tables churn)
    notify_usage: float = 0.2  # fraction of the NOTIFY queue in use
    connections_ratio: float = 0.9  # connections in use / max_connections


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    message: str
    fix: str | None = None

    def line(self) -> str:
        label = {"ok": "ok", "problem": "PROBLEM", "note": "note"}[self.status]
        fix = f" -> {self.fix}" if self.fix else ""
        return f"{label:<8} {self.check:<11} {self.message}{fix}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "status": self.status,
            "message": self.message,
            "fix": self.fix,
        }


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def diagnose(facts: Facts, limits: Thresholds = Thresholds()) -> list[Finding]:
    out: list[Finding] = []
    out += _server(facts.server, limits)
    out += _schema(facts)
    if facts.applied:
        out += _workers(facts)
        out += _stuck(facts)
        out += _dead_rows(facts, limits)
    out += _vacuum(facts, limits)
    out += _notify(facts, limits)
    out += [
        Finding(
            check,
            "note",
            f"not checked: {reason}",
            "run doctor as the schema owner or a login in pg_monitor for this check",
        )
        for check, reason in facts.unknown
    ]
    return out


def _server(server: dict[str, Any], limits: Thresholds) -> list[Finding]:
    out = [
        Finding(
            "connection",
            "ok",
            f"PostgreSQL {server['version']}, database {server['database']} as {server['login']}",
        )
    ]
    if server["version_num"] < MIN_VERSION:
        out.append(
            Finding(
                "server",
                "problem",
                f"PostgreSQL {server['version']} is older than 14, which attune_pg needs",
                "upgrade the server to PostgreSQL 14 or later",
            )
        )
    unsafe = []
    if server["fsync"] != "on":
        unsafe.append(
            Finding(
                "durability",
                "problem",
                "fsync is off: a crash of the server or its machine can corrupt the database",
                "set fsync = on in postgresql.conf and reload (SELECT pg_reload_conf())",
            )
        )
    if server["full_page_writes"] != "on":
        unsafe.append(
            Finding(
                "durability",
                "problem",
                "full_page_writes is off: a crash can leave torn pages",
                "set full_page_writes = on and reload",
            )
        )
    if server["synchronous_commit"] == "off":
        unsafe.append(
            Finding(
                "durability",
                "problem",
                "synchronous_commit is off: a server crash loses the last commits (finished"
                " tasks run again, state changes are redone)",
                "set synchronous_commit = on (ALTER DATABASE/ROLE ... SET, or postgresql.conf)",
            )
        )
    out += unsafe or [
        Finding(
            "durability",
            "ok",
            f"fsync={server['fsync']} synchronous_commit={server['synchronous_commit']}"
            f" full_page_writes={server['full_page_writes']}",
        )
    ]
    used, most = server["connections"], server["max_connections"]
    if most and used / most >= limits.connections_ratio:
        out.append(
            Finding(
                "connections",
                "problem",
                f"{used} of max_connections={most} in use: new workers and clients will be refused",
                "raise max_connections or put a pooler in front (each worker holds 2, 3 with"
                " --metrics-port)",
            )
        )
    if not server["sees_all_sessions"]:
        out.append(
            Finding(
                "vacuum",
                "note",
                f"{server['login']} cannot see other users' sessions: held snapshots of other"
                " logins are not detected",
                f"GRANT pg_monitor TO {server['login']}",
            )
        )
    return out


def _schema(facts: Facts) -> list[Finding]:
    if not facts.applied:
        if any(check == "schema" for check, _ in facts.unknown):
            return []
        return [
            Finding(
                "schema",
                "problem",
                "no attune schema in this database",
                "run `attune-pg init` as the role that should own it",
            )
        ]
    pending = sorted(set(facts.available) - facts.applied)
    unknown = sorted(facts.applied - set(facts.available))
    out = []
    if pending:
        names = ", ".join(f"{v:04d}_{facts.available[v]}" for v in pending)
        out.append(
            Finding(
                "schema",
                "problem",
                f"{len(pending)} migration{'s' if len(pending) > 1 else ''} pending ({names})",
                "run `attune-pg init` as the schema owner",
            )
        )
    if unknown:
        out.append(
            Finding(
                "schema",
                "problem",
                f"the database has migration {', '.join(f'{v:04d}' for v in unknown)}, which this"
                " attune-pg does not know: it is older than the schema",
                "upgrade attune-pg on this machine",
            )
        )
    if not out:
        out.append(Finding("schema", "ok", f"at version {max(facts.applied)}, nothing pending"))
    return out


def _workers(facts: Facts) -> list[Finding]:
    if facts.workers is None:
        return []
    alive = [w for w in facts.workers if w["state"] == "alive"]
    lost = [w for w in facts.workers if w["state"] == "lost"]
    out = []
    for w in lost[:10]:
        holding = (
            f"; still holds {w['holding']} running tasks (a live worker requeues them)"
            if w["holding"]
            else ""
        )
        out.append(
            Finding(
                "workers",
                "problem",
                f"worker {w['id']} (host {w['hostname']}, pid {w['pid']}) lost: no heartbeat for"
                f" {_ago(w['silent_for'])} and no clean stop{holding}",
                "find out why it died (OOM killer, kill -9, lost network); once known,"
                f" DELETE FROM attune.worker WHERE id = '{w['id']}'",
            )
        )
    if len(lost) > 10:
        out.append(Finding("workers", "problem", f"... and {len(lost) - 10} more lost workers"))
    backlog = facts.backlog or {}
    waiting = backlog.get("tasks_ready") or backlog.get("executions_requested")
    if not alive:
        out.append(
            Finding(
                "workers",
                "problem",
                "no worker is alive" + (": work is waiting and nothing runs it" if waiting else ""),
                "start attune-worker (see docs/operations.md, Running workers)",
            )
        )
    else:
        out.append(
            Finding("workers", "ok", f"{len(alive)} alive, {len(lost)} lost in the last day")
        )
    return out


def _stuck(facts: Facts) -> list[Finding]:
    s = facts.stuck
    if s is None:
        return []
    out = []
    if s["lease_expired"]:
        out.append(
            Finding(
                "stuck",
                "problem",
                f"{s['lease_expired']} running tasks whose lease expired"
                f" {_ago(s['lease_expired_for'])} ago: their worker died and no live worker"
                " has requeued them",
                "make sure a worker runs; it requeues them within 5 s",
            )
        )
    if s["unclaimed"]:
        out.append(
            Finding(
                "stuck",
                "problem",
                f"{s['unclaimed']} tasks ready but unclaimed for over a minute (oldest"
                f" {_ago(s['unclaimed_for'])})",
                "no worker runs, all slots are busy, or workers cannot connect: check"
                " attune.worker_status and the worker logs; add workers or --concurrency",
            )
        )
    if s["reclaimed"]:
        out.append(
            Finding(
                "stuck",
                "problem",
                f"{s['reclaimed']} tasks claimed more than 3 times: their action kills its"
                " worker or outlives its lease",
                "SELECT * FROM attune.stuck_tasks WHERE reason LIKE 'claimed%'; cancel the"
                " execution if the action cannot succeed",
            )
        )
    if s["stalled"]:
        ids = ", ".join(str(i) for i in s["stalled"])
        out.append(
            Finding(
                "stuck",
                "problem",
                f"executions {ids} are running or canceling with no live task for 10 minutes",
                "SELECT attune.cancel_execution(id) for each (runbook: an execution that no"
                " longer moves), and report the workflow",
            )
        )
    return out or [Finding("stuck", "ok", "no stuck tasks or executions")]


def _vacuum(facts: Facts, limits: Thresholds) -> list[Finding]:
    out = []
    snap = facts.snapshot
    if (
        snap is not None
        and snap["seconds"] is not None
        and snap["seconds"] > limits.snapshot_seconds
    ):
        out.append(
            Finding(
                "vacuum",
                "problem",
                f"session {snap['pid']} ({snap['application_name'] or '-'}, {snap['login']},"
                f" {snap['state']}) has held a snapshot for {_ago(snap['seconds'])}"
                f" ({snap['xid_age']} transactions): vacuum cannot remove dead rows meanwhile,"
                " and the queue slows down",
                f"end it: SELECT pg_terminate_backend({snap['pid']});"
                f" last query: {snap['query']!r}",
            )
        )
    for holder in facts.holders or []:
        seconds = holder["seconds"]
        if seconds is None or seconds > limits.snapshot_seconds:
            held = f" for {_ago(seconds)}" if seconds is not None else ""
            out.append(
                Finding(
                    "vacuum",
                    "problem",
                    f"{holder['holder']} holds back vacuum{held}",
                    holder["fix"],
                )
            )
    if not out and not any(check == "vacuum" for check, _ in facts.unknown):
        age = "" if snap is None else f" (oldest snapshot {_ago(snap['seconds'])})"
        out.append(Finding("vacuum", "ok", f"nothing holds back vacuum{age}"))
    return out


def _dead_rows(facts: Facts, limits: Thresholds) -> list[Finding]:
    if facts.tables is None:
        return []
    out = []
    for t in facts.tables:
        live, dead = int(t["live"] or 0), int(t["dead"] or 0)
        ratio = dead / (live + dead) if live + dead else 0.0
        if dead >= limits.dead_min and ratio >= limits.dead_ratio:
            out.append(
                Finding(
                    "dead rows",
                    "problem",
                    f"attune.{t['table_name']} is {ratio:.0%} dead rows ({dead:,} dead, {live:,}"
                    f" live; last vacuum {_ago(t['vacuumed_ago'])} ago): claims and advances"
                    " slow down",
                    "look for a held snapshot (vacuum check); then"
                    f" VACUUM (VERBOSE) attune.{t['table_name']}",
                )
            )
    return out or [Finding("dead rows", "ok", "hot tables are vacuumed")]


def _notify(facts: Facts, limits: Thresholds) -> list[Finding]:
    usage = facts.notify_usage
    if usage is None:
        return []
    if usage >= limits.notify_usage:
        return [
            Finding(
                "notify",
                "problem",
                f"the NOTIFY queue is {usage:.1%} full: a session that LISTENs is stuck in a"
                " long transaction; when full, every NOTIFY (every state change) fails",
                "find the session with the oldest snapshot (vacuum check) and end it",
            )
        ]
    return [Finding("notify", "ok", f"NOTIFY queue {usage:.2%} used")]
