"""The tables: Source, Post, Subscriber, Edition, EditionPost, Delivery; Outbox; ScheduleRun, Lock;
Admin, AdminSession, SendRequest; ApiKey.

Datetimes are timezone-aware UTC in Python (``as_utc()``); SQLModel stores them as UTC.
Status enums are stored by name in a VARCHAR on every database (no native ENUM type, no CHECK):
adding a status later is a code change, not a migration. The schema itself is created and changed
only by the migrations in ``digest/migrations`` (see ``store.upgrade``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol

from sqlalchemy import Column, Dialect, Index, Table, Text, UniqueConstraint, text
from sqlalchemy import Enum as SAEnum
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

# Constraint names are fixed (not left to each database) so a migration can name what it alters,
# which SQLite's batch mode needs. Set before any table is defined.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# The main cadence (`schedule.cron`) in every `cadence` column: its editions and readers are stored
# under "" whatever `schedule.name` calls it, so renaming it in the config moves nothing; another
# cadence is stored by its name (a key of `schedule.cadences`).
MAIN_CADENCE = ""


def _status(enum: type[Enum]) -> SAEnum:
    """A status column: the member's name in a VARCHAR(32), the same on SQLite and PostgreSQL."""
    return SAEnum(enum, native_enum=False, create_constraint=False, length=32)


def as_utc(dt: datetime) -> datetime:
    """A datetime as timezone-aware UTC (a naive one is taken to be UTC already)."""
    tz = dt.tzinfo
    if tz is UTC:  # the common case, and a hot one (twice per message sent)
        return dt
    if tz is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


class _Stored(Protocol):
    @property
    def id(self) -> int | None: ...


def stored_id(row: _Stored) -> int:
    """The primary key of a row in the database (its `id` is None only before the first flush)."""
    if row.id is None:
        raise ValueError(f"this {type(row).__name__} is not stored yet")
    return row.id


def table_of(model: type[SQLModel]) -> Table:
    """The Core table of a table model, for SQL without the ORM's bookkeeping."""
    table: Table = model.__table__  # type: ignore[attr-defined]  # SQLModel sets it but does not declare it
    return table


def topics_text(names: Iterable[str]) -> str:
    """The stored form of a topic choice: a JSON array, sorted and without duplicates, so that the
    same choice made in any order is the same text (the render-once cache and SELECT DISTINCT of
    the delivery path group subscribers by it)."""
    return json.dumps(sorted(set(names)), ensure_ascii=False, separators=(",", ":"))


def parse_topics(stored: str | None) -> frozenset[str] | None:
    """A stored choice (topics_text) as a set; None = every category."""
    return None if stored is None else frozenset(json.loads(stored))


