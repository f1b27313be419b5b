"""The ledger: the Delivery table, and the narrow interface the senders use on it.

A sender needs five things of the ledger (`DeliveryStore`): claim a batch (writing its earlier
results in the same transaction), record results, renew its lease, release what it holds, and
replay a dead sender's journal. `SQLLedger` does them with dialect-tuned SQL on a session;
`MemoryLedger` does the same on rows in memory, so the sender loop can be tested without a
database and the SQL tuned without the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import TextClause, Update, bindparam, func, text, update
from sqlalchemy.engine import Dialect
from sqlmodel import Session, col, select

from digest.delivery.claims import Claimed
from digest.store.models import (
    Delivery,
    DeliveryStatus,
    Edition,
    EditionStatus,
    Subscriber,
    SubscriberStatus,
    as_utc,
    stored_id,
    table_of,
    topics_text,
)

# Results are plain tuples: one is built per message sent, and a NamedTuple costs a Python call
# more each.
Accepted = tuple[int, str, datetime]  # (delivery id, Message-ID, accepted at): also a journal line
# any other result of one attempt: (delivery id, status, attempts, error, next attempt at); status
# failed, skipped, or pending with a next attempt (deferred)
Outcome = tuple[int, DeliveryStatus, int, str | None, datetime | None]


@dataclass
class Results:
    """What a sender learnt since its last write."""

    accepted: list[Accepted] = field(default_factory=list)
    other: list[Outcome] = field(default_factory=list)
    bounced: list[int] = field(default_factory=list)  # subscriber ids: "no such address" (5.1.x)

    def __len__(self) -> int:  # deliveries with a result (a bounce comes with a failed Outcome)
        return len(self.accepted) + len(self.other)


class DeliveryStore(Protocol):
    def claim(self, edition_id: int, sender: str, *, now: datetime, until: datetime, limit: int,
              after: int = 0, results: Results | None = None) -> list[Claimed]:
        """Write `results`, then take up to `limit` pending deliveries of the edition that nobody
        holds and that are due at `now`, with ids above `after`, held by `sender` until `until`.
        One transaction, committed (a batch costs one write transaction). On an exception nothing
        is written: the caller keeps `results`."""

    def record(self, results: Results) -> None:
        """Write `results` (ending their claims; bounced subscribers become `bounced`) and commit.
        On an exception nothing is written: the caller keeps `results`."""

    def renew(self, sender: str, until: datetime) -> int:
        """Extend `sender`'s claims to `until`; how many it still holds (fewer: some were taken over)."""

    def release(self, sender: str) -> None:
        """Give back every claim `sender` still holds."""

    def replay(self, accepted: Sequence[Accepted]) -> int:
        """Mark as sent what a dead sender journaled (only deliveries still pending); commit.
        Returns the acceptances given."""


# ---------------------------------------------------------------------------------------------
# SQL


def _typed(stmt: TextClause, *names: str) -> TextClause:
    """Bind datetime parameters of a text() statement with the columns' type (UTC storage)."""
    kind = table_of(Delivery).c.claimed_until.type
    return stmt.bindparams(*(bindparam(n, type_=kind) for n in names))


@dataclass(frozen=True)
class _ClaimStatements:
    take: TextClause
    held: TextClause | None  # None: `take` returns the rows itself


_claim_cache: dict[str, _ClaimStatements] = {}

_TAKE = (
    "UPDATE delivery SET claimed_by = :worker, claimed_until = :until WHERE id IN ("
    " SELECT id FROM delivery WHERE edition_id = :edition AND status = 'pending' AND id > :after"
    " AND (claimed_until IS NULL OR claimed_until < :now)"
    " AND (next_attempt_at IS NULL OR next_attempt_at <= :now)"
    " LIMIT :limit{lock})"
)
_SUBSCRIBER_COLUMNS = "s.id, s.email, s.name, s.topics, s.status, s.paused"


def _claim_statements(session: Session) -> _ClaimStatements:
    dialect = session.get_bind().dialect.name
    if dialect not in _claim_cache:
        if dialect == "postgresql":
            # Reading the batch back by claimed_by would walk that index's dead entries for every
            # batch this sender ever claimed (they stay until vacuum): RETURNING joins it here.
            statements = _ClaimStatements(
                take=_typed(text(
                    "WITH c AS (" + _TAKE.format(lock=" FOR UPDATE SKIP LOCKED")
                    + " RETURNING id, attempts, subscriber_id, catch_up_from)"
                    f" SELECT c.id, c.attempts, {_SUBSCRIBER_COLUMNS}, c.catch_up_from"
                    " FROM c LEFT JOIN subscriber s ON s.id = c.subscriber_id ORDER BY c.id"
                ), "until", "now"),
                held=None,
            )
        else:
            statements = _ClaimStatements(
                take=_typed(text(_TAKE.format(lock="")), "until", "now"),
                held=text(
                    f"SELECT d.id, d.attempts, {_SUBSCRIBER_COLUMNS}, d.catch_up_from"
                    " FROM delivery d LEFT JOIN subscriber s ON s.id = d.subscriber_id"
                    # "+": look rows up by claimed_by (a batch), not by edition (SQLite would
                    # walk every pending delivery of the edition)
                    " WHERE d.claimed_by = :worker AND d.status = 'pending' AND +d.edition_id = :edition"
                    " ORDER BY d.id"
                ),
            )
        _claim_cache[dialect] = statements
    return _claim_cache[dialect]


