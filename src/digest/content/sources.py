"""Service: poll every Source and keep its posts in the database."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from digest.clock import Clock
from digest.config import EditionSettings, FeedLocation, FeedsSettings
from digest.content import feeds
from digest.errors import FeedError
from digest.store import locks
from digest.store.models import EditionPost, Post, Source, as_utc, stored_id


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
    configured: Sequence[FeedLocation],
    fetching: FeedsSettings,
    edition: EditionSettings,
    clock: Clock,
    fetch: Callable[..., Awaitable[feeds.FetchResult]] = feeds.fetch_one,
    stop: Callable[[], bool] = lambda: False,
    on_fetched: Callable[[], None] = lambda: None,
) -> list[SourceReport]:
    """Fetch every configured feed (`Settings.feed_locations()`; concurrently, each within
    `fetching.timeout`) and store its posts (as `edition`'s category_from, excerpt_words and
    first_edition_days say). One failing source never stops the others; `stop()` does, at once:
    feeds not fetched by then get no report and nothing is recorded for them. `fetch` is an async
    function called like feeds.fetch_one (the seam a test swaps). `on_fetched()` is called as each
    feed is fetched (or fails), for the progress of a long poll."""
    if stop():
        return []
    found = [_source_for(session, feed, as_utc(clock())) for feed in configured]
    requests = [
        feeds.FetchRequest(feed.location, source.etag, source.last_modified)
        for feed, source in zip(configured, found, strict=True)
    ]
    session.rollback()  # no transaction left open while the feeds are fetched (up to feeds.timeout)
    outcomes = feeds.fetch_all(
        requests,
        timeout=fetching.timeout,
        max_bytes=fetching.max_bytes,
        user_agent=fetching.user_agent,
        stop=stop,
        fetch=fetch,
        on_fetched=on_fetched,
    )
    reports = []
    for feed, source, outcome in zip(configured, found, outcomes, strict=True):  # one outcome per request
        if outcome is not None:  # None: stopped before it was fetched
            reports.append(_record(session, source, feed.location, outcome, edition, as_utc(clock())))
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
    edition: EditionSettings,
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
                category_from=edition.category_from,
                excerpt_words=edition.excerpt_words,
            )
    except FeedError as exc:
        source.last_polled_at = now
        source.last_error = str(exc)
        session.add(source)
        session.commit()
        report.error = str(exc)
        return report

    if parsed is not None:
        cutoff = None
        days = edition.first_edition_days
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
    source.last_polled_at = source.last_fetched_at = now
    source.last_error = None
    session.add(source)
    session.commit()
    return report


def _add_source(session: Session, key: str, now: datetime) -> Source:
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


def _store_posts(
    session: Session,
    source: Source,
    posts: list[feeds.FeedPost],
    now: datetime,
    cutoff: datetime | None,
    report: SourceReport,
) -> None:
    stored = session.exec(select(Post).where(Post.source_id == source.id)).all()
    existing = {p.guid: p for p in stored}
    sent_ids = set(
        session.exec(
            select(EditionPost.post_id).join(Post, col(Post.id) == col(EditionPost.post_id)).where(
                Post.source_id == source.id
            )
        ).all()
    )
    entries, listed = [], set()
    for fp in posts:
        if fp.guid not in listed:  # a feed listing one entry twice: the first one counts
            listed.add(fp.guid)
            entries.append(fp)
    renamed = _renamed(stored, entries)
    for fp in entries:
        post = existing.get(fp.guid) or renamed.get(fp.guid)
        if post is None:
            # On a source's first fetch, posts older than first_edition_days count as seen.
            eligible = cutoff is None or fp.published_at is None or fp.published_at >= cutoff
            post = Post(source_id=stored_id(source), first_seen_at=now, updated_at=now, eligible=eligible, **asdict(fp))
            session.add(post)
            report.new += 1
            continue
        edited = post.content_hash != fp.content_hash
        if post.id in sent_ids:
            # A sent post is history and is not sent again, edited or not; a new GUID is noted.
            post.guid = fp.guid
        elif edited or post.guid != fp.guid or _image(post) != _image(fp):
            # An unsent post picks up the edit (and a new GUID, and a lead image: the feed's may
            # change without the post, and a post stored before images were kept has none).
            for key, value in asdict(fp).items():
                setattr(post, key, value)
            post.updated_at = now
        if edited and post.id not in sent_ids:
            report.updated += 1
        else:
            report.unchanged += 1


def _image(post: Post | feeds.FeedPost) -> tuple[str | None, int | None, int | None]:
    return post.image_url, post.image_width, post.image_height


def _renamed(stored: Sequence[Post], entries: list[feeds.FeedPost]) -> dict[str, Post]:
    """Stored posts back under a new GUID: {new guid: post}.

    Some feeds rewrite every GUID (a new blog engine, http to https, a per-request id), which would
    make every post new and send it again. A post whose GUID is no longer in the feed is the entry
    with a new GUID and the same identity: its canonical link, else (no link) its title and date.
    Only an identity that one stored post and one entry have counts: a feed that gives every entry
    the blog's home page as its link must not fold new posts into old ones.
    """
    stored_key = [(p, _identity(p.url, p.title, p.published_at)) for p in stored]  # each worked out once
    entry_key = [(fp, _identity(fp.url, fp.title, fp.published_at)) for fp in entries]
    stored_ids = Counter(identity for _, identity in stored_key)
    entry_ids = Counter(identity for _, identity in entry_key)
    guids = {p.guid for p in stored}
    fetched = {fp.guid for fp in entries}
    gone = {
        identity: p
        for p, identity in stored_key
        if p.guid not in fetched and identity is not None and stored_ids[identity] == 1
    }
    renamed = {}
    for fp, identity in entry_key:
        if fp.guid not in guids and identity in gone and entry_ids[identity] == 1:
            renamed[fp.guid] = gone.pop(identity)
    return renamed


_Identity = tuple[str, str] | tuple[str, str, datetime]


def _identity(url: str, title: str, published_at: datetime | None) -> _Identity | None:
    """What names a post when its GUID changed: its canonical link, else its title and date."""
    if url:
        return ("link", canonical_link(url))
    if published_at is not None:
        return ("title", title, as_utc(published_at))
    return None  # no link, no date: nothing safe to match on


_TRACKING = ("utm_", "fbclid", "gclid", "mc_cid", "mc_eid")


def canonical_link(url: str) -> str:
    """A post's link as an identity: scheme, "www.", letter case of the host, a trailing slash,
    the fragment and tracking parameters (utm_*, fbclid, ...) left out, as feeds change them for
    the same page."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # "https://blog.test:99999/": out of range; then the link as it is
        return url
    host = (parts.hostname or "").removeprefix("www.")
    if port is not None and port not in (80, 443):
        host += f":{port}"
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not k.lower().startswith(_TRACKING)]
    return urlunsplit(("", host, parts.path.rstrip("/"), urlencode(query), ""))
