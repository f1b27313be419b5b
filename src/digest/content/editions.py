"""Service: which posts go into the next edition, and creating it with its deliveries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Exists, cast, exists, func, insert, literal, literal_column, or_, text
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased
from sqlalchemy.sql.expression import ColumnClause
from sqlmodel import Session, col, select

from digest.clock import Clock
from digest.errors import NotFound
from digest.store import locks
from digest.store.models import (
    Delivery,
    DeliveryStatus,
    Edition,
    EditionPost,
    EditionStatus,
    Post,
    Subscriber,
    SubscriberStatus,
    as_utc,
    stored_id,
)
from digest.subject import subject_for


@dataclass(frozen=True)
class Section:
    name: str
    posts: tuple[Post, ...]


@dataclass(frozen=True)
class EditionView:
    """What a rendered edition shows: its number (None in a preview), date and sections."""

    number: int | None
    date: datetime
    sections: tuple[Section, ...]

    @property
    def post_count(self) -> int:
        return sum(len(s.posts) for s in self.sections)

    @property
    def categories(self) -> frozenset[str]:
        return frozenset(s.name for s in self.sections)

    def only(self, categories: frozenset[str] | None) -> EditionView:
        """The sections a subscriber chose (None = all)."""
        if categories is None:
            return self
        keep = tuple(s for s in self.sections if s.name in categories)
        return EditionView(self.number, self.date, keep)


def unsent_posts(session: Session) -> list[Post]:
    """Every eligible post not yet in an edition."""
    in_edition = sa_select(col(EditionPost.post_id))
    stmt = select(Post).where(col(Post.eligible) == True, col(Post.id).not_in(in_edition))  # noqa: E712
    return list(session.exec(stmt).all())


def latest_posts(session: Session, n: int) -> list[Post]:
    stmt = select(Post).order_by(
        col(Post.published_at).desc().nulls_last(), col(Post.first_seen_at).desc()
    ).limit(n)
    return list(session.exec(stmt).all())


def _sort_key(post: Post) -> tuple[datetime, int]:
    when = post.published_at or post.first_seen_at
    return (when, post.id or 0)


def sections(posts: Iterable[Post], order: Sequence[str] = ()) -> tuple[Section, ...]:
    """Posts grouped by category: configured order first, then alphabetical; newest first within."""
    groups: dict[str, list[Post]] = {}
    for post in posts:
        groups.setdefault(post.category, []).append(post)
    rank = {name.casefold(): i for i, name in enumerate(order)}
    names = sorted(groups, key=lambda n: (rank.get(n.casefold(), len(rank)), n.casefold()))
    return tuple(
        Section(name, tuple(sorted(groups[name], key=_sort_key, reverse=True))) for name in names
    )


def view(posts: Iterable[Post], number: int | None, date: datetime, order: Sequence[str] = ()) -> EditionView:
    return EditionView(number, date, sections(posts, order))


def edition_view(session: Session, edition: Edition, order: Sequence[str] = ()) -> EditionView:
    posts = session.exec(
        select(Post).join(EditionPost, col(EditionPost.post_id) == col(Post.id)).where(
            col(EditionPost.edition_id) == edition.id
        )
    ).all()
    return view(posts, edition.number, edition.created_at, order)


def unfinished(session: Session) -> list[Edition]:
    return list(
        session.exec(
            select(Edition).where(col(Edition.status) == EditionStatus.sending).order_by(col(Edition.number))
        ).all()
    )


def next_number(session: Session) -> int:
    return (session.exec(select(func.max(col(Edition.number)))).one() or 0) + 1


def create(
    session: Session,
    clock: Clock,
    *,
    subject_template: str,
    newsletter_name: str,
    slot: datetime | None = None,
) -> Edition | None:
    """Create the next edition from every unsent post, with a pending delivery for each active
    subscriber, in one transaction under the edition lock (so concurrent senders take turns and the
    second finds the posts taken). None when there is nothing new (or the slot is taken)."""
    locks.acquire(session, locks.EDITION, now=as_utc(clock()))
    try:
        edition = build(
            session, clock, subject_template=subject_template, newsletter_name=newsletter_name, slot=slot
        )
        session.commit()
    except IntegrityError:
        # Another sender built an edition from the same posts (or slot) first.
        session.rollback()
        return None
    return edition


def build(
    session: Session,
    clock: Clock,
    *,
    subject_template: str,
    newsletter_name: str,
    slot: datetime | None = None,
) -> Edition | None:
    """Add the next edition, its posts and its deliveries to the session's transaction and flush;
    the caller holds the edition lock and commits. None (nothing added) when there is nothing new."""
    posts = unsent_posts(session)
    if not posts:
        return None
    now = as_utc(clock())
    number = next_number(session)
    edition = Edition(
        number=number,
        created_at=now,
        status=EditionStatus.sending,
        subject=subject_for(subject_template, newsletter_name, len(posts), number, now),
        slot=as_utc(slot) if slot else None,
    )
    session.add(edition)
    session.flush()
    session.add_all(EditionPost(post_id=stored_id(p), edition_id=stored_id(edition)) for p in posts)
    session.flush()
    _add_deliveries(session, edition, frozenset(p.category for p in posts))
    # Counted, not the INSERT's rowcount: psycopg reports -1 for an INSERT ... SELECT here.
    edition.recipients = delivery_count(session, edition)
    session.add(edition)
    return edition


def _add_deliveries(session: Session, edition: Edition, categories: frozenset[str]) -> None:
    """One pending delivery per subscriber who is active, not paused, and wants one of these
    categories, in a single INSERT ... SELECT (no subscriber is loaded into memory)."""
    wanted = sa_select(
        literal(edition.id),
        col(Subscriber.id),
        literal(DeliveryStatus.pending.name),
        literal(0),
    ).where(
        col(Subscriber.status) == SubscriberStatus.active,
        col(Subscriber.paused) == False,  # noqa: E712
        or_(col(Subscriber.topics).is_(None), chose_any(session.get_bind().dialect.name, categories)),
    )
    session.execute(
        insert(Delivery).from_select(["edition_id", "subscriber_id", "status", "attempts"], wanted)
    )


def chose_any(dialect: str, categories: frozenset[str]) -> Exists:
    """SQL: the subscriber's chosen topics (a JSON array, see models.TopicList) include one of
    `categories`. Each database reads the array with its own JSON function."""
    names = sorted(categories)
    if dialect == "postgresql":
        chosen = func.jsonb_array_elements_text(cast(col(Subscriber.topics), JSONB))
    else:
        chosen = func.json_each(col(Subscriber.topics))
    topic = chosen.table_valued("value").alias("chosen")
    return exists(sa_select(literal(1)).select_from(topic).where(topic.c.value.in_(names)))


def delivery_count(session: Session, edition: Edition) -> int:
    """How many deliveries (recipients) `edition` has."""
    return session.exec(
        select(func.count()).select_from(Delivery).where(col(Delivery.edition_id) == edition.id)
    ).one()


def _counts(session: Session, edition_ids: list[int]) -> dict[int, dict[str, int]]:
    counts: dict[int, dict[str, int]] = {
        i: {"posts": 0, **{s.value: 0 for s in DeliveryStatus}} for i in edition_ids
    }
    if not edition_ids:
        return counts
    for eid, status, n in session.exec(
        select(col(Delivery.edition_id), col(Delivery.status), func.count())
        .where(col(Delivery.edition_id).in_(edition_ids))
        .group_by(col(Delivery.edition_id), col(Delivery.status))
    ).all():
        counts[eid][DeliveryStatus(status).value] = n
    for eid, n in session.exec(
        select(col(EditionPost.edition_id), func.count())
        .where(col(EditionPost.edition_id).in_(edition_ids))
        .group_by(col(EditionPost.edition_id))
    ).all():
        counts[eid]["posts"] = n
    return counts


def sending_counts(session: Session) -> tuple[int, dict[str, int]] | None:
    """(number, deliveries by status) of the oldest edition still being sent, or None: what the
    progress of `digest send` shows (two indexed queries, made by a watcher every half second)."""
    edition = session.exec(
        select(Edition).where(col(Edition.status) == EditionStatus.sending).order_by(col(Edition.id)).limit(1)
    ).first()
    if edition is None:
        return None
    return edition.number, _counts(session, [stored_id(edition)])[stored_id(edition)]


def pending_count(session: Session, edition: Edition) -> int:
    """Deliveries of `edition` not yet sent (due now or waiting for a retry). The literal 'pending'
    lets both databases answer from the partial index ix_delivery_pending."""
    pending: int = session.execute(
        text("SELECT COUNT(*) FROM delivery WHERE edition_id = :e AND status = 'pending'"), {"e": edition.id}
    ).scalar_one()
    return pending


def summaries(session: Session) -> list[tuple[Edition, dict[str, int]]]:
    """Every edition, newest first, with post and delivery counts."""
    rows = list(session.exec(select(Edition).order_by(col(Edition.number).desc())).all())
    counts = _counts(session, [stored_id(e) for e in rows])
    return [(e, counts[stored_id(e)]) for e in rows]


def get(session: Session, number: int) -> Edition:
    edition = session.exec(select(Edition).where(col(Edition.number) == number)).first()
    if edition is None:
        raise NotFound(f"no edition {number} (see `digest editions`)")
    return edition


# (address, attempts, error); the address is None once the subscriber's data was erased.
Failure = tuple[str | None, int, str | None]


def details(session: Session, number: int) -> tuple[Edition, dict[str, int], list[Post], Sequence[Failure]]:
    """(edition, counts, posts, failures[(address, attempts, error)]) for `digest editions show`."""
    edition = get(session, number)
    counts = _counts(session, [stored_id(edition)])[stored_id(edition)]
    posts = edition_view(session, edition).sections
    failures = session.exec(
        select(col(Subscriber.email), col(Delivery.attempts), col(Delivery.last_error))
        .select_from(Delivery)
        .outerjoin(Subscriber, col(Subscriber.id) == col(Delivery.subscriber_id))
        .where(col(Delivery.edition_id) == edition.id, col(Delivery.status) == DeliveryStatus.failed)
        .order_by(col(Delivery.id))
    ).all()
    return edition, counts, [p for s in posts for p in s.posts], failures


def deferred(session: Session, edition: Edition) -> Sequence[tuple[str | None, int, str | None, datetime | None]]:
    """Pending deliveries that failed temporarily: [(address, attempts, error, next attempt)]."""
    return session.exec(
        select(col(Subscriber.email), col(Delivery.attempts), col(Delivery.last_error), col(Delivery.next_attempt_at))
        .select_from(Delivery)
        .outerjoin(Subscriber, col(Subscriber.id) == col(Delivery.subscriber_id))
        .where(
            col(Delivery.edition_id) == edition.id,
            col(Delivery.status) == DeliveryStatus.pending,
            col(Delivery.attempts) > 0,
        )
        .order_by(col(Delivery.id))
    ).all()


# (delivery id, address, attempts, error, next attempt); the address is None once erased (the id
# is None only in the type: Delivery.id is, before a row is stored).
Undelivered = tuple[int | None, str | None, int, str | None, datetime | None]


def undelivered(session: Session, edition: Edition, *, deferred: bool = False, after: int = 0,
                limit: int = 50) -> Sequence[Undelivered]:
    """A page of `edition`'s failed deliveries (`deferred`: its pending ones that failed
    temporarily and wait for their next attempt), in id order after delivery `after`: keyset
    pages, each read from the partial index ix_delivery_unsent whatever the edition's size."""
    # The status as a literal, not a parameter, so that both databases see that the partial
    # index's predicate (status <> 'sent') holds.
    status: ColumnClause[str] = literal_column("'pending'" if deferred else "'failed'")
    # The page's ids first, from the index alone, then their rows. Asked for the rows at once,
    # PostgreSQL may walk the primary key in id order from the first delivery of all, filtering,
    # when it overestimates the edition's failures (bench/admin.py: 1.6 M rows read, ~200 ms for
    # the newest edition; this way ~2 ms).
    page = aliased(Delivery)
    ids = (
        sa_select(col(page.id))
        .where(col(page.edition_id) == edition.id, col(page.status) == status, col(page.id) > after)
        .order_by(col(page.id))
        .limit(limit)
    )
    if deferred:
        ids = ids.where(col(page.attempts) > 0)
    stmt = (
        sa_select(col(Delivery.id), col(Subscriber.email), col(Delivery.attempts), col(Delivery.last_error),
                  col(Delivery.next_attempt_at))
        .select_from(Delivery)
        .outerjoin(Subscriber, col(Subscriber.id) == col(Delivery.subscriber_id))
        .where(col(Delivery.id).in_(ids))
        .order_by(col(Delivery.id))
    )
    return session.execute(stmt).all()