_t = table_of(Delivery)
_RECORD = (
    update(_t)
    .where(_t.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        attempts=bindparam("b_attempts"),
        last_error=bindparam("b_error"),
        message_id=bindparam("b_message_id"),
        sent_at=bindparam("b_sent_at"),
        next_attempt_at=bindparam("b_next"),
        claimed_by=None,
        claimed_until=None,
    )
)


# The common case, an acceptance: three values a row, executed by the driver directly (through
# SQLAlchemy's per-row parameter processing it cost ~9 µs more per message).
_RECORD_SENT = text(
    "UPDATE delivery SET status = 'sent', attempts = attempts + 1, last_error = NULL,"
    " message_id = :m, sent_at = :s, next_attempt_at = NULL, claimed_by = NULL, claimed_until = NULL"
    " WHERE id = :i"
)


class _SentWriter:
    """_RECORD_SENT compiled once for the session's dialect, with the datetime column's own bind
    processor, so rows go straight to the driver's executemany."""

    def __init__(self, session: Session):
        dialect = session.get_bind().dialect
        compiled = _RECORD_SENT.compile(dialect=dialect)
        self.sql = compiled.string
        self.order = compiled.positiontup  # None for named paramstyles
        self.to_db = _utc_binder(dialect)

    def params(self, rows: list[Accepted]) -> Sequence[Mapping[str, object]] | Sequence[Sequence[object]]:
        to_db = self.to_db
        if self.order is None:
            return [{"i": i, "m": m, "s": to_db(at)} for i, m, at in rows]
        if self.order == ["m", "s", "i"]:  # SQLite
            return [(m, to_db(at), i) for i, m, at in rows]
        pick = {"i": 0, "m": 1, "s": 2}
        idx = [pick[name] for name in self.order]
        return [tuple((i, m, to_db(at))[k] for k in idx) for i, m, at in rows]


def _sqlite_text(at: datetime) -> str:
    return at.isoformat(" ", "microseconds")[:26]  # the UTC offset cut


def _as_given(at: datetime) -> datetime:
    return at


def _utc_binder(dialect: Dialect) -> Callable[[datetime], object]:
    """What the driver gets for an aware UTC datetime in a DateTime column of this dialect.

    SQLAlchemy's own processors (sqlmodel's UTC type, then SQLite's string formatting) cost
    ~6 µs a row, a fifth of a sender's Python time; SQLite stores the text "YYYY-MM-DD
    HH:MM:SS.ffffff", which isoformat() writes in ~0.3 µs, and PostgreSQL's driver takes the
    aware datetime itself. The shortcut is used only when it gives what SQLAlchemy gives."""
    generic = _t.c.sent_at.type.dialect_impl(dialect).bind_processor(dialect) or _as_given
    fast: Callable[[datetime], object] = _sqlite_text if dialect.name == "sqlite" else _as_given
    samples = [datetime(2026, 3, 29, 1, 2, 3, 4, tzinfo=UTC), datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)]
    return fast if all(fast(at) == generic(at) for at in samples) else generic


_RENEW = _typed(text(
    "UPDATE delivery SET claimed_until = :until WHERE claimed_by = :worker AND status = 'pending'"
), "until")


_REPLAY = (
    update(_t)
    .where(_t.c.id == bindparam("b_id"), _t.c.status == DeliveryStatus.pending.name)
    .values(
        status=DeliveryStatus.sent.name,
        attempts=_t.c.attempts + 1,
        message_id=bindparam("b_mid"),
        sent_at=bindparam("b_at"),
        claimed_by=None,
        claimed_until=None,
    )
)

_COUNT_DUE = _typed(text(
    "SELECT COUNT(*) FROM delivery WHERE edition_id = :e AND status = 'pending'"
    " AND (next_attempt_at IS NULL OR next_attempt_at <= :now)"
), "now")

# The distinct (topic choice, catch-up point) of an edition's pending deliveries: the variants a
# pool will need (at most 64 rendered in advance; a sender meeting another one renders it itself).
_PENDING_VARIANTS = text(
    "SELECT DISTINCT s.topics, d.catch_up_from FROM delivery d JOIN subscriber s ON s.id = d.subscriber_id"
    " WHERE d.edition_id = :e AND d.status = 'pending' LIMIT 64"
)


