"""The core timers' ticks: when `core.intervaltimer`, `core.crontimer` and
`core.datetimetimer` fire, and the payloads of their events (Attune's shapes). Pure:
the current time always comes in as an argument (the database clock).

Cron: 5 fields, or 6 with seconds first, evaluated by `cronsim` in the timer's
timezone with Debian cron's rules for DST: a time skipped by a spring-forward
transition fires at the first valid moment after it; a time repeated by a fall-back
transition fires once.

A worker that finds a timer late by more than one period fires ONE event for all the
ticks that passed: `missed_ticks` counts the ones folded into it, `scheduled_at` is the
earliest, and the timer moves to the first tick after now.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

Kind = Literal["interval", "cron", "datetime"]

# The core pack's timer triggers, by ref.
TIMER_TRIGGERS: dict[str, Kind] = {
    "core.intervaltimer": "interval",
    "core.crontimer": "cron",
    "core.datetimetimer": "datetime",
}

UNIT_SECONDS = {"seconds": 1, "minutes": 60, "hours": 3600}
# Counting missed cron ticks one by one stops here (a per-second cron down for a
# week); the event then says "at least" this many.
MAX_COUNTED_TICKS = 100_000


class TimerError(ValueError):
    """Timer settings that cannot be scheduled; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Tick:
    scheduled_at: datetime  # the (earliest) tick this event stands for
    missed: int  # further ticks that were due and are folded into this event
    next_fire_at: datetime | None  # None: nothing more to fire


def interval_seconds(params: Mapping[str, Any]) -> int:
    unit = params.get("unit", "seconds")
    if unit not in UNIT_SECONDS:
        raise TimerError("unit", f"must be one of {', '.join(UNIT_SECONDS)}, got {unit!r}")
    interval = params.get("interval")
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise TimerError("interval", f"must be a whole number >= 1, got {interval!r}")
    return interval * UNIT_SECONDS[unit]


def zone(params: Mapping[str, Any]) -> ZoneInfo:
    name = params.get("timezone") or "UTC"
    if not isinstance(name, str):
        raise TimerError("timezone", f"must be a string, got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimerError("timezone", f"unknown time zone {name!r}") from None


def cron_expression(params: Mapping[str, Any]) -> str:
    expr = params.get("expression")
    if not isinstance(expr, str) or len(expr.split()) not in (5, 6):
        raise TimerError("expression", f"needs 5 fields, or 6 with seconds first; got {expr!r}")
    try:
        CronSim(expr, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise TimerError("expression", f"{expr!r} is not a valid cron expression: {exc}") from None
    return expr


def fire_at(params: Mapping[str, Any]) -> datetime:
    text = params.get("fire_at")
    if not isinstance(text, str):
        raise TimerError("fire_at", f"must be an ISO-8601 date and time, got {text!r}")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise TimerError("fire_at", f"{text!r} is not an ISO-8601 date and time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=zone(params))
    return when.astimezone(UTC)


def check(kind: Kind, params: Mapping[str, Any]) -> None:
    """Raise TimerError for settings that cannot be scheduled."""
    if kind == "interval":
        interval_seconds(params)
    elif kind == "cron":
        cron_expression(params)
        zone(params)
    else:
        zone(params)
        fire_at(params)


def _cron_after(params: Mapping[str, Any], after: datetime) -> CronSim:
    return CronSim(cron_expression(params), after.astimezone(zone(params)))


def first_fire(kind: Kind, params: Mapping[str, Any], now: datetime) -> datetime | None:
    """The first tick of a timer registered at `now` (None: a datetime already past)."""
    if kind == "interval":
        return now + timedelta(seconds=interval_seconds(params))
    if kind == "cron":
        return next(_cron_after(params, now)).astimezone(UTC)
    when = fire_at(params)
    return when if when > now else None


def due(kind: Kind, params: Mapping[str, Any], scheduled: datetime, now: datetime) -> Tick:
    """The event for a tick due at `scheduled` (<= now), and the tick after `now`."""
    if kind == "datetime":
        return Tick(scheduled, 0, None)
    if kind == "interval":
        step = interval_seconds(params)
        missed = max(0, math.floor((now - scheduled).total_seconds() / step))
        return Tick(scheduled, missed, scheduled + timedelta(seconds=step * (missed + 1)))
    ticks = _cron_after(params, scheduled)
    missed = 0
    for tick in ticks:
        if tick > now:
            return Tick(scheduled, missed, tick.astimezone(UTC))
        missed += 1
        if missed >= MAX_COUNTED_TICKS:
            break
    return Tick(scheduled, missed, next(_cron_after(params, now)).astimezone(UTC))


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def payload(
    kind: Kind, params: Mapping[str, Any], tick: Tick, fired_at: datetime, count: int
) -> dict[str, Any]:
    """The event payload (Attune's fields, plus `missed_ticks`); `count` is how many
    events this timer has emitted, this one included."""
    if kind == "datetime":
        return {
            "type": "one_shot",
            "fire_at": _iso(tick.scheduled_at),
            "fired_at": _iso(fired_at),
            "scheduled_at": _iso(tick.scheduled_at),
            "timezone": params.get("timezone") or "UTC",
            "delay_ms": max(0, round((fired_at - tick.scheduled_at).total_seconds() * 1000)),
            "execution_count": count,
        }
    common = {
        "fired_at": _iso(fired_at),
        "scheduled_at": _iso(tick.scheduled_at),
        "next_fire_at": _iso(tick.next_fire_at),
        "execution_count": count,
        "missed_ticks": tick.missed,
    }
    if kind == "interval":
        return {"type": "interval", "interval_seconds": interval_seconds(params), **common}
    return {
        "type": "cron",
        "expression": params["expression"],
        "timezone": params.get("timezone") or "UTC",
        **common,
    }
