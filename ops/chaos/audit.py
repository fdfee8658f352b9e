"""The chaos soak's checks, once everything has stopped.

The engine's own invariants (legal audit trails with one terminal event, no occurrence
twice, retries only after failures, no lease left behind, joins counted once, nothing
unfinished) are attune_pg.audit's, the same the tests assert. On top of them, what the
plan expects: each workflow's status and output, its task occurrences, publish events,
join rounds, inquiries and children; and that the workers alive across a restart
reconnected. Then two reports for the reader (not checks): how hard the chaos hit, and
what the worker logs say about errors.
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from attune_pg import audit as invariants
from attune_pg import machine
from attune_pg.store import audit as audit_store

from cluster import Pool, Server, connect, log
from plan import CANCEL_STEPS, Planned


@dataclass
class Verdict:
    lost: int = 0
    duplicated: int = 0
    tasks: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def tell(self, limit: int = 50) -> None:
        for text in self.problems[:limit]:
            log("PROBLEM: " + text)
        if len(self.problems) > limit:
            log(f"... and {len(self.problems) - limit} more problems")


def verify(
    dsn: str, plan: list[Planned], pool: Pool, server: Server, ready_db: Sequence[float]
) -> Verdict:
    v = Verdict()
    with connect(dsn) as conn:
        facts = audit_store.gather(conn)
        found = invariants.check(facts, finished=True)
        log(
            f"audit: {len(facts.workflows)} executions, {len(facts.tasks)} task rows,"
            f" {len(facts.joins)} join rounds: {len(found)} problems"
        )
        for p in found:
            v.problem(p.text)
        v.lost += invariants.count(found, "lost", "unfinished")
        v.duplicated += invariants.count(found, "duplicated")
        v.tasks = len(facts.tasks)

        outputs = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT id, status, output, error, parent_task_id FROM attune.workflow_execution"
            )
        }
        _expected_outcomes(v, plan, outputs)
        by_execution: dict[int, list[invariants.TaskRow]] = collections.defaultdict(list)
        for t in facts.tasks:
            by_execution[t.execution_id].append(t)
        _expected_tasks(v, plan, by_execution, outputs)
        _expected_events(v, plan, conn)
        _expected_joins(v, plan, facts.joins, by_execution)
        _expected_inquiries(v, plan, conn)
        _reconnected(v, conn, pool, server, ready_db)
    return v


def _expected_outcomes(
    v: Verdict, plan: list[Planned], outputs: dict[int, tuple[Any, ...]]
) -> None:
    """Every planned workflow started and ended with its status and output."""
    for p in plan:
        if p.id is None:
            v.lost += 1
            v.problem(f"workflow {p.index} ({p.ref}) was never started")
            continue
        row = outputs.get(p.id)
        if row is None:
            v.lost += 1
            v.problem(f"execution {p.id} of workflow {p.index} is missing")
            continue
        status, output, error, _ = row
        if status != p.status and status in machine.WORKFLOW_TERMINAL:
            v.problem(
                f"execution {p.id} ({p.kind}, {p.ref}) ended {status}, expected {p.status};"
                f" error: {json.dumps(error)}"
            )
        elif status == p.status and p.output is not None and output != p.output:
            v.problem(
                f"execution {p.id} ({p.kind}) output {json.dumps(output)}"
                f" != expected {json.dumps(p.output)}"
            )


def _expected_tasks(
    v: Verdict,
    plan: list[Planned],
    by_execution: dict[int, list[invariants.TaskRow]],
    outputs: dict[int, tuple[Any, ...]],
) -> None:
    """Every expected occurrence exists with its final status, and no other (the nested
    items' children included)."""
    for p in plan:
        if p.id is None:
            continue
        rows_of = by_execution.get(p.id, [])
        actual = {(r.task_name, r.iteration, r.item_index, r.attempt): r.status for r in rows_of}
        if p.tasks is None:  # cancels: whatever ran, ran once, and ended
            for r in rows_of:
                if r.attempt != 1 or r.iteration != 1 or r.task_name not in CANCEL_STEPS:
                    v.duplicated += 1
                    v.problem(
                        f"execution {p.id} ({p.kind}): unexpected task row"
                        f" {(r.task_name, r.iteration, r.item_index, r.attempt)}"
                    )
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
                children = [eid for eid, row in outputs.items() if row[3] == r.id]
                if len(children) != 1:
                    if len(children) > 1:
                        v.duplicated += len(children) - 1
                    else:
                        v.lost += 1
                    v.problem(f"nested task row {r.id} started {len(children)} children")
                    continue
                child = children[0]
                status, output, _, _ = outputs[child]
                assert r.item_index is not None
                name = p.params["names"][r.item_index]
                if status != "succeeded" or output != {"greeting": f"hello, {name}"}:
                    v.problem(f"child execution {child} ended {status} with {output}")
                child_tasks = {
                    (c.task_name, c.iteration, c.item_index, c.attempt): c.status
                    for c in by_execution[child]
                }
                if child_tasks != {("hello", 1, None, 1): "succeeded"}:
                    v.problem(f"child execution {child} has tasks {child_tasks}")


def _expected_events(v: Verdict, plan: list[Planned], conn: Any) -> None:
    """No task published twice (none of these workflows loops), and as many publish
    events as the mix leaves."""
    for eid, name, n in conn.execute(
        "SELECT workflow_execution_id, task_name, count(*) FROM attune.execution_event"
        " WHERE kind = 'publish' GROUP BY 1, 2 HAVING count(*) > 1"
    ):
        v.duplicated += n - 1
        v.problem(f"task {name} of execution {eid} published {n} times")
    published = conn.execute(
        "SELECT count(*) FROM attune.execution_event WHERE kind = 'publish'"
    ).fetchone()
    expected = sum(p.publishes for p in plan if p.id is not None)
    if published is None or published[0] != expected:
        v.problem(f"{published[0] if published else 0} publish events, expected {expected}")


def _expected_joins(
    v: Verdict,
    plan: list[Planned],
    joins: Sequence[invariants.JoinRound],
    by_execution: dict[int, list[invariants.TaskRow]],
) -> None:
    """One join round per joining workflow: all arrivals counted, succeeded, one row
    (no workflow of the mix retries its join)."""
    for j in joins:
        rows_of = [
            r
            for r in by_execution.get(j.execution_id, [])
            if r.task_name == j.task_name and r.iteration == j.iteration
        ]
        if len(rows_of) != 1:
            v.duplicated += max(len(rows_of) - 1, 0)
            v.problem(f"join {j.task_name} of execution {j.execution_id} ran {len(rows_of)} times")
        if j.status != "succeeded" or j.join_arrivals != j.join_required:
            v.problem(
                f"join {j.task_name} of execution {j.execution_id}: {j.status},"
                f" {j.join_arrivals}/{j.join_required} arrivals"
            )
    expected = sum(p.joins for p in plan if p.id is not None)
    if len(joins) != expected:
        v.problem(f"{len(joins)} join states, expected {expected}")


def _expected_inquiries(v: Verdict, plan: list[Planned], conn: Any) -> None:
    """One inquiry per approval, answered with the soak's answer."""
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


def _reconnected(
    v: Verdict, conn: Any, pool: Pool, server: Server, ready_db: Sequence[float]
) -> None:
    """Workers alive across a restart came back (a heartbeat after it, database clock)."""
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


def self_exits(v: Verdict, pool: Pool, server: Server) -> None:
    """A worker may exit by itself only if it started or ended in an outage (it cannot
    apply migrations then: code 5)."""
    unexpected = [
        (w, rc)
        for w, rc in pool.self_exits
        if not (server.in_outage(w.started, 2.0) or server.in_outage(w.exited_at or 0, 2.0))
    ]
    for w, rc in unexpected:
        v.problem(f"worker {w.seq} (pid {w.proc.pid}) exited with {rc}; see {w.log}")
    if pool.self_exits:
        log(
            f"{len(pool.self_exits)} worker(s) exited by themselves "
            f"({len(pool.self_exits) - len(unexpected)} of them started or ended in the outage)"
        )


# ----------------------------------------------------------------- reports (not checks)


def report(dsn: str, pool: Pool) -> None:
    """How hard the chaos hit."""
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
    """What the worker logs say about errors."""
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