def _release(sender: str) -> Update:
    """The UPDATE that gives back every claim `sender` still holds."""
    return (
        update(Delivery)
        .where(col(Delivery.claimed_by) == sender, col(Delivery.status) == DeliveryStatus.pending)
        .values(claimed_by=None, claimed_until=None)
    )


class SQLLedger:
    """DeliveryStore on a database session (SQLite or PostgreSQL)."""

    def __init__(self, session: Session):
        self.session = session
        self._writer: _SentWriter | None = None

    def claim(self, edition_id: int, sender: str, *, now: datetime, until: datetime, limit: int,
              after: int = 0, results: Results | None = None) -> list[Claimed]:
        """One UPDATE: its subquery walks the partial index of pending deliveries (edition_id,
        id) and stops after `limit` rows (no ORDER BY: sorting every pending row made each claim
        O(pending), a sender O(pending²) on a large list). Starting after the previous batch skips
        the index entries of deliveries already sent (on PostgreSQL they linger until vacuum:
        31.8 ms per claim without the cursor, 3.1 ms with it, on a 300k edition). On PostgreSQL
        the claimed rows are joined to their subscribers in the same statement; on SQLite they are
        read after the commit (which frees the database's one write lock sooner) by the
        claimed_by index."""
        session = self.session
        try:
            if results:
                self._write(results)
            statements = _claim_statements(session)
            params = {"worker": sender, "until": until, "edition": edition_id, "now": now, "limit": limit,
                      "after": after}
            if statements.held is None:
                rows = session.connection().execute(statements.take, params).all()
                session.commit()
            else:
                taken = session.connection().execute(statements.take, params).rowcount
                session.commit()
                rows = []
                if taken:
                    rows = session.connection().execute(
                        statements.held, {"worker": sender, "edition": edition_id}).all()
                    session.commit()
        except BaseException:
            session.rollback()
            raise
        return [
            Claimed(r[0], r[1], r[2], r[3], r[4], r[5], r[2] is not None and r[6] == "active" and not r[7], r[8])
            for r in rows
        ]

    def record(self, results: Results) -> None:
        try:
            self._write(results)
            self.session.commit()
        except BaseException:
            self.session.rollback()
            raise

    def _write(self, results: Results) -> None:
        session = self.session
        if results.accepted:
            if self._writer is None:
                self._writer = _SentWriter(session)
            session.connection().exec_driver_sql(self._writer.sql, self._writer.params(results.accepted))
        if results.other:
            session.execute(_RECORD, [
                {"b_id": i, "b_status": status.name, "b_attempts": attempts, "b_error": error,
                 "b_message_id": None, "b_sent_at": None, "b_next": next_at}
                for i, status, attempts, error, next_at in results.other
            ])
        if results.bounced:
            # bounced_at from the database's clock: Results carry no time for a bounce.
            session.execute(
                update(Subscriber)
                .where(col(Subscriber.id).in_(results.bounced), col(Subscriber.status) == SubscriberStatus.active)
                .values(status=SubscriberStatus.bounced, bounced_at=func.now())
            )

    def renew(self, sender: str, until: datetime) -> int:
        kept = self.session.connection().execute(_RENEW, {"worker": sender, "until": until}).rowcount
        self.session.commit()
        return kept

    def release(self, sender: str) -> None:
        self.session.execute(_release(sender))
        self.session.commit()

    def replay(self, accepted: Sequence[Accepted]) -> int:
        if accepted:
            self.session.execute(_REPLAY, [{"b_id": i, "b_mid": m, "b_at": at} for i, m, at in accepted])
        self.session.commit()
        return len(accepted)

    # -- outside the sender loop

    def release_dead(self, is_gone: Callable[[str], bool]) -> int:
        """Free the claims of senders `is_gone` says no longer run (e.g. SIGKILLed); how many senders."""
        owners = self.session.exec(
            select(Delivery.claimed_by)
            .where(col(Delivery.status) == DeliveryStatus.pending, col(Delivery.claimed_by).is_not(None))
            .distinct()
        ).all()
        dead = [o for o in owners if o and is_gone(o)]
        for owner in dead:
            self.session.execute(_release(owner))
        self.session.commit()
        return len(dead)

    def count_due(self, edition_id: int, now: datetime) -> int:
        """Pending deliveries of the edition due at `now` (held by a sender or not)."""
        due: int = self.session.execute(_COUNT_DUE, {"e": edition_id, "now": now}).scalar_one()
        return due

    def pending_variants(self, edition_id: int) -> list[tuple[str | None, int | None]]:
        """The distinct (stored topic choice, catch-up point) of the edition's pending deliveries
        (at most 64)."""
        rows = self.session.execute(_PENDING_VARIANTS, {"e": edition_id}).all()
        return [(topics, catch_up_from) for topics, catch_up_from in rows]


