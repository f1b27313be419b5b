"""The numbers of the admin overview. Each is one aggregate query on indexed columns (nothing is
loaded row by row into Python), so the page stays fast at a million subscribers and hundreds of
editions (docs/admin.md, bench/admin.py; the indexes are in store.models):

- subscribers by status: GROUP BY status (ix_subscriber_status);
- the 26 weeks: joins, departures and bounces counted per week from confirmed_at,
  unsubscribed_at and bounced_at, each an index-only range scan of its own index (the time and
  status); the list's size at the end of each week is worked back from today's active count;
- the last editions: their delivered count is `recipients` (stored when the edition was built)
  less the failed, skipped and pending deliveries, which are counted from the partial index of
  undelivered ones (ix_delivery_unsent): a finished edition costs a handful of index entries,
  however many it was sent to; its bounces are counted from the partial index of bounces
  (ix_delivery_bounced);
- feeds: the source rows (a few) and their post counts (ix_post_source_id);
- the next send: each cadence's next time and the posts not yet in one of its editions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Integer, bindparam, cast, func, text
from sqlmodel import Session, col, select

from digest.content import editions
from digest.content.editions import EditionView, Readers
from digest.cron import Cron
from digest.store.models import MAIN_CADENCE, Edition, Post, Source, Subscriber, SubscriberStatus, as_utc, stored_id

WEEK = timedelta(days=7)
WEEKS = 26


def subscriber_counts(session: Session) -> dict[str, int]:
    """Subscribers by status, every status named (0 when none)."""
    counts = {s.value: 0 for s in SubscriberStatus}
    for status, n in session.exec(
        select(col(Subscriber.status), func.count()).group_by(col(Subscriber.status))
    ).all():
        counts[SubscriberStatus(status).value] = n
    return counts


def active_readers(session: Session, readers: Readers) -> int:
    """The active subscribers who get `readers`' cadence's editions."""
    return session.exec(select(func.count()).select_from(Subscriber).where(
        readers.where(), col(Subscriber.status) == SubscriberStatus.active)).one()


@dataclass(frozen=True)
class Week:
    start: datetime  # Monday 00:00 UTC
    joined: int  # confirmed in this week (and not pending again since)
    left: int  # unsubscribed in this week (and still unsubscribed)
    bounced: int  # became bounced or suspended in this week (and still is)
    size: int  # active subscribers at the end of the week (now, for this week)


def week_start(instant: datetime) -> datetime:
    day = as_utc(instant).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def _week_of(column: Any, start: datetime, dialect: str) -> ColumnElement[Any]:
    """SQL: how many whole weeks `column` is after `start` (0, 1, ...; column >= start)."""
    origin = int(start.timestamp())
    if dialect == "postgresql":
        # date_part gives a double; EXTRACT gives a numeric since PostgreSQL 14, and numeric
        # arithmetic on 150,000 rows was half of this query's time (bench/admin.py)
        return func.floor((func.date_part("epoch", column) - origin) / int(WEEK.total_seconds()))
    # SQLite: whole seconds since the epoch, divided as integers (`//`: SQLAlchemy renders `/` as
    # true division, a float for each second, so no two joins of a week were grouped together)
    return (cast(func.strftime("%s", column), Integer) - origin) // int(WEEK.total_seconds())


def _per_week(session: Session, column: Any, start: datetime, end: datetime,
              statuses: Sequence[SubscriberStatus]) -> dict[int, int]:
    dialect = session.get_bind().dialect.name
    week = _week_of(column, start, dialect).label("week")
    rows = session.exec(
        select(week, func.count())
        .where(column >= start, column < end, col(Subscriber.status).in_([s.name for s in statuses]))
        .group_by(week)
    ).all()
    return {int(w): n for w, n in rows}


def weeks(session: Session, now: datetime, active: int, n: int = WEEKS) -> list[Week]:
    """The last `n` weeks, the current one last. Joins, departures and bounces are read from each
    subscriber's timestamps (one state per subscriber, not a history of every change), so the
    size line, worked back from today's `active` count, agrees with them: a subscriber counts
    where they stand now."""
    start = week_start(now) - WEEK * (n - 1)
    end = now + timedelta(seconds=1)
    joined = _per_week(session, col(Subscriber.confirmed_at), start, end,
                       [s for s in SubscriberStatus if s != SubscriberStatus.pending])
    left = _per_week(session, col(Subscriber.unsubscribed_at), start, end, [SubscriberStatus.unsubscribed])
    bounced = _per_week(session, col(Subscriber.bounced_at), start, end,
                        [SubscriberStatus.bounced, SubscriberStatus.suspended])
    result: list[Week] = []
    size = active
    for i in reversed(range(n)):
        j, lft, b = joined.get(i, 0), left.get(i, 0), bounced.get(i, 0)
        result.append(Week(start + WEEK * i, j, lft, b, size))
        size -= j - lft - b
    result.reverse()
    return result


@dataclass(frozen=True)
class EditionLine:
    id: int  # the keyset of the editions' pages: numbers repeat across cadences
    cadence: str  # its cadence, as stored (MAIN_CADENCE for the main one)
    number: int
    subject: str
    created_at: datetime
    status: str
    recipients: int
    delivered: int
    failed: int
    pending: int
    skipped: int
    bounced: int  # of the failed: recorded as bounces (`digest bounces process`)


# Literals, not parameters, so that both databases see the partial index's predicate in the query.
_UNSENT = text(
    "SELECT edition_id, status, COUNT(*) FROM delivery"
    " WHERE edition_id IN :ids AND status <> 'sent' GROUP BY edition_id, status"
).bindparams(bindparam("ids", expanding=True))
# ix_delivery_bounced's predicate, word for word: a count from that index alone.
_BOUNCED = text(
    "SELECT edition_id, COUNT(*) FROM delivery"
    " WHERE edition_id IN :ids AND status = 'failed' AND last_error LIKE 'bounced (%'"
    " GROUP BY edition_id"
).bindparams(bindparam("ids", expanding=True))
_ALL = text("SELECT edition_id, COUNT(*) FROM delivery WHERE edition_id IN :ids GROUP BY edition_id").bindparams(
    bindparam("ids", expanding=True))


def recent_editions(session: Session, n: int = 10, *, before: int | None = None,
                    cadence: str | None = None) -> list[EditionLine]:
    """The newest `n` editions (of `cadence`, a stored key; None: of every cadence), newest first,
    with their deliveries by outcome; those with an id below `before`, if given: the next page."""
    stmt = select(Edition).order_by(col(Edition.id).desc()).limit(n)
    if before is not None:
        stmt = stmt.where(col(Edition.id) < before)
    if cadence is not None:
        stmt = stmt.where(col(Edition.cadence) == cadence)
    return edition_lines(session, list(session.exec(stmt).all()))


def edition_lines(session: Session, rows: Sequence[Edition]) -> list[EditionLine]:
    """`rows` with their deliveries by outcome."""
    ids = [stored_id(e) for e in rows]
    if not ids:
        return []
    unsent: dict[int, dict[str, int]] = {i: {} for i in ids}
    for eid, status, count in session.execute(_UNSENT, {"ids": ids}).all():
        unsent[eid][status] = count
    bounced = {eid: n for eid, n in session.execute(_BOUNCED, {"ids": ids}).all()}
    unknown = [stored_id(e) for e in rows if e.recipients is None]  # built before recipients were stored
    totals = {eid: n for eid, n in session.execute(_ALL, {"ids": unknown}).all()} if unknown else {}
    lines = []
    for e in rows:
        eid = stored_id(e)
        c = unsent[eid]
        total = e.recipients if e.recipients is not None else totals.get(eid, 0)
        failed, pending, skipped = c.get("failed", 0), c.get("pending", 0), c.get("skipped", 0)
        lines.append(EditionLine(eid, e.cadence, e.number, e.subject, as_utc(e.created_at), e.status.value, total,
                                 total - failed - pending - skipped, failed, pending, skipped, bounced.get(eid, 0)))
    return lines


@dataclass(frozen=True)
class FeedHealth:
    url: str
    title: str | None
    last_polled_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    posts: int


def feed_health(session: Session) -> list[FeedHealth]:
    """Every feed polled so far (a configured feed not yet polled has no row), by URL."""
    posts = dict(session.exec(select(col(Post.source_id), func.count()).group_by(col(Post.source_id))).all())
    return [
        FeedHealth(s.url, s.title, s.last_polled_at and as_utc(s.last_polled_at),
                   s.last_fetched_at and as_utc(s.last_fetched_at), s.last_error, posts.get(stored_id(s), 0))
        for s in session.exec(select(Source).order_by(col(Source.url))).all()
    ]


@dataclass(frozen=True)
class NextSend:
    """A cadence's next send and what would go in it."""

    name: str  # the cadence's name
    cron: Cron
    at: datetime | None  # None: the cron never fires again
    view: EditionView | None  # the posts not yet in one of its editions, by section; None: nothing new
    readers: bool = True  # False: a cadence other than the main one that no active reader chose (no edition)


def next_sends(session: Session, schedules: Sequence[tuple[str, Cron, Readers]], now: datetime,
               order: Sequence[str] = ()) -> list[NextSend]:
    """For each cadence (its name, cron and readers): its next send and the posts it would carry,
    the posts not yet in one of its editions (each cadence has its own)."""
    sends = []
    for name, cron, readers in schedules:
        posts = editions.unsent_posts(session, readers.cadence)
        view = editions.view(posts, None, now, order, readers.cadence) if posts else None
        has_readers = readers.cadence == MAIN_CADENCE or readers.any_active(session)
        sends.append(NextSend(name, cron, cron.next_after(now), view, has_readers))
    return sends
