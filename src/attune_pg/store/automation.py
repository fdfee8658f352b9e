"""SQL of triggers, rules, events, enforcements, timers and policies. Never commits:
`packs.register` and `automation.py` own the transactions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from attune_pg.engine.timers import first_fire
from attune_pg.spec.automation import PackAutomation
from attune_pg.spec.policies import PolicySpec
from attune_pg.spec.rule_sql import compile_rule
from attune_pg.spec.rules import RuleSpec
from attune_pg.spec.triggers import TriggerSpec
from attune_pg.store.queries import Q

Json = Any


def _json(value: Json) -> Jsonb | None:
    return None if value is None else Jsonb(value)


# ----------------------------------------------------------------- registration


def schema_present(conn: psycopg.Connection) -> bool:
    row = conn.execute(Q.automation_schema_present).fetchone()
    return bool(row and row[0])


def registered_triggers(conn: psycopg.Connection) -> dict[str, TriggerSpec]:
    return {
        row[0]: TriggerSpec(
            ref=row[0],
            description=row[1],
            parameters=row[2],
            output=row[3],
            timer=row[4],
            source_file=row[5],
        )
        for row in conn.execute(Q.trigger_list)
    }


def registered_policies(conn: psycopg.Connection) -> dict[str, PolicySpec]:
    return {
        row[0]: PolicySpec(
            ref=row[0],
            resource_ref=row[1],
            policy_type=row[2],
            threshold=row[3],
            on_limit=row[4],
            attributes=tuple(row[5]),
            description=row[6],
            enabled=row[7],
            resource_kind=row[8],
            source_file=row[9],
        )
        for row in conn.execute(Q.policy_list)
    }


def register(conn: psycopg.Connection, packs: Sequence[PackAutomation]) -> None:
    """Write each pack's triggers, rules, timers and policies in the caller's
    transaction. Triggers are replaced; rules, timers and policies are upserted so a
    timer keeps its schedule and a policy its counters when nothing about them changed."""
    row = conn.execute(Q.clock_now).fetchone()
    assert row is not None
    now: datetime = row[0]
    timers = {ref: t.timer for ref, t in registered_triggers(conn).items()}
    timers.update({t.ref: t.timer for pack in packs for t in pack.triggers})
    for pack in packs:
        conn.execute(Q.trigger_delete_pack, {"pack": pack.pack})
        for trigger in pack.triggers:
            conn.execute(
                Q.trigger_insert,
                {
                    "ref": trigger.ref,
                    "pack": pack.pack,
                    "name": trigger.name,
                    "description": trigger.description,
                    "parameters": Jsonb(trigger.parameters),
                    "output": _json(trigger.output),
                    "timer": trigger.timer,
                    "source_file": trigger.source_file,
                },
            )
        for rule in pack.rules:
            _write_rule(conn, pack.pack, rule)
        keep = [r.ref for r in pack.rules]
        conn.execute(Q.rule_delete_missing, {"pack": pack.pack, "keep": keep})
        timed = []
        for rule in pack.rules:
            kind = timers.get(rule.trigger_ref)
            if kind is None:
                continue
            timed.append(rule.ref)
            conn.execute(
                Q.timer_upsert,
                {
                    "rule_ref": rule.ref,
                    "trigger_ref": rule.trigger_ref,
                    "kind": kind,
                    "params": Jsonb(rule.trigger_params),
                    "next_fire_at": first_fire(kind, rule.trigger_params, now),  # type: ignore[arg-type]
                },
            )
        conn.execute(Q.timer_delete_missing, {"pack": pack.pack, "keep": timed})
        for policy in pack.policies:
            _write_policy(conn, pack.pack, policy)
        keep = [p.ref for p in pack.policies]
        conn.execute(Q.policy_delete_missing, {"pack": pack.pack, "keep": keep})
    conn.execute(Q.policy_repair)


def _write_rule(conn: psycopg.Connection, pack: str, rule: RuleSpec) -> None:
    compiled = compile_rule(rule)
    conn.execute(
        Q.rule_upsert,
        {
            "ref": rule.ref,
            "pack": pack,
            "label": rule.label or rule.ref,
            "description": rule.description,
            "trigger_ref": rule.trigger_ref,
            "trigger_params": Jsonb(rule.trigger_params),
            "conditions": _json(rule.conditions),
            "action_ref": rule.action_ref,
            "action_params": Jsonb(rule.action_params),
            "enabled": rule.enabled,
            "source_file": rule.source_file,
            "match_path": compiled.path,
            "match_note": compiled.note,
            "match_sql": compiled.match_sql,
            "params_sql": compiled.params_sql,
            "match_args": Jsonb(compiled.args),
        },
    )


def _write_policy(conn: psycopg.Connection, pack: str, policy: PolicySpec) -> None:
    conn.execute(
        Q.policy_upsert,
        {
            "ref": policy.ref,
            "pack": pack,
            "name": policy.name,
            "description": policy.description,
            "resource_ref": policy.resource_ref,
            "resource_kind": policy.resource_kind,
            "policy_type": policy.policy_type,
            "threshold": policy.threshold,
            "on_limit": policy.on_limit,
            "attributes": list(policy.attributes),
            "enabled": policy.enabled,
            "source_file": policy.source_file,
        },
    )


# ----------------------------------------------------------------- events and rules


@dataclass(frozen=True)
class EventRow:
    id: int
    trigger_ref: str
    payload: dict[str, Json]
    rule_ref: str | None  # a timer's event: only this rule
    created_at: datetime
    # The rules emit_event left to workers; None: every enabled rule of the trigger.
    deferred: list[str] | None = None


@dataclass(frozen=True)
class RuleRow:
    rule: RuleSpec
    pack_config: dict[str, Json]


def claim_events(conn: psycopg.Connection, n: int) -> list[EventRow]:
    return [EventRow(*row) for row in conn.execute(Q.event_claim, {"n": n})]


def insert_fired_events(
    conn: psycopg.Connection, events: Sequence[tuple[str, dict[str, Json], str]]
) -> list[tuple[int, datetime]]:
    """(trigger_ref, payload, rule_ref) -> (id, created_at), in input order."""
    if not events:
        return []
    rows = conn.execute(
        Q.event_insert_fired,
        {
            "triggers": [e[0] for e in events],
            "payloads": [Jsonb(e[1]) for e in events],
            "rules": [e[2] for e in events],
        },
    ).fetchall()
    return sorted((int(r[0]), r[1]) for r in rows)


def claim_event(conn: psycopg.Connection, event_id: int) -> list[EventRow]:
    return [EventRow(*row) for row in conn.execute(Q.event_claim_one, {"id": event_id})]


def mark_processed(conn: psycopg.Connection, ids: Sequence[int]) -> None:
    conn.execute(Q.event_mark_processed, {"ids": list(ids)})


def mark_failed(conn: psycopg.Connection, event_id: int, error: dict[str, Json]) -> None:
    conn.execute(Q.event_mark_failed, {"id": event_id, "error": Jsonb(error)})


def _rule_rows(rows: Sequence[Sequence[Any]]) -> list[RuleRow]:
    return [
        RuleRow(
            RuleSpec(
                ref=r[0],
                trigger_ref=r[1],
                action_ref=r[2],
                label=r[3],
                conditions=r[4],
                action_params=r[5],
                trigger_params=r[6],
            ),
            r[7] or {},
        )
        for r in rows
    ]


def rules_for_triggers(conn: psycopg.Connection, triggers: Sequence[str]) -> list[RuleRow]:
    return _rule_rows(conn.execute(Q.rule_for_triggers, {"triggers": list(triggers)}).fetchall())


def rules_by_ref(conn: psycopg.Connection, refs: Sequence[str]) -> dict[str, RuleRow]:
    rows = _rule_rows(conn.execute(Q.rule_for_refs, {"refs": list(refs)}).fetchall())
    return {r.rule.ref: r for r in rows}


def runnable(conn: psycopg.Connection, refs: Sequence[str]) -> set[str]:
    return {row[0] for row in conn.execute(Q.action_runnable, {"refs": sorted(set(refs))})}


def start_executions(
    conn: psycopg.Connection, starts: Sequence[tuple[str, dict[str, Json], str]]
) -> list[int]:
    """(ref, parameters, requested_by) -> execution ids, in input order."""
    if not starts:
        return []
    rows = conn.execute(
        Q.execution_start_many,
        {
            "refs": [s[0] for s in starts],
            "parameters": [Jsonb(s[1]) for s in starts],
            "who": [s[2] for s in starts],
        },
    ).fetchall()
    return sorted(int(r[0]) for r in rows)


def insert_enforcements(
    conn: psycopg.Connection,
    rows: Sequence[tuple[str, int, int | None, str, dict[str, Json] | None]],
) -> None:
    if not rows:
        return
    conn.execute(
        Q.enforcement_insert_many,
        {
            "rules": [r[0] for r in rows],
            "events": [r[1] for r in rows],
            "executions": [r[2] for r in rows],
            "statuses": [r[3] for r in rows],
            "errors": [_json(r[4]) for r in rows],
        },
    )


def cancel_refused(conn: psycopg.Connection, execution_id: int) -> None:
    conn.execute(Q.execution_cancel_refused, {"id": execution_id})


# ----------------------------------------------------------------- timers


@dataclass(frozen=True)
class TimerRow:
    rule_ref: str
    trigger_ref: str
    kind: str
    params: dict[str, Json]
    next_fire_at: datetime
    fire_count: int
    now: datetime


def claim_timers(conn: psycopg.Connection, n: int) -> list[TimerRow]:
    return [TimerRow(*row) for row in conn.execute(Q.timer_claim, {"n": n})]


def advance_timers(
    conn: psycopg.Connection, moves: Sequence[tuple[str, datetime | None, int, bool]]
) -> None:
    """(rule_ref, next_fire_at, fire_count, fired) for each claimed timer."""
    if not moves:
        return
    conn.execute(
        Q.timer_advance_many,
        {
            "rules": [m[0] for m in moves],
            "next": [m[1] for m in moves],
            "counts": [m[2] for m in moves],
            "fired": [m[3] for m in moves],
        },
    )


def timer_due_in(conn: psycopg.Connection) -> float | None:
    row = conn.execute(Q.timer_next_due).fetchone()
    return None if row is None or row[0] is None else float(row[0])