def reset_for_retry(session: Session, edition: Edition) -> int:
    """Make an edition's failed deliveries, and its pending ones waiting for their next attempt,
    due again now with a fresh attempt count — only for subscribers who are still active
    (hard-bounced, suspended or unsubscribed addresses stay as they are). Returns how many."""
    n: int = session.execute(  # type: ignore[attr-defined]  # an UPDATE's result is a CursorResult
        text(
            "UPDATE delivery SET status = 'pending', attempts = 0, next_attempt_at = NULL,"
            " claimed_by = NULL, claimed_until = NULL"
            " WHERE edition_id = :e AND status IN ('failed', 'pending')"
            " AND subscriber_id IN (SELECT id FROM subscriber WHERE status = 'active' AND NOT paused)"
        ),
        {"e": edition.id},
    ).rowcount
    if n and edition.status != EditionStatus.sending:
        edition.status = EditionStatus.sending
        edition.finished_at = None
        session.add(edition)
    session.commit()
    return n


# ---------------------------------------------------------------------------------------------
# In memory


class MemoryLedger:
    """DeliveryStore on Delivery and Subscriber objects kept in memory (not in a database), with
    the same rules as the SQL: for tests of the sender loop (the `MemoryMailer` of the ledger)."""

    def __init__(self, deliveries: Iterable[Delivery], subscribers: Iterable[Subscriber] = ()):
        self.deliveries = sorted(deliveries, key=stored_id)  # the claim's index order
        self.by_id = {d.id: d for d in self.deliveries}
        self.subscribers = {s.id: s for s in subscribers}
        self.claims = 0  # claim() calls, for tests

    def claim(self, edition_id: int, sender: str, *, now: datetime, until: datetime, limit: int,
              after: int = 0, results: Results | None = None) -> list[Claimed]:
        if results:
            self.record(results)
        self.claims += 1
        batch: list[Claimed] = []
        for d in self.deliveries:
            if len(batch) >= limit:
                break
            if (d.edition_id == edition_id and d.status == DeliveryStatus.pending
                    and d.id is not None and d.id > after
                    and (d.claimed_until is None or as_utc(d.claimed_until) < now)
                    and (d.next_attempt_at is None or as_utc(d.next_attempt_at) <= now)):
                d.claimed_by, d.claimed_until = sender, until
                batch.append(self._claimed(d))
        return batch

    def _claimed(self, d: Delivery) -> Claimed:
        s = self.subscribers.get(d.subscriber_id) if d.subscriber_id is not None else None
        if s is None:
            return Claimed(stored_id(d), d.attempts, None, None, None, None, False)
        topics = None if s.topics is None else topics_text(s.topics)
        return Claimed(stored_id(d), d.attempts, s.id, s.email, s.name, topics,
                       s.status == SubscriberStatus.active and not s.paused, d.catch_up_from)

    def record(self, results: Results) -> None:
        for i, mid, at in results.accepted:
            d = self.by_id[i]
            d.status, d.attempts, d.last_error = DeliveryStatus.sent, d.attempts + 1, None
            d.message_id, d.sent_at = mid, at
            d.next_attempt_at = d.claimed_by = d.claimed_until = None
        for i, status, attempts, error, next_at in results.other:
            d = self.by_id[i]
            d.status, d.attempts, d.last_error, d.next_attempt_at = status, attempts, error, next_at
            d.message_id = d.sent_at = d.claimed_by = d.claimed_until = None
        for sid in results.bounced:
            s = self.subscribers.get(sid)
            if s is not None and s.status == SubscriberStatus.active:
                s.status = SubscriberStatus.bounced
                s.bounced_at = datetime.now(UTC)

    def renew(self, sender: str, until: datetime) -> int:
        kept = 0
        for d in self.deliveries:
            if d.claimed_by == sender and d.status == DeliveryStatus.pending:
                d.claimed_until = until
                kept += 1
        return kept

    def release(self, sender: str) -> None:
        for d in self.deliveries:
            if d.claimed_by == sender and d.status == DeliveryStatus.pending:
                d.claimed_by = d.claimed_until = None

    def replay(self, accepted: Sequence[Accepted]) -> int:
        for i, mid, at in accepted:
            d = self.by_id.get(i)
            if d is not None and d.status == DeliveryStatus.pending:
                d.status, d.attempts, d.message_id, d.sent_at = DeliveryStatus.sent, d.attempts + 1, mid, at
                d.claimed_by = d.claimed_until = None
        return len(accepted)
