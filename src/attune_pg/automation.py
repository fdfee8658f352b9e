"""The transactions that make workflows start themselves; any worker runs them.

- `process_events`: pending events (from `attune.emit_event`) are locked in a batch
  (SKIP LOCKED), matched against the enabled rules of their triggers by the workflow
  template engine, and for each rule that fires an enforcement and an execution are
  written, and the events marked processed — all in ONE transaction. A crash rolls the
  whole batch back and another worker redoes it: every (rule, event) gets exactly one
  enforcement (also a unique key) and at most one execution.
- `fire_timers`: due timers are locked (SKIP LOCKED, DB clock), each emits one event
  for all the ticks that passed (`missed_ticks` counts the coalesced ones), which is
  matched against its own rule at once, and moves to its next tick — one transaction.

Why matching is not in SQL: conditions and action_params are Jinja templates, which
only the Python engine evaluates. `emit_event` validates and stores the event in the
caller's transaction (a bad payload raises and stores nothing); the rules run a moment
later in the worker's transaction, with the same guarantees.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg

from attune_pg.engine import timers
from attune_pg.engine.rules import EventView, evaluate
from attune_pg.store import automation as store

log = logging.getLogger("attune_pg.automation")


@dataclass
class EnforceStats:
    events: int = 0
    enforcements: int = 0
    executions: list[int] = field(default_factory=list)


def _enforce(
    conn: psycopg.Connection,
    events: Sequence[store.EventRow],
    rules: Sequence[store.RuleRow],
    stats: EnforceStats,
) -> None:
    """Match `events` against `rules` and write enforcements and executions."""
    by_trigger: dict[str, list[store.RuleRow]] = defaultdict(list)
    for row in rules:
        by_trigger[row.rule.trigger_ref].append(row)
    ok = store.runnable(conn, [r.rule.action_ref for r in rules]) if rules else set()
    fired: list[tuple[str, int, dict[str, object]]] = []  # rule, event, parameters
    failed: list[tuple[str, int, None, str, dict[str, object] | None]] = []
    for event in events:
        # `created` in UTC, as emit_event writes it for the rules it matches in SQL.
        created = event.created_at.astimezone(UTC).isoformat()
        view = EventView(event.id, event.trigger_ref, event.payload, created)
        for row in by_trigger.get(event.trigger_ref, ()):
            rule = row.rule
            if event.rule_ref is not None and rule.ref != event.rule_ref:
                continue
            if event.deferred is not None and rule.ref not in event.deferred:
                continue  # emit_event matched it in SQL (each pair has one path)
            verdict = evaluate(rule, view, row.pack_config)
            if verdict.outcome == "skip":
                continue
            if verdict.outcome == "fire" and rule.action_ref not in ok:
                error: dict[str, object] = {
                    "type": "UnknownAction",
                    "message": f"rule {rule.ref!r}: {rule.action_ref!r} is not registered"
                    " or is disabled",
                }
                failed.append((rule.ref, event.id, None, "failed", error))
            elif verdict.outcome == "fire":
                assert verdict.parameters is not None
                fired.append((rule.ref, event.id, verdict.parameters))
            else:
                failed.append((rule.ref, event.id, None, "failed", verdict.error))
    actions = {r.rule.ref: r.rule.action_ref for r in rules}
    ids = store.start_executions(
        conn, [(actions[rule], params, f"rule:{rule}") for rule, _, params in fired]
    )
    written = [
        (rule, event, execution, "succeeded", None)
        for (rule, event, _), execution in zip(fired, ids, strict=True)
    ]
    store.insert_enforcements(conn, [*written, *failed])
    stats.events += len(events)
    stats.enforcements += len(written) + len(failed)
    stats.executions.extend(ids)


def _match(conn: psycopg.Connection, events: Sequence[store.EventRow], stats: EnforceStats) -> None:
    rules = store.rules_for_triggers(conn, sorted({e.trigger_ref for e in events}))
    _enforce(conn, events, rules, stats)
    store.mark_processed(conn, [e.id for e in events])


def process_events(conn: psycopg.Connection, limit: int = 100) -> EnforceStats:
    """Match one batch of pending events; returns what was written.

    A batch that fails (not an outage) is redone one event at a time, and an event that
    fails on its own ends `failed` with the error, so one bad event cannot wedge the
    queue for every worker.
    """
    stats = EnforceStats()
    try:
        with conn.transaction():
            events = store.claim_events(conn, limit)
            if not events:
                return stats
            _match(conn, events, stats)
        return stats
    except psycopg.OperationalError:
        raise
    except Exception as exc:
        log.warning("matching a batch of events failed (%s); retrying one by one", exc)
    stats = EnforceStats()
    for event in events:
        try:
            with conn.transaction():
                _match(conn, store.claim_event(conn, event.id), stats)
        except psycopg.OperationalError:
            raise
        except Exception as exc:
            log.exception("event %s could not be matched", event.id)
            error = {"type": type(exc).__name__, "message": str(exc).strip()[:1000]}
            with conn.transaction():
                store.mark_failed(conn, event.id, error)
    return stats


@dataclass
class TimerStats:
    fired: int = 0
    skipped: int = 0  # due timers of disabled rules, moved on without an event
    executions: list[int] = field(default_factory=list)
    # The rule of each tick fired and the trigger of each event it emitted (metrics).
    rules: list[str] = field(default_factory=list)
    triggers: list[str] = field(default_factory=list)


def fire_timers(conn: psycopg.Connection, limit: int = 100) -> TimerStats:
    """Fire one batch of due timers; each moves to its next tick in the same transaction."""
    stats = TimerStats()
    with conn.transaction():
        due = store.claim_timers(conn, limit)
        if not due:
            return stats
        rules = store.rules_by_ref(conn, [t.rule_ref for t in due])
        moves: list[tuple[str, datetime | None, int, bool]] = []
        emits: list[tuple[str, dict[str, object], str]] = []
        for timer in due:
            kind: timers.Kind = timer.kind  # type: ignore[assignment]
            tick = timers.due(kind, timer.params, timer.next_fire_at, timer.now)
            if timer.rule_ref not in rules:
                # The rule is disabled: the schedule goes on, nothing is emitted.
                moves.append((timer.rule_ref, tick.next_fire_at, timer.fire_count, False))
                stats.skipped += 1
                continue
            count = timer.fire_count + 1
            payload = timers.payload(kind, timer.params, tick, timer.now, count)
            emits.append((timer.trigger_ref, payload, timer.rule_ref))
            moves.append((timer.rule_ref, tick.next_fire_at, count, True))
            if tick.missed:
                log.warning(
                    "timer of rule %s: %d missed ticks coalesced into one event",
                    timer.rule_ref,
                    tick.missed,
                )
        created = store.insert_fired_events(conn, emits)
        events = [
            store.EventRow(event_id, trigger_ref, payload, rule_ref, created_at)
            for (trigger_ref, payload, rule_ref), (event_id, created_at) in zip(
                emits, created, strict=True
            )
        ]
        enforce = EnforceStats()
        if events:
            _enforce(conn, events, [rules[e.rule_ref or ""] for e in events], enforce)
        store.advance_timers(conn, moves)
        stats.fired = len(events)
        stats.executions = enforce.executions
        stats.rules = [e.rule_ref or "" for e in events]
        stats.triggers = [e.trigger_ref for e in events]
    return stats


def cancel_refused(conn: psycopg.Connection, execution_id: int) -> None:
    """A `cancel` policy refused a task of this execution: cancel the execution (its
    other tasks finish; the refused one ends canceled, never run, its error says why)."""
    with conn.transaction():
        store.cancel_refused(conn, execution_id)  # no-op if it ended or is canceling


def timer_due_in(conn: psycopg.Connection) -> float | None:
    """Seconds until the next timer tick (negative: overdue), None without timers."""
    return store.timer_due_in(conn)
