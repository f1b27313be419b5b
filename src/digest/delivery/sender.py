"""Service: deliver an edition — claim pending deliveries in batches, send, record each outcome.

The ledger is the Delivery table. A sender claims a batch of pending deliveries by writing its
worker id and a lease end (one UPDATE, atomic on SQLite and PostgreSQL), sends them, and records
each result. Results are committed to the database in groups; between commits each acceptance is
also appended to a small per-process journal file (one unbuffered write, which survives the
process being killed), so after a crash the next sender replays the journal and re-sends only the
message that was in flight. Claims of a sender that died (its process is gone, or its lease ran
out) are taken over by the next one.

With `smtp.connections` > 1 (and a mailer that can be rebuilt in another process, and a database
file that other processes can open), `deliver()` starts that many sender processes (`pool.py`),
each with its own database session, SMTP connection, worker id and journal, all running the same
claim -> send -> record loop on the edition. The calling process renders each variant once and
hands the result over; it sends nothing itself.

Every message's envelope sender is a VERP address naming its delivery (`verp.py`), so a bounce
can be traced back (`bounces.py`); with `[dkim]` configured every message is DKIM-signed.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import bindparam, text, update
from sqlmodel import Session, select

from digest.delivery import pool
from digest.mail import dsn
from digest.config import Settings
from digest.mail.dkim import DKIMSigner
from digest.content.editions import EditionView, edition_view, pending_count
from digest.errors import DeliveryError
from digest.links import Links
from digest.mail.mailer import Envelope, Mailer, Pacer, Reply
from digest.mail.message import Message, Recipient
from digest.store.models import Delivery, DeliveryStatus, Edition, EditionStatus, Subscriber, SubscriberStatus, as_utc, parse_topics
from digest.content.plaintext import NAME_LIMIT
from digest.content.render import Rendered, Renderer
from digest.mail.verp import VERP

Clock = Callable[[], datetime]
log = logging.getLogger(__name__)

# Wait before retrying a temporary failure (4xx, dropped connection), by attempts so far.
BACKOFF = [timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=2), timedelta(hours=6)]
BACKOFF_LATER = timedelta(hours=12)
MAX_ATTEMPTS = 8  # default of smtp.max_attempts
FAILURES_KEPT = 200  # failures listed in a DeliveryReport (all are in the ledger)
COMMIT_EVERY = 500  # results per commit at most (between commits the journal keeps acceptances); a
# batch (delivery.batch_size, 200) is normally committed whole, with the next claim
COMMIT_SECONDS = 0.5  # ... or at least this often

# Gmail clips a message larger than 102 KB ("[Message clipped]"), and the unsubscribe link at
# the end goes with the rest. It counts the message as it arrives, so the headers added on the way
# (Received, Authentication-Results, ARC: 2-3 KB at Gmail) count too: every message is built to
# stay within MESSAGE_BUDGET bytes for any recipient (see Renderer.render_within).
GMAIL_CLIP_BYTES = 102_000
MESSAGE_BUDGET = GMAIL_CLIP_BYTES - 4_000

_HOST = socket.gethostname()


_random = random.Random(secrets.randbits(64))
os.register_at_fork(after_in_child=lambda: _random.seed(secrets.randbits(64)))  # sender processes differ


def _unique() -> int:
    """32 random bits for a Message-ID (unique, not secret: no system call per message)."""
    return _random.getrandbits(32)


def new_worker_id() -> str:
    return f"{_HOST}:{os.getpid()}:{secrets.token_hex(3)}"


def backoff(attempts: int) -> timedelta:
    return BACKOFF[attempts - 1] if 0 < attempts <= len(BACKOFF) else BACKOFF_LATER


@dataclass
class DeliveryReport:
    edition_number: int
    sent: int = 0
    failed: int = 0
    deferred: int = 0  # temporary failures, left pending for a later run
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (address, reply), the first FAILURES_KEPT
    stopped: bool = False  # a stop was requested; the rest stays pending
    bounced: int = 0  # subscribers marked bounced on a "no such address" reply (dsn.failure_kind)

    def merge(self, other: DeliveryReport) -> None:
        self.sent += other.sent
        self.failed += other.failed
        self.skipped += other.skipped
        self.bounced += other.bounced
        self.failures.extend(other.failures[: max(0, FAILURES_KEPT - len(self.failures))])
        self.stopped = self.stopped or other.stopped


class _Claimed(NamedTuple):  # (a frozen dataclass cost ~1.5 µs more a delivery to build)
    delivery_id: int
    attempts: int
    subscriber_id: int | None
    email: str | None
    name: str | None
    topics: str | None  # the stored text (models.topics_text)
    active: bool


class Variants:
    """One Message per distinct category choice, built on first use from a Rendered edition.

    Rendering (Jinja2 + MJML) is the expensive step: `rendered` can be filled in advance (the
    parent of a sender pool renders every variant its pending deliveries need, once) and handed
    to other processes, which then only build Messages from it (quoted-printable, ~ms)."""

    def __init__(self, view_loader, subject: str, settings: Settings, renderer_factory, date: datetime,
                 signer: DKIMSigner | None = None, rendered: dict | None = None):
        self._view_loader = view_loader
        self._view: EditionView | None = None
        self.subject = subject
        self.settings = settings
        self._renderer_factory = renderer_factory
        self._renderer: Renderer | None = None
        self.date = date
        self.signer = signer
        self.rendered: dict[frozenset[str] | None, Rendered | None] = dict(rendered or {})
        self._cache: dict[frozenset[str] | None, Message | None] = {}
        self._by_text: dict[str | None, Message | None] = {}

    @property
    def view(self) -> EditionView:
        if self._view is None:
            self._view = self._view_loader()
        return self._view

    def key(self, categories: frozenset[str] | None) -> frozenset[str] | None:
        key = None if categories is None else (categories & self.view.categories)
        return None if key == self.view.categories else key

    def render(self, key: frozenset[str] | None) -> Rendered | None:
        if key not in self.rendered:
            v = self.view.only(key)
            if not v.sections:
                self.rendered[key] = None
            else:
                if self._renderer is None:
                    self._renderer = self._renderer_factory()
                self.rendered[key] = render_fitted(self._renderer, v, self.subject, self.settings, self.date, self.signer)
        return self.rendered[key]

    def for_categories(self, categories: frozenset[str] | None) -> Message | None:
        key = self.key(categories)
        if key not in self._cache:
            rendered = self.render(key)
            self._cache[key] = None if rendered is None else message_from(rendered, self.settings, self.date, self.signer)
        return self._cache[key]

    def for_text(self, topics: str | None) -> Message | None:
        """for_categories() of a subscriber's raw `topics` column, cached by its text (which is
        the same for the same choice: see models.topics_text)."""
        try:
            return self._by_text[topics]
        except KeyError:
            m = self._by_text[topics] = self.for_categories(parse_topics(topics))
            return m


def signer_for(settings: Settings) -> DKIMSigner | None:
    """The DKIM signer `[dkim]` configures, or None (load_settings() already checked the key)."""
    if not settings.dkim.enabled:
        return None
    return DKIMSigner.from_file(settings.dkim.domain, settings.dkim.selector, settings.dkim_key_path)


def message_from(rendered: Rendered, settings: Settings, date: datetime, signer: DKIMSigner | None) -> Message:
    nl = settings.newsletter
    return Message(
        rendered,
        from_=nl.from_,
        list_id=list_id(settings),
        date=date,
        reply_to=nl.reply_to,
        feedback_id=nl.feedback_id,
        signer=signer,
    )


def build_message(renderer: Renderer, view: EditionView, subject: str, settings: Settings, date: datetime) -> Message:
    signer = signer_for(settings)
    return message_from(render_fitted(renderer, view, subject, settings, date, signer), settings, date, signer)


def render_fitted(renderer: Renderer, view: EditionView, subject: str, settings: Settings, date: datetime,
                  signer: DKIMSigner | None) -> Rendered:
    """`view` rendered so that the largest copy anyone can get stays within MESSAGE_BUDGET."""
    largest = largest_recipient(settings)

    def size(rendered: Rendered) -> int:
        return len(message_from(rendered, settings, date, signer).for_recipient(largest))

    return renderer.render_within(view, subject, size, MESSAGE_BUDGET)


def largest_recipient(settings: Settings) -> Recipient:
    """The recipient with the largest copy: a name of NAME_LIMIT characters of 4 UTF-8 bytes (12
    bytes each in quoted-printable), the longest address (254 characters), and ids in the links
    and the Message-ID as long as they get."""
    links = Links(settings.newsletter.secret_key, settings.newsletter.public_url)
    email = "x" * 64 + "@" + "y" * 184 + ".test"
    token = links.subscriber_token(2**62, email)
    message_id = f"<{2**62}.{2**62}.ffffffff@{settings.newsletter.domain}>"
    return Recipient(email, "\U0001F4EC" * NAME_LIMIT, links.unsubscribe_url(token), links.preferences_url(token), message_id)


def list_id(settings: Settings) -> str:
    nl = settings.newsletter
    if nl.list_id:
        return nl.list_id
    slug = "".join(c if c.isalnum() else "-" for c in nl.name.lower()).strip("-") or "digest"
    while "--" in slug:
        slug = slug.replace("--", "-")
    return f"{nl.name} <{slug}.{nl.domain}>"


class Journal:
    """Acceptances not yet committed to the ledger, one line each: delivery id, Message-ID, time.

    The file belongs to one sender process; it is emptied at every ledger commit and replayed
    (then removed) by the next sender when its owner died."""

    def __init__(self, directory: Path, worker: str):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / (worker.replace(":", "_") + ".log")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def record(self, delivery_id: int, message_id: str, when: datetime) -> None:
        os.write(self._fd, f"{delivery_id}\t{message_id}\t{when.isoformat()}\n".encode())

    def clear(self) -> None:
        os.ftruncate(self._fd, 0)

    def close(self) -> None:
        os.close(self._fd)
        self.path.unlink(missing_ok=True)

    @staticmethod
    def replay(session: Session, directory: Path) -> int:
        """Mark as sent what dead senders of this host had journaled. Returns deliveries marked."""
        if not directory.is_dir():
            return 0
        marked = 0
        for path in directory.glob("*.log"):
            owner = path.stem.replace("_", ":")
            if not _is_dead_local(owner):
                continue
            rows = []
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                parts = line.split("\t")
                if len(parts) == 3 and parts[0].isdigit():  # a torn last line is ignored
                    rows.append({"b_id": int(parts[0]), "b_mid": parts[1], "b_at": datetime.fromisoformat(parts[2])})
            if rows:
                session.execute(_REPLAY, rows)
                marked += len(rows)
            session.commit()
            path.unlink(missing_ok=True)
        return marked


def release_dead_claims(session: Session) -> int:
    """Free claims held by sender processes on this host that no longer run (e.g. SIGKILLed)."""
    owners = session.exec(
        select(Delivery.claimed_by)
        .where(Delivery.status == DeliveryStatus.pending, Delivery.claimed_by.is_not(None))  # type: ignore[union-attr]
        .distinct()
    ).all()
    dead = [o for o in owners if o and _is_dead_local(o)]
    for owner in dead:
        session.execute(
            update(Delivery)
            .where(Delivery.claimed_by == owner, Delivery.status == DeliveryStatus.pending)
            .values(claimed_by=None, claimed_until=None)
        )
    session.commit()
    return len(dead)


def _is_dead_local(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_s = rest.partition(":")[0]
    if host != _HOST or not pid_s.isdigit():
        return False
    pid = int(pid_s)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A process that exited but was not reaped yet (Linux): dead for our purposes. Sender
    processes whose parent was killed too wait as zombies until init reaps them, and a container's
    PID 1 may never do it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in (b"Z", b"X")


def claim(session: Session, edition_id: int, worker: str, now: datetime, lease: timedelta, limit: int, after: int = 0) -> list[_Claimed]:
    """Atomically take up to `limit` pending deliveries that nobody holds and that are due, with
    ids above `after` (where the caller's previous batch ended), with their subscribers. The
    caller holds no other claim on the edition (its earlier results are recorded, which ends their
    claims). Commits (with whatever the caller wrote before).

    One UPDATE: its subquery walks the partial index of pending deliveries (edition_id, id) and
    stops after `limit` rows (no ORDER BY: sorting every pending row made each claim O(pending), a
    sender O(pending²) on a large list). Starting after the previous batch skips the index entries
    of deliveries already sent (on PostgreSQL they linger until vacuum: 31.8 ms per claim without
    the cursor, 3.1 ms with it, on a 300k edition). On PostgreSQL the claimed rows are joined to
    their subscribers in the same statement; on SQLite they are read after the commit (which
    frees the database's one write lock sooner) by the claimed_by index."""
    statements = _claim_statements(session)
    params = {"worker": worker, "until": now + lease, "edition": edition_id, "now": now, "limit": limit, "after": after}
    if statements.held is None:
        rows = session.connection().execute(statements.take, params).all()
        session.commit()
    else:
        taken = session.connection().execute(statements.take, params).rowcount
        session.commit()
        rows = []
        if taken:
            rows = session.connection().execute(statements.held, {"worker": worker, "edition": edition_id}).all()
            session.commit()
    return [
        _Claimed(r[0], r[1], r[2], r[3], r[4], r[5], r[2] is not None and r[6] == "active" and not r[7])
        for r in rows
    ]


@dataclass(frozen=True)
class _ClaimStatements:
    take: object
    held: object | None  # None: `take` returns the rows itself


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
            # batch this worker ever claimed (they stay until vacuum): RETURNING joins it here.
            statements = _ClaimStatements(
                take=_typed(text(
                    "WITH c AS (" + _TAKE.format(lock=" FOR UPDATE SKIP LOCKED")
                    + " RETURNING id, attempts, subscriber_id)"
                    f" SELECT c.id, c.attempts, {_SUBSCRIBER_COLUMNS}"
                    " FROM c LEFT JOIN subscriber s ON s.id = c.subscriber_id ORDER BY c.id"
                ), "until", "now"),
                held=None,
            )
        else:
            statements = _ClaimStatements(
                take=_typed(text(_TAKE.format(lock="")), "until", "now"),
                held=text(
                    f"SELECT d.id, d.attempts, {_SUBSCRIBER_COLUMNS}"
                    " FROM delivery d LEFT JOIN subscriber s ON s.id = d.subscriber_id"
                    # "+": look rows up by claimed_by (a batch), not by edition (SQLite would
                    # walk every pending delivery of the edition)
                    " WHERE d.claimed_by = :worker AND d.status = 'pending' AND +d.edition_id = :edition ORDER BY d.id"
                ),
            )
        _claim_cache[dialect] = statements
    return _claim_cache[dialect]


def _typed(stmt, *names: str):
    """Bind datetime parameters of a text() statement with the columns' type (UTC storage)."""
    kind = Delivery.__table__.c.claimed_until.type
    return stmt.bindparams(*(bindparam(n, type_=kind) for n in names))


def _release(session: Session, worker: str) -> None:
    session.execute(
        update(Delivery)
        .where(Delivery.claimed_by == worker, Delivery.status == DeliveryStatus.pending)
        .values(claimed_by=None, claimed_until=None)
    )
    session.commit()


_t = Delivery.__table__
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

    def params(self, rows: list[tuple[int, str, datetime]]) -> list:
        to_db = self.to_db
        if self.order is None:
            return [{"i": i, "m": m, "s": to_db(at)} for i, m, at in rows]
        if self.order == ["m", "s", "i"]:  # SQLite
            return [(m, to_db(at), i) for i, m, at in rows]
        pick = {"i": 0, "m": 1, "s": 2}
        idx = [pick[name] for name in self.order]
        return [tuple((i, m, to_db(at))[k] for k in idx) for i, m, at in rows]


def _utc_binder(dialect) -> Callable[[datetime], object]:
    """What the driver gets for an aware UTC datetime in a DateTime column of this dialect.

    SQLAlchemy's own processors (sqlmodel's UTC type, then SQLite's string formatting) cost
    ~6 µs a row, a fifth of a sender's Python time; SQLite stores the text "YYYY-MM-DD
    HH:MM:SS.ffffff", which isoformat() writes in ~0.3 µs, and PostgreSQL's driver takes the
    aware datetime itself. The shortcut is used only when it gives what SQLAlchemy gives."""
    generic = _t.c.sent_at.type.dialect_impl(dialect).bind_processor(dialect) or (lambda v: v)
    if dialect.name == "sqlite":
        fast = lambda at: at.isoformat(" ", "microseconds")[:26]  # noqa: E731 (the UTC offset cut)
    else:
        fast = lambda at: at  # noqa: E731
    samples = [datetime(2026, 3, 29, 1, 2, 3, 4, tzinfo=timezone.utc), datetime(1999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)]
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


class _Ledger:
    """Collects outcomes and writes them in groups (one executemany per commit); acceptances are
    journaled at once."""

    def __init__(self, session: Session, journal: Journal, worker: str = "", lease: timedelta | None = None,
                 clock: Clock | None = None):
        self.session = session
        self.journal = journal
        self.rows: list[dict] = []  # outcomes other than an acceptance
        self.sent: list[tuple] = []  # acceptances: (delivery id, Message-ID, time)
        self._writer = _SentWriter(session)
        self.bounced: list[int] = []  # subscribers whose address the server says does not exist
        self.last = time.monotonic()
        self._written = False  # rows and sent are written in a transaction not yet committed
        # The claims of `worker`: how many it holds (claimed, no outcome written yet) and when
        # their lease was last set.
        self.worker, self.lease, self.clock = worker, lease, clock
        self.held = 0
        self.leased_at: datetime | None = None

    def claimed(self, count: int, now: datetime) -> None:
        self.held, self.leased_at = count, now

    def keep_claims(self) -> bool:
        """Renew the lease on what this worker holds once a third of it has passed, so a batch
        that takes longer than a lease (a slow relay, a tight rate limit) is not taken over by
        another sender while this one still works through it. False when some claims were
        already lost (this sender stalled for a whole lease and another took them): the caller
        must not send the rest of its batch."""
        if self.lease is None or self.leased_at is None or self.clock is None or not self.held:
            return True
        now = as_utc(self.clock())
        if now - self.leased_at < self.lease / 3:
            return True
        self.flush()
        kept = self.session.connection().execute(
            _RENEW, {"worker": self.worker, "until": now + self.lease}
        ).rowcount
        self.session.commit()
        self.leased_at = now
        return kept >= self.held

    def add(self, delivery_id: int, status: DeliveryStatus, attempts: int, *, error=None, message_id=None, sent_at=None, next_at=None) -> None:
        if status == DeliveryStatus.sent:
            self.journal.record(delivery_id, message_id, sent_at)
            self.sent.append((delivery_id, message_id, sent_at))
        else:
            self.rows.append(
                {
                    "b_id": delivery_id,
                    "b_status": status.name,
                    "b_attempts": attempts,
                    "b_error": error,
                    "b_message_id": message_id,
                    "b_sent_at": sent_at,
                    "b_next": next_at,
                }
            )
        if len(self.sent) + len(self.rows) >= COMMIT_EVERY or time.monotonic() - self.last >= COMMIT_SECONDS:
            self.flush()

    def flush(self, *, commit: bool = True) -> None:
        """Write the results collected so far and commit them. With commit=False the caller's
        next statements share the transaction (run_sender: the next claim, so a batch costs one
        write transaction, not two) and it calls committed() or rolled_back() after."""
        if (self.rows or self.sent) and not self._written:
            if self.sent:
                self.session.connection().exec_driver_sql(self._writer.sql, self._writer.params(self.sent))
            if self.rows:
                self.session.execute(_RECORD, self.rows)
            if self.bounced:
                self.session.execute(
                    update(Subscriber)
                    .where(Subscriber.id.in_(self.bounced), Subscriber.status == SubscriberStatus.active)  # type: ignore[union-attr]
                    .values(status=SubscriberStatus.bounced)
                )
            self._written = True
        if commit and self._written:
            self.session.commit()
            self.committed()
        self.last = time.monotonic()

    def committed(self) -> None:
        """The transaction with the written results is committed: the journal can be emptied."""
        if self._written:
            self.journal.clear()
            self.held = max(0, self.held - len(self.rows) - len(self.sent))
            self.rows, self.sent, self.bounced = [], [], []
            self._written = False

    def rolled_back(self) -> None:
        """It was rolled back: the results are written again by the next flush."""
        self._written = False


def deliver(
    session: Session,
    edition: Edition,
    mailer: Mailer,
    clock: Clock,
    settings: Settings,
    *,
    renderer: Renderer | None = None,
    stop: Callable[[], bool] = lambda: False,
    worker: str | None = None,
    connections: int | None = None,
) -> DeliveryReport:
    """Send every due pending delivery of `edition`. Raises DeliveryError when the SMTP server
    cannot be reached; whatever was not sent stays pending.

    `connections` (default `smtp.connections`) > 1 spreads the work over that many sender
    processes when the mailer has a `factory` and the database can be shared; otherwise this
    process sends over `mailer`. `stop()` is polled between messages (and forwarded to the
    sender processes): when it turns true, messages in flight finish and the rest stays pending.
    """
    renderer = renderer or Renderer(
        newsletter_name=settings.newsletter.name,
        public_url=settings.newsletter.public_url,
        templates_dir=settings.templates_dir,
    )
    Journal.replay(session, settings.journal_dir)
    release_dead_claims(session)
    variants = Variants(
        lambda: edition_view(session, edition, settings.edition.sections),
        edition.subject,
        settings,
        lambda: renderer,
        clock(),
        signer_for(settings),
    )
    n = settings.smtp.connections if connections is None else connections
    factory = getattr(mailer, "factory", None)
    if n > 1 and factory is not None:
        # No more sender processes than there are batches to claim (a small edition goes out
        # from this process, without starting any).
        due = _count_due(session, edition.id, as_utc(clock()))
        n = min(n, -(-due // settings.delivery.batch_size))
    try:
        if n > 1 and factory is not None and pool.can_share(settings.database_url):
            report = _deliver_in_pool(session, edition, variants, factory, clock, settings, stop, n)
        else:
            report = run_sender(session, edition, variants, mailer, clock, settings, stop=stop, worker=worker,
                                rate=settings.smtp.rate_limit)
    finally:
        _finish_if_done(session, edition, clock)
    report.deferred = pending_count(session, edition)
    return report


def run_sender(
    session: Session,
    edition: Edition,
    variants: Variants,
    mailer: Mailer,
    clock: Clock,
    settings: Settings,
    *,
    stop: Callable[[], bool] = lambda: False,
    worker: str | None = None,
    rate: float = 0.0,
) -> DeliveryReport:
    """One sender: claim a batch, send it over `mailer`, record each result; until nothing is
    due or `stop()`. Several senders (processes or hosts) can run this on one edition at once."""
    worker = worker or new_worker_id()
    report = DeliveryReport(edition.number)
    links = Links(settings.newsletter.secret_key, settings.newsletter.public_url)
    verp = VERP(settings.newsletter.secret_key, settings.bounce_domain)
    domain = settings.newsletter.domain
    number = edition.number  # (an ORM attribute: read once, not per message)
    lease = timedelta(seconds=settings.delivery.lease_seconds)
    max_attempts = settings.smtp.max_attempts
    pacer = Pacer(rate)
    ledger = _Ledger(session, Journal(settings.journal_dir, worker), worker, lease, clock)
    after = 0  # claim onwards from the last batch; once nothing is left there, from the start
    try:
        while not stop():
            # This worker's earlier results are settled in the same transaction as its next claim.
            ledger.flush(commit=False)
            now = as_utc(clock())
            try:
                batch = claim(session, edition.id, worker, now, lease, settings.delivery.batch_size, after)
            except BaseException:
                session.rollback()
                ledger.rolled_back()
                raise
            ledger.committed()
            if not batch:
                if after == 0:
                    break
                after = 0
                continue
            after = max(c.delivery_id for c in batch)
            ledger.claimed(len(batch), now)
            queue: list[tuple[_Claimed, Message]] = []
            for c in batch:
                message = variants.for_text(c.topics) if c.active else None
                if message is None:
                    ledger.add(c.delivery_id, DeliveryStatus.skipped, c.attempts, error="subscriber not active or wants none of these topics")
                    report.skipped += 1
                else:
                    queue.append((c, message))
            if not queue:
                continue
            mailer.open()
            lost = False

            def envelopes() -> Iterator[Envelope]:
                nonlocal lost
                for c, message in queue:
                    if stop() or not pacer.wait(stop):
                        return
                    if not ledger.keep_claims():
                        lost = True
                        return
                    token = links.subscriber_token(c.subscriber_id, c.email)
                    mid = f"<{number}.{c.delivery_id}.{_unique():08x}@{domain}>"
                    data = message.wire_for(
                        Recipient(c.email, c.name, links.unsubscribe_url(token), links.preferences_url(token), mid)
                    )
                    yield Envelope(verp.sender(c.delivery_id), c.email, data, tag=(c, mid), ready=True)

            done = 0
            for env, reply in mailer.send(envelopes()):
                c, mid = env.tag  # results are paired by tag: a resent envelope comes back later
                _record(ledger, report, c, env, reply, mid, as_utc(clock()), max_attempts)
                done += 1
            if lost:
                log.warning("%s: a claim outlived its lease and may have been taken over; the rest of the batch is left to whoever holds it", worker)
                ledger.flush()
                _release(session, worker)
                ledger.held = 0
                continue
            if done < len(queue):
                report.stopped = True
                break
    finally:
        ledger.flush()
        ledger.journal.close()
        _release(session, worker)
    return report


# ---------------------------------------------------------------------------------------------
# Sender pool


@dataclass
class _SenderJob:
    """What a sender process needs; picklable (the pool may start processes with forkserver)."""

    settings: Settings
    edition_id: int
    subject: str
    date: datetime
    rendered: dict
    mailer_factory: Callable[[], Mailer]
    clock: Clock
    rate: float


def _deliver_in_pool(session: Session, edition: Edition, variants: Variants, factory, clock: Clock,
                     settings: Settings, stop: Callable[[], bool], n: int) -> DeliveryReport:
    # Render, here and once, every variant the pending deliveries need (a sender process that
    # meets another one renders it itself).
    texts = session.execute(
        text(
            "SELECT DISTINCT s.topics FROM delivery d JOIN subscriber s ON s.id = d.subscriber_id"
            " WHERE d.edition_id = :e AND d.status = 'pending' LIMIT 64"
        ),
        {"e": edition.id},
    ).scalars().all()
    for t in texts:
        variants.render(variants.key(parse_topics(t)))
    session.commit()  # hold no transaction while the senders write
    job = _SenderJob(settings, edition.id, edition.subject, variants.date, variants.rendered, factory, clock,
                     settings.smtp.rate_limit / n)
    try:
        outcomes = pool.run(_pool_sender, [job] * n, stop)
    except pool.CannotStart as exc:
        log.warning("sending from this process over one connection: %s", exc)
        mailer = factory()
        try:
            return run_sender(session, edition, variants, mailer, clock, settings, stop=stop, rate=settings.smtp.rate_limit)
        finally:
            mailer.close()
    report = DeliveryReport(edition.number)
    errors: list[str] = []
    for outcome in outcomes:
        if outcome.ok:
            report.merge(outcome.value)
        else:
            errors.append(outcome.error)
    if errors:
        # A sender that died leaves its journal and its claims: settle them now.
        Journal.replay(session, settings.journal_dir)
        release_dead_claims(session)
        if _count_due(session, edition.id, as_utc(clock())):
            raise DeliveryError(errors[0])
    return report


def _pool_sender(job: _SenderJob, stop: Callable[[], bool]) -> DeliveryReport:
    """Runs in a sender process: its own engine, session, mailer and worker id."""
    from digest.store.database import make_engine, session as new_session

    settings = job.settings
    engine = make_engine(settings.database_url)
    try:
        with new_session(engine) as s:
            edition = s.get(Edition, job.edition_id)
            variants = Variants(
                lambda: edition_view(s, edition, settings.edition.sections),
                job.subject,
                settings,
                lambda: Renderer(newsletter_name=settings.newsletter.name, public_url=settings.newsletter.public_url,
                                 templates_dir=settings.templates_dir),
                job.date,
                signer_for(settings),
                job.rendered,
            )
            mailer = job.mailer_factory()
            try:
                return run_sender(s, edition, variants, mailer, job.clock, settings, stop=stop, rate=job.rate)
            finally:
                mailer.close()
    finally:
        engine.dispose()


def _record(ledger: _Ledger, report: DeliveryReport, c: _Claimed, env: Envelope, reply: Reply, mid: str,
            now: datetime, max_attempts: int = MAX_ATTEMPTS) -> None:
    attempts = c.attempts + 1
    if reply.ok:
        ledger.add(c.delivery_id, DeliveryStatus.sent, attempts, message_id=mid, sent_at=now)
        report.sent += 1
    elif reply.permanent or attempts >= max_attempts:
        error = f"{reply.code} {reply.text}".strip()
        # the same rule as for a bounce that comes back later (`dsn.failure_kind`)
        if reply.permanent and c.subscriber_id is not None and dsn.failure_kind(dsn.reply_status(reply.code, reply.text), reply.text) == "hard":
            ledger.bounced.append(c.subscriber_id)
            report.bounced += 1
        ledger.add(c.delivery_id, DeliveryStatus.failed, attempts, error=error)
        report.failed += 1
        if len(report.failures) < FAILURES_KEPT:
            report.failures.append((env.recipient, error))
    else:
        ledger.add(
            c.delivery_id,
            DeliveryStatus.pending,
            attempts,
            error=f"{reply.code} {reply.text}".strip(),
            next_at=now + backoff(attempts),
        )


def _count_due(session: Session, edition_id: int, now: datetime) -> int:
    return session.execute(
        _typed(text(
            "SELECT COUNT(*) FROM delivery WHERE edition_id = :e AND status = 'pending'"
            " AND (next_attempt_at IS NULL OR next_attempt_at <= :now)"
        ), "now"),
        {"e": edition_id, "now": now},
    ).scalar_one()


def reset_for_retry(session: Session, edition: Edition) -> int:
    """Make an edition's failed deliveries, and its pending ones waiting for their next attempt,
    due again now with a fresh attempt count — only for subscribers who are still active
    (hard-bounced, suspended or unsubscribed addresses stay as they are). Returns how many."""
    n = session.execute(
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


def _finish_if_done(session: Session, edition: Edition, clock: Clock) -> None:
    if pending_count(session, edition) == 0 and edition.status != EditionStatus.sent:
        edition.status = EditionStatus.sent
        edition.finished_at = as_utc(clock())
        session.add(edition)
        session.commit()
