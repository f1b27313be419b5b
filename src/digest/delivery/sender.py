"""One sender: claim a batch of an edition's pending deliveries, send it, record each result; until
nothing is due or it is asked to stop.

Several senders (processes of a pool, `digest worker`s on several hosts) run this loop on one
edition at once: the store's claim keeps them apart. The loop talks to the ledger only through
`DeliveryStore` (claim / record / renew / release / replay), so it runs the same on the database
(`SQLLedger`) and in memory (`MemoryLedger`). Results are buffered (`Recorder`) and written with
the next claim, or every COMMIT_EVERY results / COMMIT_SECONDS; acceptances are journaled at once.

Every message's envelope sender is a VERP address naming its delivery (`mail/verp.py`), so a
bounce can be traced back (`bounces.py`).
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from digest.clock import Clock
from digest.config import Settings
from digest.delivery.claims import Claimed, Lease
from digest.delivery.journal import Journal
from digest.delivery.ledger import DeliveryStore, Results
from digest.delivery.variants import Variants
from digest.links import Links
from digest.mail import dsn
from digest.mail.mailer import Envelope, Mailer, Pacer, Reply
from digest.mail.message import MessageTemplate, Recipient
from digest.mail.verp import VERP
from digest.store.models import DeliveryStatus, as_utc

log = logging.getLogger(__name__)

# Wait before retrying a temporary failure (4xx, dropped connection), by attempts so far.
BACKOFF = [timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=2), timedelta(hours=6)]
BACKOFF_LATER = timedelta(hours=12)
FAILURES_KEPT = 200  # failures listed in a DeliveryReport (all are in the ledger)
COMMIT_EVERY = 500  # results per commit at most (between commits the journal keeps acceptances); a
# batch (delivery.batch_size, 200) is normally committed whole, with the next claim
COMMIT_SECONDS = 0.5  # ... or at least this often


_random = random.Random(secrets.randbits(64))
os.register_at_fork(after_in_child=lambda: _random.seed(secrets.randbits(64)))  # sender processes differ


def message_id_nonce() -> int:
    """32 random bits for a Message-ID (unique, not secret: no system call per message)."""
    return _random.getrandbits(32)


def backoff(attempts: int) -> timedelta:
    return BACKOFF[attempts - 1] if 0 < attempts <= len(BACKOFF) else BACKOFF_LATER


@dataclass
class DeliveryReport:
    edition_number: int
    sent: int = 0
    failed: int = 0
    # Every delivery of the edition still pending after the run (deferred ones, ones a stop left,
    # ones other senders hold): set by deliver(), not a sum (merge() leaves it).
    pending: int = 0
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


@dataclass(frozen=True)
class SenderSettings:
    """What a sender reads from the configuration. Picklable: sender processes get it instead of
    the whole Settings."""

    secret_key: str  # the links' tokens and the VERP addresses
    public_url: str
    bounce_domain: str  # of the envelope sender
    message_id_domain: str
    batch_size: int  # deliveries claimed at a time
    lease: timedelta  # how long a claim holds
    max_attempts: int  # then a temporary failure is a failure
    journal_dir: Path

    @classmethod
    def from_settings(cls, s: Settings) -> SenderSettings:
        return cls(
            secret_key=s.newsletter.secret_key,
            public_url=s.newsletter.public_url,
            bounce_domain=s.bounce_domain,
            message_id_domain=s.newsletter.domain,
            batch_size=s.delivery.batch_size,
            lease=timedelta(seconds=s.delivery.lease_seconds),
            max_attempts=s.smtp.max_attempts,
            journal_dir=s.journal_dir,
        )


class Recorder:
    """Collects a sender's results and hands them to the store in groups (with the next claim, or
    every `commit_every` results / `commit_seconds`); acceptances are journaled at once, and the
    journal is emptied when the store has them."""

    def __init__(self, store: DeliveryStore, journal: Journal, lease: Lease | None = None, *,
                 commit_every: int = COMMIT_EVERY, commit_seconds: float = COMMIT_SECONDS):
        self.store = store
        self.journal = journal
        self.lease = lease
        self.commit_every = commit_every
        self.commit_seconds = commit_seconds
        self.results = Results()
        self.last = time.monotonic()

    def accepted(self, delivery_id: int, message_id: str, at: datetime) -> None:
        self.journal.record(delivery_id, message_id, at)
        r = self.results
        r.accepted.append((delivery_id, message_id, at))
        if len(r.accepted) + len(r.other) >= self.commit_every or time.monotonic() - self.last >= self.commit_seconds:
            self.flush()

    def outcome(self, delivery_id: int, status: DeliveryStatus, attempts: int, error: str | None,
                next_at: datetime | None = None) -> None:
        r = self.results
        r.other.append((delivery_id, status, attempts, error, next_at))
        if len(r.accepted) + len(r.other) >= self.commit_every or time.monotonic() - self.last >= self.commit_seconds:
            self.flush()

    def bounce(self, subscriber_id: int) -> None:
        """The server says the address does not exist (the subscriber's failed outcome comes too)."""
        self.results.bounced.append(subscriber_id)

    def flush(self) -> None:
        """Write what was collected (the store commits it)."""
        if self.results:
            self.store.record(self.results)
        self.written()

    def written(self) -> None:
        """The store has `results` (record, or a claim that took them): start a new buffer."""
        n = len(self.results)
        if n:
            self.journal.clear()
            if self.lease is not None:
                self.lease.settled(n)
            self.results = Results()
        self.last = time.monotonic()


def run_sender(
    store: DeliveryStore,
    edition_id: int,
    edition_number: int,
    variants: Variants,
    mailer: Mailer,
    clock: Clock,
    cfg: SenderSettings,
    *,
    sender: str,
    rate: float = 0.0,
    stop: Callable[[], bool] = lambda: False,
    tick: Callable[[], None] | None = None,
) -> DeliveryReport:
    """One sender, `sender` by id: claim a batch, send it over `mailer`, record each result; until
    nothing is due or `stop()` (polled between messages: messages in flight finish, the rest stays
    pending). At most `rate` messages a second (0: no limit). `tick()` (the progress of a send from
    this process) is called once a batch, after the claim that wrote the last batch's results."""
    report = DeliveryReport(edition_number)
    links = Links(cfg.secret_key, cfg.public_url)
    verp = VERP(cfg.secret_key, cfg.bounce_domain)
    domain = cfg.message_id_domain
    number = edition_number
    max_attempts = cfg.max_attempts
    pacer = Pacer(rate)
    lease = Lease(cfg.lease, clock)
    recorder = Recorder(store, Journal(cfg.journal_dir, sender), lease)
    after = 0  # claim onwards from the last batch; once nothing is left there, from the start
    try:
        while not stop():
            # This sender's earlier results are written in the same transaction as its next claim.
            now = as_utc(clock())
            batch = store.claim(edition_id, sender, now=now, until=now + cfg.lease, limit=cfg.batch_size,
                                after=after, results=recorder.results)
            recorder.written()
            if tick is not None:
                tick()
            if not batch:
                if after == 0:
                    break
                after = 0
                continue
            after = max(c.delivery_id for c in batch)
            lease.taken(len(batch), now)
            queue: list[tuple[Claimed, MessageTemplate]] = []
            for c in batch:
                template = variants.for_text(c.topics, c.catch_up_from) if c.active else None
                if template is None:
                    recorder.outcome(c.delivery_id, DeliveryStatus.skipped, c.attempts,
                                     "subscriber not active or wants none of these topics")
                    report.skipped += 1
                else:
                    queue.append((c, template))
            if not queue:
                continue
            mailer.open()
            lost = False

            def envelopes(work: list[tuple[Claimed, MessageTemplate]]) -> Iterator[Envelope]:
                nonlocal lost
                for c, template in work:
                    if stop() or not pacer.wait(stop):
                        return
                    renew_at = lease.renewal_due()
                    if renew_at is not None:
                        # Every result so far is written first: those claims are no longer held.
                        recorder.flush()
                        if not lease.renewed(renew_at, store.renew(sender, renew_at + cfg.lease)):
                            lost = True
                            return
                    email, subscriber_id = c.email, c.subscriber_id
                    # set: a claim is active only with its subscriber (the ledger's join found it)
                    assert email is not None and subscriber_id is not None
                    token = links.subscriber_token(subscriber_id, email)
                    mid = f"<{number}.{c.delivery_id}.{message_id_nonce():08x}@{domain}>"
                    data = template.wire_for(
                        Recipient(email, c.name, links.unsubscribe_url(token), links.preferences_url(token), mid)
                    )
                    yield Envelope(verp.sender(c.delivery_id), email, data, tag=(c, mid), ready=True)

            done = 0
            for env, reply in mailer.send(envelopes(queue)):
                # results are paired by tag: a resent envelope comes back later
                tag: tuple[Claimed, str] = env.tag  # type: ignore[assignment]  # mail.smtp types Envelope.tag object
                c, mid = tag
                record_reply(recorder, report, c, env, reply, mid, as_utc(clock()), max_attempts)
                done += 1
            if lost:
                log.warning("%s: a claim outlived its lease and may have been taken over; the rest of the batch"
                            " is left to whoever holds it", sender)
                recorder.flush()
                store.release(sender)
                lease.held = 0
                continue
            if done < len(queue):
                report.stopped = True
                break
    finally:
        recorder.flush()
        recorder.journal.close()
        store.release(sender)
    return report


def record_reply(recorder: Recorder, report: DeliveryReport, c: Claimed, env: Envelope, reply: Reply, mid: str,
                 now: datetime, max_attempts: int) -> None:
    """What the server's `reply` to `env` makes of delivery `c`: sent, failed (a permanent refusal
    or the last attempt; a "no such address" bounces the subscriber) or deferred."""
    attempts = c.attempts + 1
    if reply.ok:
        recorder.accepted(c.delivery_id, mid, now)
        report.sent += 1
    elif reply.permanent or attempts >= max_attempts:
        error = f"{reply.code} {reply.text}".strip()
        # the same rule as for a bounce that comes back later (`dsn.failure_kind`)
        if (reply.permanent and c.subscriber_id is not None
                and dsn.failure_kind(dsn.reply_status(reply.code, reply.text), reply.text) == "hard"):
            recorder.bounce(c.subscriber_id)
            report.bounced += 1
        recorder.outcome(c.delivery_id, DeliveryStatus.failed, attempts, error)
        report.failed += 1
        if len(report.failures) < FAILURES_KEPT:
            report.failures.append((env.recipient, error))
    else:
        recorder.outcome(c.delivery_id, DeliveryStatus.pending, attempts, f"{reply.code} {reply.text}".strip(),
                         now + backoff(attempts))
