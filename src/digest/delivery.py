"""Service: deliver an edition — claim pending deliveries in batches, send, record each outcome.

The ledger is the Delivery table. A sender claims a batch of pending deliveries by writing its
worker id and a lease end (one UPDATE, atomic on SQLite and PostgreSQL), sends them, and records
each result. Results are committed to the database in groups; between commits each acceptance is
also appended to a small per-process journal file (one unbuffered write, which survives the
process being killed), so after a crash the next sender replays the journal and re-sends only the
message that was in flight. Claims of a sender that died (its process is gone, or its lease ran
out) are taken over by the next one.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import bindparam, text, update
from sqlmodel import Session, select

from .config import Settings
from .editions import EditionView, edition_view, parse_categories
from .errors import DeliveryError
from .links import Links
from .mailer import Envelope, Mailer, Reply
from .message import Message, Recipient
from .models import Delivery, DeliveryStatus, Edition, EditionStatus, as_utc
from .render import Renderer

Clock = Callable[[], datetime]

# Wait before retrying a temporary failure (4xx, dropped connection), by attempts so far.
BACKOFF = [timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=2), timedelta(hours=6)]
BACKOFF_LATER = timedelta(hours=12)
MAX_ATTEMPTS = 8
COMMIT_EVERY = 50  # results per commit
COMMIT_SECONDS = 0.5  # ... or at least this often

_HOST = socket.gethostname()


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
    failures: list[tuple[str, str]] = field(default_factory=list)  # (address, reply)
    stopped: bool = False  # a stop was requested; the rest stays pending


@dataclass(frozen=True)
class _Claimed:
    delivery_id: int
    attempts: int
    subscriber_id: int | None
    email: str | None
    name: str | None
    categories: str | None
    active: bool


class Variants:
    """One compiled Message per distinct category choice, built on first use."""

    def __init__(self, view: EditionView, edition: Edition, settings: Settings, renderer: Renderer, clock: Clock):
        self.view = view
        self.edition = edition
        self.settings = settings
        self.renderer = renderer
        self.date = clock()
        self._cache: dict[frozenset[str] | None, Message | None] = {}

    def for_categories(self, categories: frozenset[str] | None) -> Message | None:
        key = None if categories is None else (categories & self.view.categories)
        if key == self.view.categories:
            key = None
        if key not in self._cache:
            self._cache[key] = self._build(key)
        return self._cache[key]

    def _build(self, key: frozenset[str] | None) -> Message | None:
        v = self.view.only(key)
        if not v.sections:
            return None
        return build_message(self.renderer, v, self.edition.subject, self.settings, self.date)


def build_message(renderer: Renderer, view: EditionView, subject: str, settings: Settings, date: datetime) -> Message:
    nl = settings.newsletter
    return Message(
        renderer.render(view, subject),
        from_=nl.from_,
        list_id=list_id(settings),
        date=date,
        reply_to=nl.reply_to,
    )


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
    return False


def claim(session: Session, edition_id: int, worker: str, now: datetime, lease: timedelta, limit: int, after: int = 0) -> list[_Claimed]:
    """Atomically take up to `limit` pending deliveries that nobody holds and that are due, with
    ids above `after` (where the caller's previous batch ended: the scan then skips the index
    entries of everything already sent, which would otherwise make each claim slower than the last)."""
    skip_locked = " FOR UPDATE SKIP LOCKED" if session.get_bind().dialect.name == "postgresql" else ""
    session.execute(
        _typed(text(
            "UPDATE delivery SET claimed_by = :worker, claimed_until = :until WHERE id IN ("
            " SELECT id FROM delivery WHERE edition_id = :edition AND status = 'pending' AND id > :after"
            " AND (claimed_until IS NULL OR claimed_until < :now)"
            " AND (next_attempt_at IS NULL OR next_attempt_at <= :now)"
            f" ORDER BY id LIMIT :limit{skip_locked})"
        ), "until", "now"),
        {"worker": worker, "until": now + lease, "edition": edition_id, "now": now, "limit": limit, "after": after},
    )
    rows = session.execute(
        text(
            "SELECT d.id, d.attempts, s.id, s.email, s.name, s.categories, s.status, s.paused"
            " FROM delivery d LEFT JOIN subscriber s ON s.id = d.subscriber_id"
            " WHERE d.edition_id = :edition AND d.claimed_by = :worker AND d.status = 'pending'"
            " ORDER BY d.id"
        ),
        {"edition": edition_id, "worker": worker},
    ).all()
    session.commit()
    return [
        _Claimed(r[0], r[1], r[2], r[3], r[4], r[5], r[2] is not None and r[6] == "active" and not r[7])
        for r in rows
    ]


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

    def __init__(self, session: Session, journal: Journal):
        self.session = session
        self.journal = journal
        self.rows: list[dict] = []
        self.last = time.monotonic()

    def add(self, delivery_id: int, status: DeliveryStatus, attempts: int, *, error=None, message_id=None, sent_at=None, next_at=None) -> None:
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
        if status == DeliveryStatus.sent:
            self.journal.record(delivery_id, message_id, sent_at)
        if len(self.rows) >= COMMIT_EVERY or time.monotonic() - self.last >= COMMIT_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.session.execute(_RECORD, self.rows)
            self.session.commit()
            self.journal.clear()
            self.rows = []
        self.last = time.monotonic()


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
) -> DeliveryReport:
    """Send every due pending delivery of `edition`. Raises DeliveryError when the SMTP server
    cannot be reached; whatever was not sent stays pending."""
    worker = worker or new_worker_id()
    renderer = renderer or Renderer(
        newsletter_name=settings.newsletter.name,
        public_url=settings.newsletter.public_url,
        templates_dir=settings.templates_dir,
    )
    report = DeliveryReport(edition.number)
    view = edition_view(session, edition, settings.digest.sections)
    variants = Variants(view, edition, settings, renderer, clock)
    links = Links(settings.newsletter.secret_key, settings.newsletter.public_url)
    domain = settings.newsletter.domain
    sender = settings.newsletter.from_address
    lease = timedelta(seconds=settings.delivery.lease_seconds)
    journal_dir = settings.journal_dir
    Journal.replay(session, journal_dir)
    release_dead_claims(session)
    ledger = _Ledger(session, Journal(journal_dir, worker))

    after = 0  # claim onwards from the last batch; once nothing is left there, from the start
    try:
        while not stop():
            ledger.flush()  # this worker's earlier claims must be settled before the next claim
            now = as_utc(clock())
            batch = claim(session, edition.id, worker, now, lease, settings.delivery.batch_size, after)
            if not batch:
                if after == 0:
                    break
                after = 0
                continue
            after = batch[-1].delivery_id
            queue: list[_Claimed] = []
            for c in batch:
                message = variants.for_categories(parse_categories(c.categories)) if c.active else None
                if message is None:
                    ledger.add(c.delivery_id, DeliveryStatus.skipped, c.attempts, error="subscriber not active or wants none of these topics")
                    report.skipped += 1
                else:
                    queue.append(c)
            if not queue:
                continue
            mailer.open()

            mids: list[str] = []

            def envelopes() -> Iterator[Envelope]:
                for c in queue:
                    if stop():
                        return
                    token = links.subscriber_token(c.subscriber_id, c.email)
                    message = variants.for_categories(parse_categories(c.categories))
                    mid = f"<{edition.number}.{c.delivery_id}.{secrets.token_hex(4)}@{domain}>"
                    mids.append(mid)
                    data = message.for_recipient(
                        Recipient(c.email, c.name, links.unsubscribe_url(token), links.preferences_url(token), mid)
                    )
                    yield Envelope(sender, c.email, data)

            sent_n = 0
            for (env, reply), c in zip(mailer.send(envelopes()), queue):
                _record(ledger, report, c, env, reply, mids[sent_n], as_utc(clock()))
                sent_n += 1
            if sent_n < len(queue):
                report.stopped = True
                break
    finally:
        ledger.flush()
        ledger.journal.close()
        _release(session, worker)
        _finish_if_done(session, edition, clock)
    report.deferred = _count_pending(session, edition.id)
    return report


def _record(ledger: _Ledger, report: DeliveryReport, c: _Claimed, env: Envelope, reply: Reply, mid: str, now: datetime) -> None:
    attempts = c.attempts + 1
    if reply.ok:
        ledger.add(c.delivery_id, DeliveryStatus.sent, attempts, message_id=mid, sent_at=now)
        report.sent += 1
    elif reply.permanent or attempts >= MAX_ATTEMPTS:
        error = f"{reply.code} {reply.text}".strip()
        ledger.add(c.delivery_id, DeliveryStatus.failed, attempts, error=error)
        report.failed += 1
        report.failures.append((env.recipient, error))
    else:
        ledger.add(
            c.delivery_id,
            DeliveryStatus.pending,
            attempts,
            error=f"{reply.code} {reply.text}".strip(),
            next_at=now + backoff(attempts),
        )


def _count_pending(session: Session, edition_id: int) -> int:
    return session.execute(
        text("SELECT COUNT(*) FROM delivery WHERE edition_id = :e AND status = 'pending'"),
        {"e": edition_id},
    ).scalar_one()


def _finish_if_done(session: Session, edition: Edition, clock: Clock) -> None:
    if _count_pending(session, edition.id) == 0 and edition.status != EditionStatus.sent:
        edition.status = EditionStatus.sent
        edition.finished_at = as_utc(clock())
        session.add(edition)
        session.commit()
