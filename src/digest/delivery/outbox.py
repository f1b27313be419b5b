"""The outbox: mail that a request decided to send, sent in the background with retries.

A request never waits on SMTP. It writes a row with `enqueue()` in its own transaction (so the row
exists exactly when what it belongs to was committed) and answers at once. A `Relay` (threads of
`digest serve`) and `digest worker` take due rows with `send_due()`, send them, and record what
became of each:

- accepted (2xx): sent;
- refused (5xx): failed at once, and the kind's `failed()` runs (a confirmation: the reader may
  ask again at once);
- temporary (4xx, a dropped connection, an unreachable relay): tried again after BACKOFF, up to
  `smtp.max_attempts` attempts, then failed as above.

Claims work like the delivery ledger's: one UPDATE writes the sender's id and a lease end on up to
BATCH due rows that nobody holds (FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite's single writer
makes the UPDATE atomic), so two processes never send one row, and a sender that dies leaves its
rows to the others when the lease ends. No database transaction is open while SMTP talks: a slow
relay never holds a pooled connection.

What a row is for is its `kind`; each kind of mail (a `Kind`, given by the caller: see
`signup.outbox_kinds`) turns a row into an envelope. A kind that is not mail (a `Courier`: a
webhook's POST, see delivery/webhooks.py) delivers its rows itself and has its own retry policy;
its rows are claimed and sent apart from the mail (`dispatch_due`, a thread of its own in the
Relay), so a slow receiver never holds up a confirmation mail, nor a slow relay a webhook.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from digest.clock import Clock
from digest.delivery.claims import new_sender_id
from digest.errors import DeliveryError
from digest.mail.mailer import Envelope, Mailer, Pacer, Reply
from digest.store.database import session as new_session
from digest.store.models import Outbox, OutboxStatus, as_utc

log = logging.getLogger(__name__)

# Wait before the next attempt after a temporary failure, by attempts so far. The first retry comes
# soon (a reader is waiting for this mail; a relay's 4xx is mostly a brief overload), later ones
# spread out like the delivery ledger's.
BACKOFF = (timedelta(seconds=10), timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=2))
BACKOFF_LATER = timedelta(hours=6)
BATCH = 10  # rows a sender claims at a time: a few seconds of a slow relay, far inside LEASE
LEASE = timedelta(minutes=10)  # a sender that stops answering loses its claims after this
POLL_SECONDS = 5.0  # an idle Relay looks for due rows this often (retries, other processes' rows)


class Kind(Protocol):
    """How rows of one kind are sent."""

    def envelope(self, session: Session, row: Outbox) -> Envelope | None:
        """The envelope to send for `row` (tag it with row.id), or None when it is no longer
        wanted (the row is then `skipped`)."""

    def failed(self, session: Session, row: Outbox) -> None:
        """The row failed for good; undo what queuing it promised (the caller commits)."""


class Attempt(NamedTuple):
    """What one try of a Courier came to."""

    ok: bool
    permanent: bool  # refused for good: not tried again
    detail: str  # what happened, for last_error and the log


class Courier(Protocol):
    """How rows of a kind that is not mail are delivered (a webhook's POST)."""

    def deliver(self, row: Outbox) -> Attempt | None:
        """Try once (no database transaction is open meanwhile); None when the row is no longer
        wanted (it is then `skipped`)."""

    def next_attempt(self, row: Outbox, now: datetime) -> datetime | None:
        """When to try again after a temporary failure (`row.attempts` counts the one just made);
        None: give up, the row is `failed`."""


def backoff(attempts: int) -> timedelta:
    return BACKOFF[attempts - 1] if 0 < attempts <= len(BACKOFF) else BACKOFF_LATER


def enqueue(session: Session, kind: str, recipient: str, payload: Mapping[str, Any], now: datetime) -> Outbox:
    """Add a row to the session's transaction (the caller commits), due at once."""
    row = Outbox(kind=kind, recipient=recipient, payload=json.dumps(dict(payload)), created_at=now, next_attempt_at=now)
    session.add(row)
    return row


def waiting(session: Session, kind: str, recipient: str) -> bool:
    """Whether a row of `kind` for `recipient` is still waiting to be sent."""
    return session.exec(
        select(Outbox.id)
        .where(col(Outbox.recipient) == recipient, col(Outbox.kind) == kind, col(Outbox.status) == OutboxStatus.pending)
        .limit(1)
    ).first() is not None


def payload(row: Outbox) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(row.payload)
    return data


def claim(session: Session, sender: str, now: datetime, kinds: Collection[str], limit: int = BATCH,
          lease: timedelta = LEASE) -> list[Outbox]:
    """Atomically take up to `limit` due pending rows of `kinds` that nobody holds; commits. (A
    kind this process does not know, a newer digest's, is left to the processes that do.)"""
    until = now + lease
    due = (
        select(Outbox.id)
        .where(
            col(Outbox.status) == OutboxStatus.pending,
            col(Outbox.kind).in_(list(kinds)),
            col(Outbox.next_attempt_at) <= now,
            (col(Outbox.claimed_until).is_(None)) | (col(Outbox.claimed_until) < now),
        )
        .order_by(col(Outbox.next_attempt_at))
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    taken: int = session.execute(  # type: ignore[attr-defined]  # an UPDATE's result is a CursorResult
        update(Outbox).where(col(Outbox.id).in_(due.scalar_subquery())).values(claimed_by=sender, claimed_until=until),
        execution_options={"synchronize_session": False},
    ).rowcount
    session.commit()
    if not taken:
        return []
    rows = list(session.exec(
        select(Outbox)
        .where(col(Outbox.claimed_by) == sender, col(Outbox.claimed_until) == until,
               col(Outbox.status) == OutboxStatus.pending)
        .order_by(col(Outbox.id)).execution_options(populate_existing=True)
    ).all())
    session.commit()
    return rows


@dataclass
class Pass:
    """What one `send_due()` did."""

    claimed: int = 0
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    skipped: int = 0
    error: str | None = None  # the relay could not be reached

    def add(self, other: Pass) -> None:
        self.claimed += other.claimed
        self.sent += other.sent
        self.retrying += other.retrying
        self.failed += other.failed
        self.skipped += other.skipped
        self.error = other.error or self.error


def send_due(
    session: Session,
    mailer: Mailer,
    kinds: Mapping[str, Kind],
    clock: Clock,
    *,
    sender: str,
    max_attempts: int,
    limit: int = BATCH,
    stop: Callable[[], bool] = lambda: False,
    pace: Callable[[], bool] = lambda: True,
) -> Pass:
    """Claim due rows, send them over `mailer`, record each outcome as its reply comes. `pace()`
    is called before each message (a rate limit; False stops like `stop()`)."""
    result = Pass()
    rows = claim(session, sender, as_utc(clock()), kinds, limit)
    result.claimed = len(rows)
    if not rows:
        return result
    by_id: dict[object, Outbox] = {}  # by the envelope's tag: the row's id
    envelopes: list[Envelope] = []
    for row in rows:
        kind = kinds[row.kind]
        try:
            env = kind.envelope(session, row)
        except Exception as exc:  # noqa: BLE001 - a broken template: retried later, the others still go
            log.error("outbox row %d (%s): cannot build the message: %s: %s", row.id, row.kind, type(exc).__name__, exc)
            _retry(session, kinds, row, f"cannot build the message: {exc}", clock, max_attempts, result)
            continue
        if env is None:
            _finish(session, row, OutboxStatus.skipped, clock)
            result.skipped += 1
            continue
        by_id[row.id] = row
        envelopes.append(env)
    session.commit()  # nothing open while SMTP talks

    def feed() -> Iterator[Envelope]:
        for env in envelopes:
            if stop() or not pace():
                return
            yield env

    try:
        if envelopes:
            mailer.open()
            for env, reply in mailer.send(feed()):
                _record(session, kinds, by_id.pop(env.tag), reply, clock, max_attempts, result)
                session.commit()
    except DeliveryError as exc:
        result.error = str(exc)
        log.warning("outbox: %s; %d message(s) will be tried again", exc, len(by_id))
        for row in by_id.values():
            _retry(session, kinds, row, str(exc), clock, max_attempts, result)
        by_id.clear()
    finally:
        for row in by_id.values():  # not tried (stopping): back to the queue as they were
            row.claimed_by = row.claimed_until = None
            session.add(row)
        session.commit()
    return result


def _record(session: Session, kinds: Mapping[str, Kind], row: Outbox, reply: Reply, clock: Clock, max_attempts: int,
            result: Pass) -> None:
    if reply.ok:
        row.attempts += 1
        _finish(session, row, OutboxStatus.sent, clock)
        result.sent += 1
    elif reply.permanent:
        row.attempts += 1
        row.last_error = str(reply)
        _fail(session, kinds, row, clock, result)
    else:
        _retry(session, kinds, row, str(reply), clock, max_attempts, result)


def _retry(session: Session, kinds: Mapping[str, Kind], row: Outbox, error: str, clock: Clock, max_attempts: int,
           result: Pass) -> None:
    row.attempts += 1
    row.last_error = error
    if row.attempts >= max_attempts:
        _fail(session, kinds, row, clock, result)
        return
    row.next_attempt_at = as_utc(clock()) + backoff(row.attempts)
    row.claimed_by = row.claimed_until = None
    session.add(row)
    result.retrying += 1


def _fail(session: Session, kinds: Mapping[str, Kind], row: Outbox, clock: Clock, result: Pass) -> None:
    log.warning("outbox: %s to %s failed after %d attempt(s): %s", row.kind, row.recipient, row.attempts,
                row.last_error)
    _finish(session, row, OutboxStatus.failed, clock)
    kind = kinds.get(row.kind)
    if kind is not None:
        kind.failed(session, row)
    result.failed += 1


def _finish(session: Session, row: Outbox, status: OutboxStatus, clock: Clock) -> None:
    row.status = status
    if status == OutboxStatus.sent:
        row.sent_at = as_utc(clock())
    row.claimed_by = row.claimed_until = None
    session.add(row)


def dispatch_due(
    session: Session,
    couriers: Mapping[str, Courier],
    clock: Clock,
    *,
    sender: str,
    limit: int = BATCH,
    stop: Callable[[], bool] = lambda: False,
) -> Pass:
    """Claim due rows of the couriers' kinds, deliver each, record each outcome as it comes (one
    commit a row; no transaction open while a courier works)."""
    result = Pass()
    rows = claim(session, sender, as_utc(clock()), couriers, limit)
    result.claimed = len(rows)
    for i, row in enumerate(rows):
        if stop():
            for left in rows[i:]:  # not tried: back to the queue as they were
                left.claimed_by = left.claimed_until = None
                session.add(left)
            session.commit()
            break
        courier = couriers[row.kind]
        try:
            attempt = courier.deliver(row)
        except Exception as exc:  # noqa: BLE001 - a bug in one row's delivery: retried later, the others still go
            log.error("outbox row %d (%s): %s: %s", row.id, row.kind, type(exc).__name__, exc)
            attempt = Attempt(False, False, f"{type(exc).__name__}: {exc}")
        if attempt is None:
            _finish(session, row, OutboxStatus.skipped, clock)
            result.skipped += 1
        else:
            row.attempts += 1
            if attempt.ok:
                row.last_error = None
                _finish(session, row, OutboxStatus.sent, clock)
                result.sent += 1
            else:
                row.last_error = attempt.detail
                later = None if attempt.permanent else courier.next_attempt(row, as_utc(clock()))
                if later is None:
                    log.warning("outbox: %s to %s failed after %d attempt(s): %s", row.kind, row.recipient,
                                row.attempts, attempt.detail)
                    _finish(session, row, OutboxStatus.failed, clock)
                    result.failed += 1
                else:
                    row.next_attempt_at = later
                    row.claimed_by = row.claimed_until = None
                    session.add(row)
                    result.retrying += 1
        session.commit()
    return result


class Relay:
    """The outbox's senders in `digest serve`: `connections` threads, each with its own SMTP
    connection (closed while idle), sending due rows as soon as `wake()` says a request queued
    one, and every POLL_SECONDS anyway (retries, rows queued by other processes). With
    `couriers`, a Dispatcher delivers the rows of their kinds (webhooks) beside them."""

    def __init__(
        self,
        engine: Engine,
        kinds: Mapping[str, Kind],
        mailer_factory: Callable[[], Mailer],
        clock: Clock,
        *,
        connections: int = 1,
        max_attempts: int = 8,
        rate_limit: float = 0,
        poll_seconds: float = POLL_SECONDS,
        couriers: Mapping[str, Courier] | None = None,
    ):
        self.engine = engine
        self.kinds = kinds
        self.mailer_factory = mailer_factory
        self.clock = clock
        self.connections = max(1, connections)
        self.max_attempts = max_attempts
        self.poll_seconds = poll_seconds
        self._pacer = Pacer(rate_limit)
        self._pace_lock = threading.Lock()  # one Pacer for all threads: the limit is over all of them
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._dispatcher = Dispatcher(engine, couriers, clock, poll_seconds=poll_seconds) if couriers else None

    def start(self) -> None:
        for i in range(self.connections):
            t = threading.Thread(target=self._run, name=f"outbox-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        if self._dispatcher is not None:
            self._dispatcher.start()

    def wake(self) -> None:
        self._wake.set()
        if self._dispatcher is not None:
            self._dispatcher.wake()

    def close(self, timeout: float = 30) -> None:
        """Stop after the message (or POST) in flight; what is left stays queued for the next start."""
        if self._dispatcher is not None:
            self._dispatcher.stop()
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()
        if self._dispatcher is not None:
            self._dispatcher.close(timeout)

    def _pace(self) -> bool:
        with self._pace_lock:
            return self._pacer.wait(self._stop.is_set)

    def _run(self) -> None:
        sender = new_sender_id()
        mailer = self.mailer_factory()
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    with new_session(self.engine) as s:
                        done = send_due(s, mailer, self.kinds, self.clock, sender=sender,
                                        max_attempts=self.max_attempts, stop=self._stop.is_set, pace=self._pace)
                except Exception as exc:  # the relay keeps running; the rows stay queued
                    log.error("outbox: %s: %s", type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
                    done = Pass()
                if done.claimed and not done.error:
                    continue  # more may be due
                mailer.close()  # no idle SMTP connection between polls
                self._wake.wait(self.poll_seconds)
        finally:
            mailer.close()



class Dispatcher:
    """A thread that delivers the rows of `couriers` (webhooks) as soon as `wake()` says one was
    queued, and every POLL_SECONDS anyway: in `digest serve` (the Relay's), so that a receiver that
    is slow to answer never holds up mail. (A polling `digest worker` runs `dispatch_until` in a
    process of its own instead: a thread would keep its sender pool from forking.)"""

    def __init__(self, engine: Engine, couriers: Mapping[str, Courier], clock: Clock, *,
                 poll_seconds: float = POLL_SECONDS):
        self.engine = engine
        self.couriers = dict(couriers)
        self.clock = clock
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox-couriers", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Ask the thread to stop after the delivery in flight (close() waits for it)."""
        self._stop.set()
        self._wake.set()

    def close(self, timeout: float = 30) -> None:
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        def wait(seconds: float) -> None:
            self._wake.wait(seconds)
            self._wake.clear()

        dispatch_until(self.engine, self.couriers, self.clock, stop=self._stop.is_set, wait=wait,
                       poll_seconds=self.poll_seconds)


def dispatch_until(engine: Engine, couriers: Mapping[str, Courier], clock: Clock, *, stop: Callable[[], bool],
                   wait: Callable[[float], object], poll_seconds: float = POLL_SECONDS) -> None:
    """Deliver the couriers' rows as they come due until `stop()`: a Dispatcher's thread, or the
    process a polling `digest worker` forks for them. `wait(seconds)` sleeps between passes (and
    returns early when woken or stopped)."""
    sender = new_sender_id()
    while not stop():
        try:
            with new_session(engine) as s:
                done = dispatch_due(s, couriers, clock, sender=sender, stop=stop)
        except Exception as exc:  # it keeps running; the rows stay queued
            log.error("outbox: %s: %s", type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            done = Pass()
        if done.claimed:
            continue  # more may be due
        wait(poll_seconds)


def drain(
    session: Session,
    mailer: Mailer,
    kinds: Mapping[str, Kind],
    clock: Clock,
    *,
    sender: str,
    max_attempts: int,
    stop: Callable[[], bool] = lambda: False,
) -> Pass:
    """Send everything due now, batch after batch (`digest worker`); the sums of the passes."""
    total = Pass()
    while not stop():
        done = send_due(session, mailer, kinds, clock, sender=sender, max_attempts=max_attempts, stop=stop)
        total.add(done)
        if not done.claimed or done.error:
            break
    return total


def drain_couriers(
    session: Session,
    couriers: Mapping[str, Courier],
    clock: Clock,
    *,
    sender: str,
    stop: Callable[[], bool] = lambda: False,
) -> Pass:
    """Deliver every courier row due now, batch after batch (`digest worker`); the sums of the passes."""
    total = Pass()
    while not stop():
        done = dispatch_due(session, couriers, clock, sender=sender, stop=stop)
        total.add(done)
        if not done.claimed:
            break
    return total
