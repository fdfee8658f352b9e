"""Timer ticks (engine/timers.py): intervals, cron with seconds and time zones, DST,
coalescing of missed ticks, one-shot datetimes, and settings that cannot be scheduled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from attune_pg.engine import timers

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def test_interval_first_tick_and_on_time_tick() -> None:
    params = {"unit": "minutes", "interval": 5}
    assert timers.first_fire("interval", params, T0) == T0 + timedelta(minutes=5)
    tick = timers.due("interval", params, T0, T0 + timedelta(seconds=3))
    assert tick.missed == 0
    assert tick.next_fire_at == T0 + timedelta(minutes=5)


def test_interval_missed_ticks_coalesce_into_one_event() -> None:
    params = {"unit": "seconds", "interval": 10}
    # Down for 95 s: ticks at 0, 10, ..., 90 were due -> one event standing for 10 ticks.
    tick = timers.due("interval", params, T0, T0 + timedelta(seconds=95))
    assert tick.scheduled_at == T0
    assert tick.missed == 9
    assert tick.next_fire_at == T0 + timedelta(seconds=100)
    payload = timers.payload("interval", params, tick, T0 + timedelta(seconds=95), 4)
    assert payload["missed_ticks"] == 9
    assert payload["interval_seconds"] == 10
    assert payload["execution_count"] == 4
    assert payload["type"] == "interval"


def test_cron_six_fields_seconds_first() -> None:
    params = {"expression": "*/15 * * * * *"}
    first = timers.first_fire("cron", params, T0 + timedelta(seconds=1))
    assert first == T0 + timedelta(seconds=15)
    tick = timers.due("cron", params, first, first + timedelta(seconds=31))
    assert tick.missed == 2  # :30 and :45 folded into the :15 event
    assert tick.next_fire_at == T0 + timedelta(seconds=60)


def test_cron_five_fields_in_a_time_zone() -> None:
    params = {"expression": "30 8 * * 1-5", "timezone": "America/New_York"}
    first = timers.first_fire("cron", params, T0)  # Sunday 1 March 2026, 07:00 in New York
    assert first is not None
    local = first.astimezone(ZoneInfo("America/New_York"))
    assert (local.weekday(), local.hour, local.minute) == (0, 8, 30)


def test_cron_dst_spring_forward_runs_once_after_the_gap() -> None:
    params = {"expression": "30 2 * * *", "timezone": "Europe/Berlin"}
    # 29 March 2026: 02:00 -> 03:00 in Berlin; 02:30 does not exist that day.
    before = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    first = timers.first_fire("cron", params, before)
    tick = timers.due("cron", params, first, first)  # type: ignore[arg-type]
    local = [t.astimezone(ZoneInfo("Europe/Berlin")) for t in (first, tick.next_fire_at)]  # type: ignore[union-attr]
    assert (local[0].day, local[0].hour, local[0].minute) == (29, 3, 0)
    assert (local[1].day, local[1].hour, local[1].minute) == (30, 2, 30)


def test_cron_dst_fall_back_runs_once() -> None:
    params = {"expression": "30 2 * * *", "timezone": "Europe/Berlin"}
    # 25 October 2026: 03:00 -> 02:00; 02:30 happens twice but fires once.
    first = timers.first_fire("cron", params, datetime(2026, 10, 24, 12, 0, tzinfo=UTC))
    assert first is not None
    tick = timers.due("cron", params, first, first)
    assert tick.next_fire_at is not None
    assert tick.next_fire_at - first == timedelta(hours=25)


def test_datetime_fires_once_and_never_in_the_past() -> None:
    params = {"fire_at": "2026-03-01T13:00:00", "timezone": "Europe/Paris"}
    assert timers.first_fire("datetime", params, T0) is None  # 13:00 Paris = 12:00 UTC
    params = {"fire_at": "2026-03-01T12:30:00Z"}
    first = timers.first_fire("datetime", params, T0)
    assert first == T0 + timedelta(minutes=30)
    tick = timers.due("datetime", params, first, first + timedelta(seconds=2))
    assert tick.next_fire_at is None
    payload = timers.payload("datetime", params, tick, first + timedelta(seconds=2), 1)
    assert payload["type"] == "one_shot"
    assert payload["delay_ms"] == 2000


@pytest.mark.parametrize(
    ("kind", "params", "field"),
    [
        ("interval", {"unit": "weeks", "interval": 1}, "unit"),
        ("interval", {"unit": "seconds", "interval": 0}, "interval"),
        ("cron", {"expression": "* * *"}, "expression"),
        ("cron", {"expression": "61 * * * *"}, "expression"),
        ("cron", {"expression": "* * * * *", "timezone": "Mars/Olympus"}, "timezone"),
        ("datetime", {"fire_at": "next tuesday"}, "fire_at"),
    ],
)
def test_settings_that_cannot_be_scheduled_name_the_field(
    kind: timers.Kind, params: dict[str, object], field: str
) -> None:
    with pytest.raises(timers.TimerError) as caught:
        timers.check(kind, params)
    assert caught.value.field == field
