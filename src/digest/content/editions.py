"""Service: which posts go into the next edition, and creating it with its deliveries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Exists,
    Integer,
    Select,
    cast,
    exists,
    func,
    insert,
    literal,
    literal_column,
    or_,
    text,
    update,
)
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
    MAIN_CADENCE,
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
    """What a rendered edition shows: its number (None in a preview), date and sections, and the
    cadence it is of (a stored key: the edition's web page is under it)."""

    number: int | None
    date: datetime
    sections: tuple[Section, ...]
    cadence: str = MAIN_CADENCE

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
        return EditionView(self.number, self.date, keep, self.cadence)


def unsent_posts(session: Session, cadence: str = MAIN_CADENCE) -> list[Post]:
    """Every eligible post not yet in an edition of `cadence` (a stored cadence key). A cadence's
    first edition starts where the main cadence's last edition ended: the posts of main editions
    built before it are not the cadence's (else a cadence added to a running publication would
    start with every post it ever had)."""
    stmt = select(Post).where(col(Post.eligible) == True, col(Post.id).not_in(_in_editions(cadence)))  # noqa: E712
    if cadence != MAIN_CADENCE:
        stmt = stmt.where(col(Post.id).not_in(_before_cadence(session, cadence)))
    return list(session.exec(stmt).all())


def _in_editions(cadence: str, through: int | None = None) -> Select[Any]:
    """SQL: the posts of `cadence`'s editions (up to the edition with id `through`)."""
    stmt = sa_select(col(EditionPost.post_id)).where(col(EditionPost.cadence) == cadence)
    return stmt if through is None else stmt.where(col(EditionPost.edition_id) <= through)


def _before_cadence(session: Session, cadence: str) -> Select[Any]:
    """SQL: the posts of the main editions built before `cadence`'s first one (all of them while it
    has none): where the cadence starts."""
    first = session.exec(select(func.min(col(Edition.id))).where(col(Edition.cadence) == cadence)).one()
    stmt = _in_editions(MAIN_CADENCE)
    return stmt if first is None else stmt.where(col(EditionPost.edition_id) < first)


def _covered(session: Session, cadence: str, through: int) -> Select[Any]:
    """SQL: every post a reader of `cadence` has had once they got its edition with id `through`
    (or would have, had they chosen every topic): its editions up to that one, and what came
    before the cadence's start."""
    stmt = _in_editions(cadence, through)
    if cadence == MAIN_CADENCE:
        return stmt
    return stmt.union(_before_cadence(session, cadence))  # type: ignore[return-value]


def catch_up_posts(session: Session, edition: Edition, since: int) -> list[Post]:
    """What a reader who changed cadence gets in their first edition of the new one: the posts
    `edition`'s cadence has had up to `edition` that the reader had not had by their last edition
    before (id `since`, of any cadence). Nothing is lost (every post up to `edition` is in it or
    was in theirs) and nothing comes twice; from the next edition on they get the editions as
    they are (their cadence has then had everything they had)."""
    before = session.get(Edition, since)
    if before is None:  # (an edition is never deleted)
        raise NotFound(f"no edition with id {since}")
    had = _covered(session, before.cadence, since)
    stmt = select(Post).where(
        col(Post.id).in_(_covered(session, edition.cadence, stored_id(edition))), col(Post.id).not_in(had)
    )
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


def view(posts: Iterable[Post], number: int | None, date: datetime, order: Sequence[str] = (),
         cadence: str = MAIN_CADENCE) -> EditionView:
    return EditionView(number, date, sections(posts, order), cadence)


def edition_posts(session: Session, edition: Edition) -> list[Post]:
    return list(session.exec(
        select(Post).join(EditionPost, col(EditionPost.post_id) == col(Post.id)).where(
            col(EditionPost.edition_id) == edition.id
        )
    ).all())


def edition_view(session: Session, edition: Edition, order: Sequence[str] = (), *,
                 catch_up_from: int | None = None) -> EditionView:
    """The edition as it is, or (catch_up_from: see catch_up_posts) the first one after a change
    of cadence."""
    posts = edition_posts(session, edition) if catch_up_from is None else catch_up_posts(session, edition,
                                                                                           catch_up_from)
    return view(posts, edition.number, edition.created_at, order, edition.cadence)


def unfinished(session: Session) -> list[Edition]:
    return list(
        session.exec(
            select(Edition).where(col(Edition.status) == EditionStatus.sending).order_by(col(Edition.id))
        ).all()
    )


def next_number(session: Session, cadence: str = MAIN_CADENCE) -> int:
    """Each cadence numbers its editions from 1."""
    return (session.exec(select(func.max(col(Edition.number))).where(col(Edition.cadence) == cadence)).one() or 0) + 1


@dataclass(frozen=True)
class Readers:
    """Who gets a cadence's editions: the readers who chose it (stored key `cadence`); for the main
    cadence also those whose cadence the config no longer offers (not one of `offered`, the
    other cadences' keys), so that withdrawing a cadence loses no reader."""

    cadence: str = MAIN_CADENCE
    offered: frozenset[str] = frozenset()

    def where(self) -> ColumnElement[bool]:
        """SQL: the subscriber is one of them."""
        chose = col(Subscriber.cadence) == self.cadence
        if self.cadence != MAIN_CADENCE:
            return chose
        return or_(chose, col(Subscriber.cadence).not_in(sorted(self.offered)))

    def any_active(self, session: Session) -> bool:
        return session.exec(select(col(Subscriber.id)).where(self.where(), *_ACTIVE).limit(1)).first() is not None


MAIN_READERS = Readers()


def create(
    session: Session,
    clock: Clock,
    *,
    subject_template: str,
    newsletter_name: str,
    slot: datetime | None = None,
    readers: Readers = MAIN_READERS,
) -> Edition | None:
    """Create the next edition of `readers`' cadence from every post not yet in one, with a pending
    delivery for each active reader of it, in one transaction under the edition lock (so concurrent
    senders take turns and the second finds the posts taken). None when there is nothing new (or
    the slot is taken, or a cadence other than the main one has no active reader)."""
    locks.acquire(session, locks.EDITION, now=as_utc(clock()))
    try:
        edition = build(
            session, clock, subject_template=subject_template, newsletter_name=newsletter_name, slot=slot,
            readers=readers,
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
    readers: Readers = MAIN_READERS,
) -> Edition | None:
    """Add the next edition of `readers`' cadence, its posts and its deliveries to the session's
    transaction and flush; the caller holds the edition lock and commits. None (nothing added)
    when there is nothing new, or when a cadence other than the main one has no active reader: its
    posts then wait for its next edition (the main cadence's editions are made in any case: they
    are the archive's, and other cadences start from them)."""
    cadence = readers.cadence
    posts = unsent_posts(session, cadence)
    if not posts or (cadence != MAIN_CADENCE and not readers.any_active(session)):
        return None
    now = as_utc(clock())
    number = next_number(session, cadence)
    edition = Edition(
        cadence=cadence,
        number=number,
        created_at=now,
        status=EditionStatus.sending,
        subject=subject_for(subject_template, newsletter_name, len(posts), number, now),
        slot=as_utc(slot) if slot else None,
    )
    session.add(edition)
    session.flush()
    session.add_all(EditionPost(cadence=cadence, post_id=stored_id(p), edition_id=stored_id(edition)) for p in posts)
    session.flush()
    _add_deliveries(session, edition, frozenset(p.category for p in posts), readers)
    _add_catch_ups(session, edition, frozenset(p.category for p in posts), readers, now)
    # Counted, not the INSERT's rowcount: psycopg reports -1 for an INSERT ... SELECT here.
    edition.recipients = delivery_count(session, edition)
    session.add(edition)
    return edition


# Who is mailed at all: active and not paused.
_ACTIVE = (col(Subscriber.status) == SubscriberStatus.active, col(Subscriber.paused) == False)  # noqa: E712


def _add_deliveries(session: Session, edition: Edition, categories: frozenset[str], readers: Readers) -> None:
    """One pending delivery per reader of the cadence who is active, not paused, wants one of
    these categories and did not just change cadence (see _add_catch_ups), in a single INSERT ...
    SELECT (no subscriber is loaded into memory)."""
    wanted = sa_select(
        literal(edition.id),
        col(Subscriber.id),
        literal(DeliveryStatus.pending.name),
        literal(0),
    ).where(
        *_ACTIVE,
        readers.where(),
        col(Subscriber.cadence_changed_at).is_(None),
        _wants(session, categories),
    )
    session.execute(
        insert(Delivery).from_select(["edition_id", "subscriber_id", "status", "attempts"], wanted)
    )


def _wants(session: Session, categories: frozenset[str]) -> ColumnElement[bool]:
    """SQL: the subscriber wants one of `categories` (or every category)."""
    return or_(col(Subscriber.topics).is_(None), chose_any(session.get_bind().dialect.name, categories))


def _add_catch_ups(session: Session, edition: Edition, categories: frozenset[str], readers: Readers,
                   now: datetime) -> None:
    """The readers who changed cadence since their last edition: each gets, in place of this
    edition, what they have not had yet up to it (catch_up_posts from their last edition before,
    recorded in Delivery.catch_up_from), and is then in step with their new cadence. Few readers
    change cadence between two editions, and those who had the same last edition share one
    variant (rendered once)."""
    last_had = (
        sa_select(func.max(col(Delivery.edition_id)))
        .where(col(Delivery.subscriber_id) == col(Subscriber.id), col(Delivery.edition_id) != edition.id)
        .scalar_subquery()
    )
    changed: Sequence[tuple[int, int | None]] = session.exec(  # type: ignore[assignment]  # id is set once stored
        select(col(Subscriber.id), last_had).where(
            *_ACTIVE, readers.where(), col(Subscriber.cadence_changed_at).is_not(None)
        )
    ).all()
    by_point: dict[int | None, list[int]] = {}
    for subscriber_id, since in changed:
        by_point.setdefault(since, []).append(subscriber_id)
    for since, ids in by_point.items():
        # None: they never had an edition, so there is nothing to catch up on.
        wanted = categories if since is None else frozenset(p.category for p in catch_up_posts(session, edition, since))
        in_step = list(ids)
        if wanted:
            getting = sa_select(
                literal(edition.id), col(Subscriber.id), cast(literal(since), Integer),
                literal(DeliveryStatus.pending.name), literal(0),
            ).where(col(Subscriber.id).in_(ids), _wants(session, wanted))
            session.execute(insert(Delivery).from_select(
                ["edition_id", "subscriber_id", "catch_up_from", "status", "attempts"], getting))
            # Who wants none of these topics waits for an edition that has one: it will catch up
            # from the same point.
            in_step = [i for i in session.exec(
                select(col(Delivery.subscriber_id)).where(col(Delivery.edition_id) == edition.id,
                                                          col(Delivery.subscriber_id).in_(ids))
            ).all() if i is not None]
        session.execute(update(Subscriber).where(col(Subscriber.id).in_(in_step)).values(cadence_changed_at=None))


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


def summaries(session: Session, cadence: str | None = None) -> list[tuple[Edition, dict[str, int]]]:
    """Every edition (of `cadence`; None: of every cadence), newest first, with post and delivery
    counts."""
    stmt = select(Edition).order_by(col(Edition.id).desc())
    if cadence is not None:
        stmt = stmt.where(col(Edition.cadence) == cadence)
    rows = list(session.exec(stmt).all())
    counts = _counts(session, [stored_id(e) for e in rows])
    return [(e, counts[stored_id(e)]) for e in rows]


def counts(session: Session, edition: Edition) -> dict[str, int]:
    """`edition`'s posts and its deliveries by status: {"posts", "pending", "sent", "failed", "skipped"}."""
    return _counts(session, [stored_id(edition)])[stored_id(edition)]


def get(session: Session, number: int, cadence: str = MAIN_CADENCE) -> Edition:
    edition = session.exec(
        select(Edition).where(col(Edition.cadence) == cadence, col(Edition.number) == number)
    ).first()
    if edition is None:
        raise NotFound(f"no edition {number} (see `digest editions`)")
    return edition


# (address, attempts, error); the address is None once the subscriber's data was erased.
Failure = tuple[str | None, int, str | None]


def details(session: Session, number: int, cadence: str = MAIN_CADENCE
            ) -> tuple[Edition, dict[str, int], list[Post], Sequence[Failure]]:
    """(edition, counts, posts, failures[(address, attempts, error)]) for `digest editions show`."""
    edition = get(session, number, cadence)
    posts = edition_view(session, edition).sections
    failures = session.exec(
        select(col(Subscriber.email), col(Delivery.attempts), col(Delivery.last_error))
        .select_from(Delivery)
        .outerjoin(Subscriber, col(Subscriber.id) == col(Delivery.subscriber_id))
        .where(col(Delivery.edition_id) == edition.id, col(Delivery.status) == DeliveryStatus.failed)
        .order_by(col(Delivery.id))
    ).all()
    return edition, counts(session, edition), [p for s in posts for p in s.posts], failures


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
