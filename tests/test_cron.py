"""Cron expressions in a time zone: the UTC instants they name, across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from conftest import write_config
from digest.config import load_settings
from digest.cron import Cron, CronError
from digest.errors import ConfigError

UTC = UTC


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_weekly_in_berlin_across_both_dst_changes():
    cron = Cron.parse("0 9 * * mon", "Europe/Berlin")
    # Spring forward on Sunday 2026-03-29: 09:00 CET is 08:00 UTC, 09:00 CEST is 07:00 UTC.
    assert cron.upcoming(utc(2026, 3, 17), 3) == [utc(2026, 3, 23, 8), utc(2026, 3, 30, 7), utc(2026, 4, 6, 7)]
    # Fall back on Sunday 2026-10-25.
    assert cron.upcoming(utc(2026, 10, 13), 3) == [utc(2026, 10, 19, 7), utc(2026, 10, 26, 8), utc(2026, 11, 2, 8)]
    assert [f"{cron.local(t):%a %H:%M %Z}" for t in cron.upcoming(utc(2026, 3, 17), 2)] == ["Mon 09:00 CET", "Mon 09:00 CEST"]


def test_a_time_skipped_by_spring_forward_fires_once_at_the_change():
    cron = Cron.parse("30 2 * * *", "Europe/Berlin")  # 02:30 does not exist on 2026-03-29
    assert cron.upcoming(utc(2026, 3, 27, 12), 3) == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 0),  # the change: 02:00 CET became 03:00 CEST
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]
    # Two wall times that land on the same instant fire once.
    both = Cron.parse("0 2,3 * * *", "Europe/Berlin").upcoming(utc(2026, 3, 28, 12), 3)
    assert both == [utc(2026, 3, 29, 1), utc(2026, 3, 30, 0), utc(2026, 3, 30, 1)]


def test_a_time_repeated_by_fall_back_fires_once_at_its_first_occurrence():
    cron = Cron.parse("30 2 * * *", "Europe/Berlin")  # 02:30 happens twice on 2026-10-25
    assert cron.upcoming(utc(2026, 10, 23, 12), 3) == [
        utc(2026, 10, 24, 0, 30),
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, not again at 02:30 CET (01:30 UTC)
        utc(2026, 10, 26, 1, 30),
    ]
    # Asking from inside the repeated hour still moves forward (APScheduler 3.11 loops here).
    assert cron.next_after(utc(2026, 10, 25, 1, 30)) == utc(2026, 10, 26, 1, 30)
    hourly = Cron.parse("0 * * * *", "Europe/Berlin")
    assert hourly.upcoming(utc(2026, 10, 24, 23, 30), 3) == [utc(2026, 10, 25, 0), utc(2026, 10, 25, 2), utc(2026, 10, 25, 3)]
    assert hourly.next_after(utc(2026, 10, 25, 1, 0)) == utc(2026, 10, 25, 2)


def test_new_york_and_utc():
    ny = Cron.parse("0 9 * * 1-5", "America/New_York")
    # US DST starts 2026-03-08: 09:00 EST = 14:00 UTC, 09:00 EDT = 13:00 UTC.
    assert ny.upcoming(utc(2026, 3, 5, 15), 3) == [utc(2026, 3, 6, 14), utc(2026, 3, 9, 13), utc(2026, 3, 10, 13)]
    assert Cron.parse("0 9 * * mon").upcoming(utc(2026, 3, 2, 9), 1) == [utc(2026, 3, 9, 9)]


def test_weekday_numbers_are_crontab_numbers():
    # 0 and 7 are Sunday, 1 is Monday (APScheduler 3 alone would read 0 as Monday).
    sunday, monday = utc(2026, 3, 1, 9), utc(2026, 3, 2, 9)
    for expr, first in [("0 9 * * 0", sunday), ("0 9 * * 7", sunday), ("0 9 * * 1", monday),
                        ("0 9 * * sun", sunday), ("0 9 * * 1-5", monday), ("0 9 * * 6-7", sunday), ("0 9 * * 5-6", utc(2026, 3, 6, 9)),
                        ("@weekly", utc(2026, 3, 1, 0))]:
        assert Cron.parse(expr).next_after(utc(2026, 2, 28, 12)) == first, expr


def test_a_weekday_with_a_step_runs_to_sunday_as_seven():
    # crontab's day-of-week range is 0-7, so "1/2" is "1-7/2": Monday, Wednesday, Friday, Sunday
    for expr in ("0 9 * * 1/2", "0 9 * * 1-7/2", "0 9 * * mon/2"):
        days = [f"{t:%a}" for t in Cron.parse(expr).upcoming(utc(2026, 3, 1, 12), 4)]  # from Sunday noon
        assert days == ["Mon", "Wed", "Fri", "Sun"], expr


def test_seconds_field_and_latest_slot():
    every2 = Cron.parse("*/2 * * * * *")
    assert every2.next_after(utc(2026, 1, 1, 0, 0, 1)) == utc(2026, 1, 1, 0, 0, 2)
    weekly = Cron.parse("0 9 * * mon")
    now = utc(2026, 3, 3, 12)  # Tuesday noon; the last slot was Monday 09:00, 27 h ago
    assert weekly.latest(now, timedelta(hours=24)) is None
    assert weekly.latest(now, timedelta(hours=27)) == utc(2026, 3, 2, 9)
    assert weekly.latest(utc(2026, 3, 2, 9), timedelta(0)) == utc(2026, 3, 2, 9)
    assert weekly.latest(now, timedelta(days=400)) == utc(2026, 3, 2, 9)


@pytest.mark.parametrize(
    "expr, message",
    [
        ("0 9 * *", "expected 5"),
        ("61 9 * * mon", "maximum value (59)"),
        ("0 9 * * funday", "bad day of week"),
        ("0 9 30 2 *", "never fires"),
    ],
)
def test_bad_cron_is_a_one_line_config_error(tmp_path, expr, message):
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace('cron = "0 9 * * mon"', f'cron = "{expr}"'))
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert "schedule.cron" in str(exc.value) and message in str(exc.value)
    with pytest.raises(CronError):
        Cron.parse(expr)



def test_the_apscheduler_trigger_moves_forward_through_the_repeated_hour():
    from digest.service.scheduler import CronSlots

    trigger = CronSlots(Cron.parse("*/30 * * * *", "Europe/Berlin"))
    now = utc(2026, 10, 25, 2, 45)  # as APScheduler asks after a pause: every run time up to now
    fired = [trigger.get_next_fire_time(None, utc(2026, 10, 24, 23, 50))]
    while len(fired) < 10:
        nxt = trigger.get_next_fire_time(fired[-1], now)
        assert nxt > fired[-1]
        if nxt > now:
            break
        fired.append(nxt)
    # 02:00 and 02:30 CEST, then the repeated 02:00-03:00 is not run again, then 03:00 and 03:30 CET.
    assert fired == [utc(2026, 10, 25, 0), utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 2), utc(2026, 10, 25, 2, 30)]
