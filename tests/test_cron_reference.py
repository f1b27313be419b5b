"""digest.cron against an independent implementation, cronsim (which follows Debian's cron), over
generated expressions, time zones and start times around daylight-saving changes.

Where digest differs from cron by design, the rule is written out here and applied to cronsim's
answer, so any other difference is a bug:

1. DST (README, "On time, in your zone"): digest reads the expression on wall-clock time, then a
   wall-clock time skipped by a spring-forward change runs at the moment of the change, a time
   repeated by a fall-back change runs once, the first time, and wall-clock times that land on the
   same instant run once. `reference()` takes cronsim's wall-clock times (no zone) and applies
   exactly that. Debian cron does the same only for jobs at a specific time; a job whose minute or
   hour field starts with "*" (hourly, every 15 minutes) runs there on the clock as it is, so it
   misses skipped times and runs twice in a repeated hour. `test_debian_cron_agrees_...` compares
   with cronsim's own zone handling where Debian applies its rule.
2. Day of month and day of week both restricted (cron.py's docstring): both must match
   (`0 9 1-7 * mon` is the first Monday); Debian takes either. `walls()` intersects cronsim's
   answers for the two fields.
3. cronsim's extensions that digest does not read (`L`, `LW`, `5L`, `mon#1`) are not generated.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim, CronSimError

from digest.cron import Cron, CronError

UTC = UTC
# Lord_Howe moves by 30 minutes; Santiago changes at midnight (so 00:00 is skipped); Sydney is
# southern (forward in October); Kolkata has no DST.
ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "UTC",
         "America/Santiago", "Australia/Sydney"]
YEARS = (2025, 2026, 2027)
EXPRESSIONS_PER_ZONE = 80  # 560 expression x zone x start combinations in all, about 2 s here
UPCOMING = 6  # instants compared per combination

SECONDS = ["0", "*/20", "15,45", "59"]
MINUTES = ["0", "30", "*/15", "5-59/15", "*", "45", "0,30", "10-20", "*/7", "59", "0/20"]
HOURS = ["*", "2", "0-3", "*/2", "1,2,3", "9", "0", "3", "22-23", "1-10/3", "2-3", "0/5"]
DAYS = ["*", "1", "1-7", "15", "31", "*/10", "29", "8-14"]
MONTHS = ["*", "3", "10", "3,4,10,11", "jan-jun", "*/2", "nov", "sep-dec"]
WEEKDAYS = ["*", "mon", "0", "7", "1-5", "sat,sun", "6-7", "fri", "sun", "1-7/2", "*/2", "1/2"]
# minutes before (-) or after a DST change, for the start instant; -1500: the day before
START_OFFSETS = [-1500, -180, -61, -30, -1, 0, 1, 29, 30, 59, 60, 90, 121]


def zone(name: str) -> tzinfo:
    return UTC if name == "UTC" else ZoneInfo(name)


def wall_of(instant: datetime, tz: tzinfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def instant_of(wall: datetime, tz: tzinfo) -> datetime:
    """Rule 1: when wall-clock time `wall` runs."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)  # fold=0: the first occurrence if repeated
    if wall_of(first, tz) == wall:
        return first
    # Skipped: the change is the first instant whose wall-clock time is later. fold=1 reads the
    # wall time with the offset after the change, an instant before it; every change in these
    # zones falls on a whole minute, so a walk by minutes finds it.
    t = wall.replace(tzinfo=tz, fold=1).astimezone(UTC).replace(second=0, microsecond=0)
    while wall_of(t, tz) <= wall:
        t += timedelta(minutes=1)
    return t


def walls(expr: str, start: datetime) -> Iterator[datetime]:
    """cronsim's wall-clock times after naive `start`, with rule 2 for the day fields."""
    fields = expr.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    day, weekday = fields[3], fields[5]
    if day.startswith("*") or weekday.startswith("*"):  # Debian: then both must match, as in digest
        yield from CronSim(" ".join(fields), start)
        return
    by_day = " ".join([*fields[:5], "*"])
    by_weekday = " ".join([*fields[:3], "*", fields[4], weekday])

    def first_from(expr: str, t: datetime) -> datetime | None:  # None: nothing in 50 years
        return next(CronSim(expr, t - timedelta(seconds=1)), None)  # CronSim starts after its time

    one_second = timedelta(seconds=1)
    t = first_from(by_day, start + one_second)
    while t:  # leapfrog: a day-of-month time, then the first day-of-week time from it, and so on
        u = first_from(by_weekday, t)
        if u is None:
            return
        if u == t:
            yield t
            u += one_second
        t = first_from(by_day, u)


def reference(expr: str, tz: tzinfo, start: datetime, n: int, *, years: int = 50) -> list[datetime]:
    """The first `n` instants after `start` (within `years`) by cronsim's fields and rules 1 and 2."""
    out: list[datetime] = []
    # three hours back in wall-clock time: a wall time before the start's can still run after
    # it (the start is in a repeated hour); no change in these zones is larger
    for wall in walls(expr, wall_of(start, tz) - timedelta(hours=3)):
        if wall.year > start.year + years:
            break
        t = instant_of(wall, tz)
        if t <= start or (out and t == out[-1]):  # not after the start / the same instant again
            continue
        out.append(t)
        if len(out) == n:
            break
    return out


def cronsim_never_fires(expr: str, tz: tzinfo, start: datetime) -> bool:
    try:
        return reference(expr, tz, start, 1, years=8) == []  # 8 years: two leap days
    except CronSimError as exc:  # it refuses a day no chosen month has ("0 9 31 nov *")
        return str(exc) == "Bad day-of-month"


