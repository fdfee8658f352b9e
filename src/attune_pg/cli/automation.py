"""`attune-pg rules|triggers|events|enforcements|timers|policies`: workflows that start
themselves (docs/automation.md)."""

from __future__ import annotations

import json
from typing import Any

import click

from attune_pg.cli.common import connection, dsn_option, errors_to_exit, table, to_json
from attune_pg.errors import ParameterError
from attune_pg.store import automation_read as store


def _payload(pairs: tuple[str, ...], payload_json: str | None) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    if payload_json:
        try:
            loaded = json.loads(payload_json)
        except json.JSONDecodeError as exc:
            raise ParameterError(f"--payload is not valid JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ParameterError("--payload must be a JSON object")
        payload.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ParameterError(f"-p {pair!r}: expected key=value")
        try:
            payload[key] = json.loads(value)  # numbers, booleans, lists, objects
        except json.JSONDecodeError:
            payload[key] = value
    return payload


# ----------------------------------------------------------------- rules


@click.group(name="rules")
def rules_group() -> None:
    """Rules: when an event of a trigger arrives, start an action or workflow."""


@rules_group.command("list")
@dsn_option
@errors_to_exit
def rules_list(dsn: str | None) -> None:
    """Every rule, with how often it fired and who matches it (MATCHED_BY: `sql`, in
    emit_event's transaction, or `worker`: see `rules show REF` for why)."""
    with connection(dsn) as conn:
        rows = store.rules(conn)
    table(
        rows,
        ["ref", "trigger_ref", "action_ref", "enabled", "matched_by", "enforcements",
         "failures", "last_fired_at"],
    )  # fmt: skip


@rules_group.command("show")
@click.argument("ref")
@dsn_option
@errors_to_exit
def rules_show(ref: str, dsn: str | None) -> None:
    """One rule: its definition and activity."""
    with connection(dsn) as conn:
        click.echo(to_json(store.rule(conn, ref)))


def _set_enabled(ref: str, enabled: bool, dsn: str | None) -> None:
    with connection(dsn) as conn:
        store.set_rule_enabled(conn, ref, enabled)
        conn.commit()
    click.echo(f"rule {ref} {'enabled' if enabled else 'disabled'}")


@rules_group.command("enable")
@click.argument("ref")
@dsn_option
@errors_to_exit
def rules_enable(ref: str, dsn: str | None) -> None:
    """Enable rule REF (a timer rule fires again from its next tick)."""
    _set_enabled(ref, True, dsn)


@rules_group.command("disable")
@click.argument("ref")
@dsn_option
@errors_to_exit
def rules_disable(ref: str, dsn: str | None) -> None:
    """Disable rule REF (events no longer start it; its timer emits nothing)."""
    _set_enabled(ref, False, dsn)


# ----------------------------------------------------------------- triggers and events


@click.group(name="triggers")
def triggers_group() -> None:
    """Event types (packs/<pack>/triggers/*.yaml), the core timers included."""


@triggers_group.command("list")
@dsn_option
@errors_to_exit
def triggers_list(dsn: str | None) -> None:
    """Every trigger and how many rules use it."""
    with connection(dsn) as conn:
        table(store.triggers(conn), ["ref", "timer", "rules", "description"])


@click.group(name="events")
def events_group() -> None:
    """Emit and inspect events."""


@events_group.command("emit")
@click.argument("trigger_ref")
@click.option(
    "-p", "--param", "pairs", multiple=True, help="key=value payload field (JSON if it parses)."
)
@click.option("--payload", "payload_json", help="The payload as a JSON object.")
@dsn_option
@errors_to_exit
def events_emit(
    trigger_ref: str, pairs: tuple[str, ...], payload_json: str | None, dsn: str | None
) -> None:
    """Emit an event of TRIGGER_REF (checked against its output schema); workers match it
    against the enabled rules at once."""
    payload = _payload(pairs, payload_json)
    with connection(dsn) as conn:
        event_id = store.emit(conn, trigger_ref, payload)
        conn.commit()
    click.echo(f"event {event_id} emitted ({trigger_ref})")


@events_group.command("list")
@click.option("--trigger", "trigger_ref", help="Only events of this trigger.")
@click.option("-n", "--limit", default=20, show_default=True)
@dsn_option
@errors_to_exit
def events_list(trigger_ref: str | None, limit: int, dsn: str | None) -> None:
    """The latest events."""
    with connection(dsn) as conn:
        rows = store.events(conn, trigger_ref, limit)
    table(rows, ["id", "trigger_ref", "rule_ref", "status", "created_at", "payload"])


@events_group.command("show")
@click.argument("event_id", type=int)
@dsn_option
@errors_to_exit
def events_show(event_id: int, dsn: str | None) -> None:
    """One event, with the enforcements it caused."""
    with connection(dsn) as conn:
        row = store.event(conn, event_id)
        row["enforcements"] = store.enforcements(conn, None, event_id, 1000)
    click.echo(to_json(row))


@click.group(name="enforcements")
def enforcements_group() -> None:
    """What rules did with events: one enforcement per (rule, event) that matched."""


@enforcements_group.command("list")
@click.option("--rule", "rule_ref", help="Only this rule's enforcements.")
@click.option("-n", "--limit", default=20, show_default=True)
@dsn_option
@errors_to_exit
def enforcements_list(rule_ref: str | None, limit: int, dsn: str | None) -> None:
    """The latest enforcements (status failed: the error says why no execution started)."""
    with connection(dsn) as conn:
        rows = store.enforcements(conn, rule_ref, None, limit)
    table(
        rows,
        ["id", "rule_ref", "event_id", "workflow_execution_id", "status", "error", "created_at"],
    )


# ----------------------------------------------------------------- timers and policies


@click.group(name="timers")
def timers_group() -> None:
    """Timers (rules on core.intervaltimer, core.crontimer, core.datetimetimer)."""


@timers_group.command("list")
@dsn_option
@errors_to_exit
def timers_list(dsn: str | None) -> None:
    """Every timer and its next fire time (DB clock)."""
    with connection(dsn) as conn:
        rows = store.timers(conn)
    table(rows, ["rule_ref", "kind", "params", "enabled", "next_fire_at", "last_fired_at",
                 "fire_count"])  # fmt: skip


@click.group(name="policies")
def policies_group() -> None:
    """Concurrency policies (packs/<pack>/policies/*.yaml)."""


@policies_group.command("list")
@dsn_option
@errors_to_exit
def policies_list(dsn: str | None) -> None:
    """Every policy with its slots in use and the executions or tasks waiting."""
    with connection(dsn) as conn:
        rows = store.policies(conn)
    table(rows, ["policy_ref", "resource_ref", "policy_type", "threshold", "on_limit", "key",
                 "used", "waiting"])  # fmt: skip


def register(cli: click.Group) -> None:
    for group in (
        rules_group,
        triggers_group,
        events_group,
        enforcements_group,
        timers_group,
        policies_group,
    ):
        cli.add_command(group)
