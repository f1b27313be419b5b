"""Cron expressions evaluated in an IANA time zone, with daylight-saving changes handled the way
cron does it.

- Standard crontab: ``minute hour day-of-month month day-of-week`` (0 or 7 = Sunday, or names
  ``mon``..``sun``), plus an optional leading seconds field (six fields) and the macros
  ``@hourly``, ``@daily``, ``@weekly``, ``@monthly``, ``@yearly``.
- When both day-of-month and day-of-week are restricted, both must match (``0 9 1-7 * mon`` is
  the first Monday of the month); classic cron would take either.
- A wall-clock time skipped by a spring-forward change fires at the moment of the change; a time
  repeated by a fall-back change fires once, at its first occurrence.

Field parsing and matching is APScheduler's (``CronTrigger``), but only on naive wall-clock times
(in UTC, which has no DST); turning wall-clock times into instants is done here. APScheduler 3.11's
own zone arithmetic fires twice in a repeated hour and can loop forever there (apscheduler#1021).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]  # crontab numbering: 0 = Sunday
_FULL_NAMES = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]
_MAX_STEPS = 200_000  # candidate wall-clock times examined per query; a safety net, never reached in practice


class CronError(ValueError):
    """An expression or time zone that cannot be used; the message says why, in one line."""


def zone(name: str) -> tzinfo:
    """The IANA time zone `name` (e.g. "Europe/Berlin"); CronError if there is no such zone."""
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {name!r} (use an IANA name such as 'Europe/Berlin' or 'UTC')") from None


def _weekdays(expr: str) -> str:
    """A crontab day-of-week field (0 or 7 = Sunday) as APScheduler day names (which number from Monday)."""
    days: set[int] = set()
    for part in expr.lower().split(","):
        rng, _, step_s = part.partition("/")
        step = 1
        if step_s:
            if not step_s.isdigit() or int(step_s) == 0:
                raise CronError(f"bad step in day-of-week {part!r}")
            step = int(step_s)
        if rng in ("*", "?"):
            lo, hi = 0, 6
        elif "-" in rng:
            a, _, b = rng.partition("-")
            lo, hi = _weekday(a), _weekday(b)
            if hi == 0 and b.strip() == "7":
                hi = 7
            if lo > hi:
                raise CronError(f"day-of-week range {part!r} runs backwards")
        else:
            lo = _weekday(rng)
            hi = 7 if step_s else lo  # "1/2" runs to the end of crontab's 0-7, as "1-7/2" does
        days.update(d % 7 for d in range(lo, hi + 1, step))
    if days == set(range(7)):
        return "*"
    return ",".join(_DAY_NAMES[d] for d in sorted(days))


def _weekday(token: str) -> int:
    token = token.strip()
    if token.isdigit() and int(token) <= 7:
        return int(token) % 7
    for i, name in enumerate(_DAY_NAMES):
        if token == name or token == _FULL_NAMES[i]:
            return i
    raise CronError(f"bad day of week {token!r} (use 0-7 or sun..sat)")


@dataclass(frozen=True)
class Cron:
    """A schedule: `expr` in time zone `tz`. Every instant it deals in is an aware UTC datetime."""

    expr: str
    tz: tzinfo
    _wall: CronTrigger = field(repr=False, compare=False)

    @classmethod
    def parse(cls, expr: str, tz: str | tzinfo = "UTC") -> Cron:
        tzi = zone(tz) if isinstance(tz, str) else tz
        text = " ".join(expr.split())
        fields = MACROS.get(text.lower(), text).split(" ")
        if len(fields) == 5:
            fields = ["0", *fields]
        if len(fields) != 6:
            raise CronError(
                f"{expr!r} has {len(fields)} fields; expected 5 (minute hour day month weekday) "
                "or 6 (with seconds first)"
            )
        second, minute, hour, day, month, dow = fields
        try:
            wall = CronTrigger(
                second=second, minute=minute, hour=hour, day=day, month=month,
                day_of_week=_weekdays(dow), timezone=UTC,
            )
        except CronError:
            raise
        except ValueError as exc:
            raise CronError(f"{expr!r}: {exc}") from None
        cron = cls(text, tzi, wall)
        if wall.get_next_fire_time(None, datetime(2000, 1, 1, tzinfo=UTC)) is None:
            raise CronError(f"{expr!r} never fires")
        return cron

    @property
    def has_seconds(self) -> bool:
        """Whether the expression has a seconds field (six fields)."""
        return len(MACROS.get(self.expr.lower(), self.expr).split(" ")) == 6

    @property
    def tz_name(self) -> str:
        return getattr(self.tz, "key", None) or str(self.tz)

    # --- wall-clock time <-> instant -------------------------------------------------------

    def _wall_of(self, instant: datetime) -> datetime:
        """The naive local wall-clock time at `instant`."""
        return instant.astimezone(self.tz).replace(tzinfo=None)

    def _instant(self, wall: datetime) -> datetime:
        """When wall-clock time `wall` happens: its first occurrence if repeated, or the moment
        of the change if a spring-forward change skips it. Never decreases as `wall` increases."""
        first = wall.replace(tzinfo=self.tz, fold=0).astimezone(UTC)
        if self._wall_of(first) == wall:
            return first
        # Skipped: fold=0 reads it with the offset before the change (an instant after the
        # change), fold=1 with the offset after it (an instant before). The change lies between.
        lo = wall.replace(tzinfo=self.tz, fold=1).astimezone(UTC)
        hi = first
        while hi - lo > timedelta(seconds=1):
            mid = lo + (hi - lo) / 2
            if self._wall_of(mid) > wall:
                hi = mid
            else:
                lo = mid
        return hi.replace(microsecond=0) if self._wall_of(hi.replace(microsecond=0)) > wall else hi

    def _next_wall(self, wall: datetime) -> datetime | None:
        """The first wall-clock time strictly after `wall` that matches the expression."""
        nxt = self._wall.get_next_fire_time(None, wall.replace(tzinfo=UTC) + timedelta(microseconds=1))
        return nxt.replace(tzinfo=None) if nxt else None

    # --- queries --------------------------------------------------------------------------

    def next_after(self, t: datetime) -> datetime | None:
        """The first scheduled instant strictly after `t`."""
        t = t.astimezone(UTC)
        wall = self._wall_of(t)  # its instant is at or before t, so the answer is a later wall time
        for _ in range(_MAX_STEPS):
            later = self._next_wall(wall)
            if later is None:
                return None
            wall = later
            instant = self._instant(wall)
            if instant > t:
                return instant
        raise RuntimeError(f"cron {self.expr!r}: no next time found after {t}")  # pragma: no cover

    def upcoming(self, after: datetime, n: int) -> list[datetime]:
        """The next `n` scheduled instants after `after`."""
        out: list[datetime] = []
        t = after
        while len(out) < n:
            nxt = self.next_after(t)
            if nxt is None:
                break
            out.append(nxt)
            t = nxt
        return out

    def latest(self, at: datetime, within: timedelta) -> datetime | None:
        """The latest scheduled instant in [at - within, at], or None."""
        at = at.astimezone(UTC)
        floor = at - within
        window = timedelta(minutes=1)
        while True:
            start = max(at - window, floor)
            last = None
            s = self.next_after(start - timedelta(microseconds=1))
            while s is not None and s <= at:
                last = s
                s = self.next_after(s)
            if last is not None or start <= floor:
                return last
            window *= 2

    def local(self, instant: datetime) -> datetime:
        """`instant` in the schedule's time zone."""
        return instant.astimezone(self.tz)
