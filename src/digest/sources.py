"""Service: poll every Source and keep its posts in the database."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from . import feeds, locks
from .config import FeedLocation, Settings
from .errors import FeedError
from .models import EditionPost, Post, Source, as_utc

Clock = Callable[[], datetime]


@dataclass
class SourceReport:
    url: str
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    not_modified: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def poll(
    session: Session,
    settings: Settings,
    clock: Clock,
    fetch=feeds.fetch_one,
    stop: Callable[[], bool] = lambda: False,
) -> list[SourceReport]:
    """Fetch every configured feed (concurrently, each within feeds.timeout) and store its posts.
    One failing source never stops the others; `stop()` does, at once: feeds not fetched by then
    get no report and nothing is recorded for them."""
    if stop():
        return []
    configured = settings.feed_locations()
    found = [_source_for(session, feed, as_utc(clock())) for feed in configured]
    requests = [feeds.FetchRequest(feed.location, source.etag, source.last_modified) for feed, source in zip(configured, found)]
    session.rollback()  # no transaction left open while the feeds are fetched (up to feeds.timeout)
    outcomes = feeds.fetch_all(
        requests,
        timeout=settings.feeds.timeout,
        max_bytes=settings.feeds.max_bytes,
        user_agent=settings.feeds.user_agent,
        stop=stop,
        fetch=fetch,
    )
    reports = []
    for feed, source, outcome in zip(configured, found, outcomes):
        if outcome is not None:  # None: stopped before it was fetched
            reports.append(_record(session, source, feed.location, outcome, settings, as_utc(clock())))
    return reports


def _source_for(session: Session, feed: FeedLocation, now: datetime) -> Source:
    """The Source row of a configured feed: found by its key, else by the key it had before local
    paths were relative to the config file (and re-keyed), else added."""
    source = session.exec(select(Source).where(Source.url == feed.key)).first()
    if source is not None:
        return source
    if feed.former_key != feed.key:
        source = session.exec(select(Source).where(Source.url == feed.former_key)).first()
        if source is not None:
            source.url = feed.key
            session.add(source)
            try:
                session.commit()
                return source
            except IntegrityError:  # another process re-keyed it first
                session.rollback()
                return session.exec(select(Source).where(Source.url == feed.key)).one()
    return _add_source(session, feed.key, now)


def _record(
    session: Session,
    source: Source,
    location: str,
    outcome: feeds.FetchResult | FeedError,
    settings: Settings,
    now: datetime,
) -> SourceReport:
    """Store one fetched feed: its posts, validators and error; report what changed."""
    report = SourceReport(location)
    first_fetch = source.last_fetched_at is None
    try:
        if isinstance(outcome, FeedError):
            raise outcome
        if outcome.body is None:
            report.not_modified = True
            parsed = None
        else:
            parsed = feeds.parse(
                outcome.body,
                location,
                category_from=settings.digest.category_from,
                excerpt_words=settings.digest.excerpt_words,
            )
    except FeedError as exc:
        source.last_error = str(exc)
        session.add(source)
        session.commit()
        report.error = str(exc)
        return report

    if parsed is not None:
        cutoff = None
        days = settings.digest.first_edition_days
        if first_fetch and days > 0:
            cutoff = now - timedelta(days=days)
        # Another process may be polling the same feed right now: take turns, so the second
        # sees the first one's posts as existing instead of inserting them again.
        locks.acquire(session, locks.POSTS, now=now)
        _store_posts(session, source, parsed.posts, now, cutoff, report)
        source.title = parsed.title or source.title
        # A validator too long for its column is dropped, not cut (a cut one would never match).
        source.etag = _fits(outcome.etag, 500)
        source.last_modified = _fits(outcome.last_modified, 100)
    source.last_fetched_at = now
    source.last_error = None
    session.add(source)
    session.commit()
    return report


def _add_source(session: Session, key: str, now) -> Source:
    source = Source(url=key, created_at=now)
    session.add(source)
    try:
        session.commit()
    except IntegrityError:  # another process added it first
        session.rollback()
        source = session.exec(select(Source).where(Source.url == key)).one()
    return source


def _fits(value: str | None, length: int) -> str | None:
    return value if value is not None and len(value) <= length else None


def _store_posts(session, source, posts, now, cutoff, report) -> None:
    existing = {
        p.guid: p for p in session.exec(select(Post).where(Post.source_id == source.id)).all()
    }
    sent_ids = set(
        session.exec(
            select(EditionPost.post_id).join(Post, Post.id == EditionPost.post_id).where(
                Post.source_id == source.id
            )
        ).all()
    )
    seen: set[str] = set()
    for fp in posts:
        if fp.guid in seen:  # a feed listing one entry twice
            continue
        seen.add(fp.guid)
        post = existing.get(fp.guid)
        if post is None:
            # On a source's first fetch, posts older than first_edition_days count as seen.
            eligible = cutoff is None or fp.published_at is None or fp.published_at >= cutoff
            session.add(Post(source_id=source.id, first_seen_at=now, updated_at=now, eligible=eligible, **asdict(fp)))
            report.new += 1
        elif post.content_hash != fp.content_hash and post.id not in sent_ids:
            # An unsent post picks up the edit; a sent one is history and is not sent again.
            for key, value in asdict(fp).items():
                setattr(post, key, value)
            post.updated_at = now
            session.add(post)
            report.updated += 1
        else:
            report.unchanged += 1