class TopicList(TypeDecorator[list[str]]):
    """A list of category names kept as topics_text() in a TEXT column; None stays NULL."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Iterable[str] | None, dialect: Dialect) -> str | None:
        return None if value is None else topics_text(value)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> list[str] | None:
        if value is None:
            return None
        topics: list[str] = json.loads(value)
        return topics


class SubscriberStatus(str, Enum):
    pending = "pending"  # signed up, not yet confirmed
    active = "active"
    unsubscribed = "unsubscribed"
    bounced = "bounced"
    suspended = "suspended"


class EditionStatus(str, Enum):
    sending = "sending"  # deliveries still pending
    sent = "sent"  # every delivery is sent or failed


class DeliveryStatus(str, Enum):
    pending = "pending"
    sent = "sent"
    failed = "failed"
    skipped = "skipped"  # the subscriber left (or was erased) before it went out


class OutboxStatus(str, Enum):
    pending = "pending"  # waiting for its first attempt or a retry
    sent = "sent"
    failed = "failed"  # refused for good, or out of attempts
    skipped = "skipped"  # no longer wanted when its turn came (e.g. the reader had confirmed)


class Source(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    url: str = Field(unique=True, max_length=2000)
    title: str | None = Field(default=None, max_length=500)
    etag: str | None = Field(default=None, max_length=500)
    last_modified: str | None = Field(default=None, max_length=100)
    created_at: datetime
    last_polled_at: datetime | None = None  # the last fetch tried, whatever came of it
    last_fetched_at: datetime | None = None  # the last fetch that succeeded
    last_error: str | None = Field(default=None, sa_column=Column(Text))


class Post(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("source_id", "guid", name="uq_post_source_guid"),)

    id: int | None = Field(default=None, primary_key=True)
    source_id: int = Field(foreign_key="source.id", index=True)
    guid: str = Field(max_length=2000)
    url: str = Field(max_length=2000)
    title: str = Field(sa_column=Column(Text, nullable=False))  # as the feed gives it
    category: str = Field(max_length=200)  # the section it goes under
    display_title: str = Field(sa_column=Column(Text, nullable=False))  # title without the prefix
    author: str | None = Field(default=None, max_length=500)
    published_at: datetime | None = None
    excerpt: str = Field(sa_column=Column(Text, nullable=False))  # plain text
    content_hash: str = Field(max_length=64)
    # The lead image (content.images): an http(s) URL as the email shows it, and its size in
    # pixels when the feed gives it. None: the feed names no usable image.
    image_url: str | None = Field(default=None, max_length=2000)
    image_width: int | None = None
    image_height: int | None = None
    first_seen_at: datetime = Field(index=True)
    updated_at: datetime
    # False when the post was already old on a new install: it counts as seen, never sent.
    eligible: bool = True


class Subscriber(SQLModel, table=True):
    __table_args__ = (
        # The admin overview's chart counts joins, departures and bounces per week over 26 weeks
        # from these columns alone (index-only range scans at a million subscribers).
        Index("ix_subscriber_confirmed", "confirmed_at", "status"),
        Index("ix_subscriber_unsubscribed", "unsubscribed_at", "status"),
        Index("ix_subscriber_bounced", "bounced_at", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True, max_length=320)  # normalized, lower-case domain
    name: str | None = Field(default=None, max_length=200)
    status: SubscriberStatus = Field(default=SubscriberStatus.active, index=True, sa_type=_status(SubscriberStatus))
    # The categories chosen, as a JSON array in a TEXT column (TopicList); None = every category.
    # A category name may hold any character, so no separator will do ("News, Events" split into
    # two phantom topics when this was comma-separated). JSON in TEXT rather than a join table: a
    # choice is always read and written whole, and the claim query reads it with the subscriber in
    # one join. TEXT rather than the JSON type: PostgreSQL's json has no equality (SELECT DISTINCT
    # groups subscribers by choice) and its driver would hand the raw-SQL claim query a list
    # where SQLite gives text; TEXT reads the same on both.
    topics: list[str] | None = Field(default=None, sa_column=Column(TopicList))
    # How often they get the digest: MAIN_CADENCE or a name in `schedule.cadences` (a name the
    # config no longer offers counts as the main one).
    cadence: str = Field(default=MAIN_CADENCE, max_length=50, sa_column_kwargs={"server_default": MAIN_CADENCE})
    # Set when they change cadence, cleared when the first edition in the new one is built for
    # them: that edition carries what they have not had yet (editions.catch_up_posts).
    cadence_changed_at: datetime | None = None
    paused: bool = False
    created_at: datetime
    confirmed_at: datetime | None = None
    unsubscribed_at: datetime | None = None
    confirmation_sent_at: datetime | None = None
    bounced_at: datetime | None = None  # when it became bounced or suspended
    # When the welcome mail was queued (service/welcome.py): at most once per subscriber.
    welcomed_at: datetime | None = None


class Edition(SQLModel, table=True):
    # Each cadence numbers its editions, and has at most one per schedule slot.
    __table_args__ = (
        UniqueConstraint("cadence", "number", name="uq_edition_cadence_number"),
        UniqueConstraint("cadence", "slot", name="uq_edition_cadence_slot"),
    )

    id: int | None = Field(default=None, primary_key=True)
    cadence: str = Field(default=MAIN_CADENCE, max_length=50, sa_column_kwargs={"server_default": MAIN_CADENCE})
    number: int
    created_at: datetime
    status: EditionStatus = Field(default=EditionStatus.sending, index=True, sa_type=_status(EditionStatus))
    subject: str = Field(sa_column=Column(Text, nullable=False))
    finished_at: datetime | None = None
    # The schedule slot that produced it (UTC instant), so one slot makes at most one edition.
    slot: datetime | None = None
    # Deliveries it was built with, so its delivered count is this minus the few failed, skipped
    # and pending ones (ix_delivery_unsent) rather than a count of a million rows.
    recipients: int | None = None


class EditionPost(SQLModel, table=True):
    """Which posts an edition carries. (cadence, post_id) is the key: a post is in one edition of
    each cadence at most (`cadence` repeats the edition's, so the database can hold to it)."""

    cadence: str = Field(default=MAIN_CADENCE, primary_key=True, max_length=50,
                         sa_column_kwargs={"server_default": MAIN_CADENCE})
    post_id: int = Field(foreign_key="post.id", primary_key=True)
    edition_id: int = Field(foreign_key="edition.id", index=True)


class Delivery(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("edition_id", "subscriber_id", name="uq_delivery_edition_subscriber"),
        # What claim() scans: an edition's pending deliveries in id order, and nothing else (sent
        # ones leave the index, so a claim deep into a million-row edition stays one short scan).
        Index(
            "ix_delivery_pending",
            "edition_id",
            "id",
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        # What is not (yet) delivered, by edition: the admin overview counts failed, skipped and
        # pending deliveries from it; delivered ones, nearly all of them, leave it. With id last,
        # an edition's page reads its failures 50 at a time in id order from it alone.
        Index(
            "ix_delivery_unsent",
            "edition_id",
            "status",
            "id",
            sqlite_where=text("status <> 'sent'"),
            postgresql_where=text("status <> 'sent'"),
        ),
        # Each edition's bounces (failed, with a recorded bounce as the last error): the admin
        # overview counts them from this index alone (bench/admin.py: ~55 ms -> a few ms).
        Index(
            "ix_delivery_bounced",
            "edition_id",
            sqlite_where=text("status = 'failed' AND last_error LIKE 'bounced (%'"),
            postgresql_where=text("status = 'failed' AND last_error LIKE 'bounced (%'"),
        ),
        # Claims held right now (a few batches per sender): releasing and taking over claims.
        Index(
            "ix_delivery_claimed_by",
            "claimed_by",
            sqlite_where=text("claimed_by IS NOT NULL"),
            postgresql_where=text("claimed_by IS NOT NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    edition_id: int = Field(foreign_key="edition.id")
    # NULL once the subscriber's data was erased (`digest subscribers delete`).
    subscriber_id: int | None = Field(default=None, foreign_key="subscriber.id", index=True)
    # The first edition after a change of cadence: the last edition the reader had before (any
    # cadence); the message carries the edition's cadence's posts up to this edition that the
    # reader had not had by then (editions.catch_up_posts). NULL: the edition as it is.
    catch_up_from: int | None = Field(default=None, foreign_key="edition.id")
    status: DeliveryStatus = Field(default=DeliveryStatus.pending, sa_type=_status(DeliveryStatus))
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    message_id: str | None = Field(default=None, max_length=300)
    sent_at: datetime | None = None
    next_attempt_at: datetime | None = None
    # Claim: a sender process takes a batch by writing its id and a lease end.
    claimed_by: str | None = Field(default=None, max_length=100)
    claimed_until: datetime | None = None


class Outbox(SQLModel, table=True):
    """Something a request decided to send (a confirmation mail; later other mail and webhooks),
    written in the request's own transaction and sent by a background loop (digest.outbox), so a
    request never waits on SMTP. Claimed like a delivery: a sender writes its id and a lease end,
    so two processes never send one row."""

    __tablename__ = "outbox"
    __table_args__ = (
        # What claim() scans: pending rows by due time; sent ones leave the index.
        Index(
            "ix_outbox_due",
            "next_attempt_at",
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_outbox_recipient", "recipient"),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=50)  # what to send, e.g. "confirmation"; names the handler
    recipient: str = Field(max_length=2000)  # an address (or, for a webhook, a URL)
    payload: str = Field(default="{}", sa_column=Column(Text, nullable=False))  # JSON, per kind
    status: OutboxStatus = Field(default=OutboxStatus.pending, sa_type=_status(OutboxStatus))
    created_at: datetime
    next_attempt_at: datetime
    attempts: int = 0
    sent_at: datetime | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    claimed_by: str | None = Field(default=None, max_length=100)
    claimed_until: datetime | None = None


class ScheduleRun(SQLModel, table=True):
    """What became of one schedule slot (the UTC instant the cron named): at most one row each.

    outcome: "edition" (edition_id was built for it), "nothing new", "already sent" (an edition was
    built at or after the slot by another sender, e.g. `digest send`), or "before start" (the
    latest slot before the schedule first ran on this database: never sent, only a baseline).
    """

    __tablename__ = "schedule_run"

    cadence: str = Field(default=MAIN_CADENCE, primary_key=True, max_length=50,
                         sa_column_kwargs={"server_default": MAIN_CADENCE})
    slot: datetime = Field(primary_key=True)
    ran_at: datetime
    outcome: str = Field(max_length=20)
    edition_id: int | None = Field(default=None, foreign_key="edition.id")


class Lock(SQLModel, table=True):
    """A named lock: a process holds it from the UPDATE of its row to the end of that transaction
    (see digest.locks). On SQLite that is the database write lock; on PostgreSQL a row lock."""

    __tablename__ = "app_lock"

    name: str = Field(primary_key=True, max_length=50)
    holder: str | None = Field(default=None, max_length=100)
    acquired_at: datetime | None = None


class Admin(SQLModel, table=True):
    """Someone who may sign in to /admin (`digest admin add`). The password is kept only as an
    argon2id hash (with its own salt and parameters, as argon2's encoded form carries them)."""

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True, max_length=320)
    password_hash: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime
    last_login_at: datetime | None = None


class AdminSession(SQLModel, table=True):
    """A signed-in browser. The cookie carries a random token (signed); the row is found by the
    token's SHA-256, so the table alone lets nobody sign in. Deleting the row is logging out;
    `last_seen_at` gives the idle expiry."""

    __tablename__ = "admin_session"

    id: str = Field(primary_key=True, max_length=64)  # SHA-256 of the cookie's token, hex
    admin_id: int = Field(foreign_key="admin.id", index=True)
    csrf_token: str = Field(max_length=64)  # what every form of this session posts back
    created_at: datetime
    last_seen_at: datetime


class SendRequest(SQLModel, table=True):
    """"Send now" from /admin: the request answers at once, and the web app's background thread
    (service.admin.sending) builds and sends the edition, recording what became of it here."""

    __tablename__ = "send_request"

    id: int | None = Field(default=None, primary_key=True)
    requested_by: str = Field(max_length=320)  # the admin's address
    requested_at: datetime
    status: str = Field(default="pending", max_length=20)  # pending, running, done, failed
    started_at: datetime | None = None
    finished_at: datetime | None = None
    edition_number: int | None = None  # the edition it built (None: nothing new to send)
    outcome: str | None = Field(default=None, sa_column=Column(Text))  # a line for the page


class ApiKey(SQLModel, table=True):
    """A key for the HTTP API (/api/v1), made by `digest api-key create`. Only the SHA-256 of the
    key is stored: the key itself is shown once, when it is made. A plain hash, not a password
    hash such as argon2: the key is 32 random bytes (256 bits), so there is nothing to guess a
    dictionary from, and one SHA-256 (~1 µs) a request is what authenticating it costs."""

    __tablename__ = "api_key"
    __table_args__ = (
        # A name names one live key (`digest api-key revoke NAME`); a revoked key's name can be
        # given to its replacement.
        Index(
            "uq_api_key_live_name",
            "name",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    key_hash: str = Field(max_length=64, unique=True)  # hex SHA-256 of the whole key
    created_at: datetime
    last_used_at: datetime | None = None  # to the minute (written at most once a minute)
    revoked_at: datetime | None = None
