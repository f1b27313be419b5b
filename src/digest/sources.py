"""Service: poll every Source and keep its posts in the database."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from . import feeds, locks
from .config import Settings
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
    fetch=feeds.fetch,
    stop: Callable[[], bool] = lambda: False,
) -> list[SourceReport]:
    """Fetch and store every configured feed. One failing source never stops the others;
    `stop()` (checked between sources) does."""
    reports = []
    for location in settings.feed_locations():
        if stop():
            break
        reports.append(poll_one(session, location, settings, clock, fetch))
    return reports


def poll_one(session: Session, location: str, settings: Settings, clock: Clock, fetch=feeds.fetch) -> SourceReport:
    now = as_utc(clock())
    report = SourceReport(location)
    source = session.exec(select(Source).where(Source.url == location)).first()
    first_fetch = source is None or source.last_fetched_at is None
    if source is None:
        source = _add_source(session, location, now)
    try:
        result = fetch(
            location,
            etag=source.etag,
            last_modified=source.last_modified,
            timeout=settings.feeds.timeout,
            max_bytes=settings.feeds.max_bytes,
            user_agent=settings.feeds.user_agent,
        )
        if result.body is None:
            report.not_modified = True
            parsed = None
        else:
            parsed = feeds.parse(
                result.body,
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
        source.etag = _fits(result.etag, 500)
        source.last_modified = _fits(result.last_modified, 100)
    source.last_fetched_at = now
    source.last_error = None
    session.add(source)
    session.commit()
    return report


def _add_source(session: Session, location: str, now) -> Source:
    source = Source(url=location, created_at=now)
    session.add(source)
    try:
        session.commit()
    except IntegrityError:  # another process added it first
        session.rollback()
        source = session.exec(select(Source).where(Source.url == location)).one()
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