def dst_changes(tz: tzinfo) -> list[datetime]:
    """The instants in YEARS at which `tz` changes its offset (to the minute)."""
    t, end = datetime(YEARS[0], 1, 1, tzinfo=UTC), datetime(YEARS[-1] + 1, 1, 1, tzinfo=UTC)
    changes = []
    while t < end:
        nxt = t + timedelta(hours=1)
        if nxt.astimezone(tz).utcoffset() != t.astimezone(tz).utcoffset():
            m = t
            while m.astimezone(tz).utcoffset() == t.astimezone(tz).utcoffset():
                m += timedelta(minutes=1)
            changes.append(m)
        t = nxt
    return changes


def starts(tz: tzinfo, rng: random.Random) -> Iterator[datetime]:
    """Start instants near a DST change (for zones without one, near the same dates in Berlin)."""
    changes = dst_changes(tz) or dst_changes(ZoneInfo("Europe/Berlin"))
    while True:
        yield (rng.choice(changes) + timedelta(minutes=rng.choice(START_OFFSETS), seconds=rng.choice([0, 0, 1, 30])))


def show(instants: list[datetime]) -> str:
    return ", ".join(f"{t:%Y-%m-%d %H:%M:%S}Z" for t in instants)


@pytest.mark.parametrize("zone_name", ZONES)
def test_next_times_match_cronsim_with_the_documented_rules(zone_name):
    tz = zone(zone_name)
    rng = random.Random(zone_name)  # the same expressions on every run
    start_at = starts(tz, rng)
    differences, compared = [], 0
    while compared < EXPRESSIONS_PER_ZONE:
        fields = [rng.choice(MINUTES), rng.choice(HOURS), rng.choice(DAYS), rng.choice(MONTHS), rng.choice(WEEKDAYS)]
        if rng.random() < 0.2:
            fields.insert(0, rng.choice(SECONDS))
        expr, start = " ".join(fields), next(start_at)
        try:
            cron = Cron.parse(expr, zone_name)
        except CronError as exc:  # e.g. "0 9 31 nov *": cronsim finds no time either
            assert "never fires" in str(exc), expr
            assert cronsim_never_fires(expr, tz, start), expr
            continue
        compared += 1
        got, want = cron.upcoming(start, UPCOMING), reference(expr, tz, start, UPCOMING)
        if got != want:
            differences.append(f"{expr!r} after {start:%Y-%m-%d %H:%M:%S}Z: digest {show(got)}; reference {show(want)}")
            continue
        # latest(): the last instant in [at - within, at], at just before one of them
        at = want[3] - timedelta(microseconds=1)
        if cron.latest(at, at - want[1]) != want[2] or cron.latest(at, at - want[2] - timedelta(microseconds=1)) is not None:
            differences.append(f"{expr!r}: latest() before {want[3]:%Y-%m-%d %H:%M:%S}Z is not {want[2]:%Y-%m-%d %H:%M:%S}Z")
    assert not differences, f"{len(differences)} of {compared} differ:\n" + "\n".join(differences[:10])


@pytest.mark.parametrize("zone_name", [z for z in ZONES if dst_changes(zone(z))])
def test_debian_cron_agrees_where_it_applies_the_same_dst_rule(zone_name):
    """Debian cron's own DST handling, for jobs at a specific time (minute and hour not starting
    with "*"; five fields), must give the same instants, apart from running a wall-clock time twice
    when two skipped ones land on the same instant."""
    tz = zone(zone_name)
    rng = random.Random("debian " + zone_name)
    start_at = starts(tz, rng)
    differences = []
    for _ in range(EXPRESSIONS_PER_ZONE):
        fields = [rng.choice(["0", "30", "45", "5,35", "0-10/5", "59", "15"]),
                  rng.choice(["2", "0-3", "1,2,3", "0/2", "9", "0", "3", "22-23", "1-10/3", "2-3", "1"]),
                  rng.choice(["*", "1-7", "15"]), rng.choice(["*", "3,4,10,11"]), rng.choice(["*", "sun", "0", "1-5", "sat,sun"])]
        if fields[2] != "*":
            fields[4] = "*"  # rule 2 is checked above; here only the DST rule
        expr, start = " ".join(fields), next(start_at)
        got = Cron.parse(expr, zone_name).upcoming(start, UPCOMING)
        debian = CronSim(expr, start.astimezone(tz))
        want: list[datetime] = []
        while len(want) < UPCOMING:
            t = next(debian).astimezone(UTC)
            if t > start and (not want or t != want[-1]):
                want.append(t)
        if got != want:
            differences.append(f"{expr!r} after {start:%Y-%m-%d %H:%M:%S}Z: digest {show(got)}; Debian {show(want)}")
    assert not differences, "\n".join(differences[:10])


def test_the_reference_sees_the_dst_cases_it_is_meant_to_check():
    """The generated cases include skipped and repeated wall-clock times (else the comparison
    above would say nothing about DST)."""
    berlin, lord_howe = ZoneInfo("Europe/Berlin"), ZoneInfo("Australia/Lord_Howe")
    assert reference("30 2 * * *", berlin, datetime(2026, 3, 28, 12, tzinfo=UTC), 2) == [
        datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2026, 3, 30, 0, 30, tzinfo=UTC)]
    # Lord Howe: 02:00 -> 02:30 on 2026-10-04 (15:30 UTC the day before); 02:00-02:30 is skipped
    assert reference("*/20 2 * * *", lord_howe, datetime(2026, 10, 3, 12, tzinfo=UTC), 3) == [
        datetime(2026, 10, 3, 15, 30, tzinfo=UTC), datetime(2026, 10, 3, 15, 40, tzinfo=UTC),
        datetime(2026, 10, 4, 15, tzinfo=UTC)]
    assert len(dst_changes(berlin)) == 6 and len(dst_changes(lord_howe)) == 6
    assert dst_changes(ZoneInfo("Asia/Kolkata")) == []
