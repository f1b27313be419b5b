"""Service: a sender worker. It delivers every edition that still has pending deliveries, batch by
batch through `delivery.deliver()`, alongside any number of other workers on any number of hosts.

Workers never coordinate directly: each batch is claimed in the Delivery table (`SQLLedger.claim`:
FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite's single writer lock makes the same UPDATE atomic), so
two workers never hold the same delivery. A worker that dies keeps its claims until their lease
(`delivery.lease_seconds`) runs out, or, on its own host, until the next worker there sees its
process is gone; then another worker sends them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlmodel import Session

from digest.clock import Clock
from digest.config import Settings
from digest.content import editions
from digest.content.render import Renderer
from digest.delivery import outbox, pool, webhooks
from digest.delivery.claims import new_sender_id
from digest.delivery.deliver import SendingSettings, deliver
from digest.delivery.sender import DeliveryReport
from digest.errors import DeliveryError
from digest.links import Links
from digest.mail.mailer import Mailer
from digest.service import signup
from digest.service.admin import testmail
from digest.store.database import make_engine

log = logging.getLogger(__name__)


@dataclass
class WorkerReport:
    sender: str  # this worker's sender id
    editions: dict[int, DeliveryReport] = field(default_factory=dict)  # by edition number
    errors: list[str] = field(default_factory=list)  # SMTP trouble met while polling
    mails: outbox.Pass = field(default_factory=outbox.Pass)  # the outbox's confirmation and welcome mails
    webhooks: outbox.Pass = field(default_factory=outbox.Pass)  # its webhooks (with `once`)

    @property
    def sent(self) -> int:
        return sum(r.sent for r in self.editions.values())

    def add(self, r: DeliveryReport) -> None:
        total = self.editions.setdefault(r.edition_number, DeliveryReport(r.edition_number))
        total.merge(r)
        total.pending = r.pending  # pending now, not a sum


def run(
    session: Session,
    settings: Settings,
    mailer: Mailer,
    clock: Clock,
    *,
    once: bool = False,
    stop: Callable[[], bool] = lambda: False,
    wait: Callable[[float], object] | None = None,
    progress: Callable[[DeliveryReport], None] = lambda r: None,
    on_error: Callable[[str], None] = lambda message: None,
    sender: str | None = None,
) -> WorkerReport:
    """Deliver pending deliveries of every unfinished edition, and the mail waiting in the outbox
    (confirmation and welcome mails, which `digest serve` sends too), and its webhooks: after the mail with
    `once`, else from a process of their own (a receiver slow to answer never holds up a send; see
    _start_posting).
    With `once`, return after one pass,
    when nothing is left that this worker can claim now (deliveries held by other workers, or
    waiting for a retry, are theirs or later's); otherwise poll every `delivery.poll_seconds` until
    `stop()`. `wait(seconds)` sleeps between polls (and should return early on a stop).

    With `once`, an unreachable SMTP server raises DeliveryError; a polling worker reports it in
    `errors` and tries again at the next poll. Either way nothing claimed is lost: deliver() hands
    its claims back."""
    sender = sender or new_sender_id()
    report = WorkerReport(sender)
    sending = SendingSettings.from_settings(settings)
    renderer = sending.variants.renderer()
    nl = settings.newsletter
    kinds = {**signup.outbox_kinds(settings, Links(nl.secret_key, nl.public_url, clock), clock, renderer),
             **testmail.outbox_kinds(settings, clock)}
    couriers = webhooks.couriers(settings.webhooks, clock)
    posting: pool.Companion | outbox.Dispatcher | None = None
    if not once:
        posting = _start_posting(session, settings, couriers, clock)

    def progressed(r: DeliveryReport) -> None:
        progress(r)
        if posting is not None:
            posting.wake()  # an edition that finished has queued its edition.sent: post it now

    try:
        _loop(session, settings, mailer, clock, report, sending, renderer, kinds, once=once, stop=stop, wait=wait,
              progress=progressed, on_error=on_error, sender=sender)
    finally:
        if once and not stop():  # even when the SMTP server could not be reached
            report.webhooks = outbox.drain_couriers(session, couriers, clock, sender=sender, stop=stop)
        if isinstance(posting, pool.Companion):
            outcome = posting.close(timeout=webhooks.TIMEOUT_SECONDS + 5)
            if not outcome.ok:  # (what it did not post stays queued for the next worker or `digest serve`)
                log.warning("the webhooks' process: %s", outcome.error)
        elif posting is not None:
            posting.close(timeout=webhooks.TIMEOUT_SECONDS + 5)
    mailer.close()
    return report


def _start_posting(session: Session, settings: Settings, couriers: dict[str, outbox.Courier],
                   clock: Clock) -> pool.Companion | outbox.Dispatcher:
    """What posts the webhooks of a polling worker as they come due, apart from the mail (a receiver
    slow to answer never holds up a send): a process forked now, while this one has a single thread,
    with its own engine. A thread (a Dispatcher) would make the sender pool start its processes
    with forkserver (~15 % slower, ~70 MB more: docs/delivery.md); posting between polls instead
    would hold the webhooks back for a whole send. A Dispatcher all the same when this process
    already has a thread (nothing forks then) or an in-memory database (nothing else can open it)."""
    poll_seconds = settings.delivery.poll_seconds
    if pool.can_share(settings.database_url):
        def post(stop: Callable[[], bool], wait: Callable[[float], None]) -> None:
            engine = make_engine(settings.database_url)
            try:
                outbox.dispatch_until(engine, couriers, clock, stop=stop, wait=wait, poll_seconds=poll_seconds)
            finally:
                engine.dispose()

        companion = pool.start_companion(post, name="digest-webhooks")
        if companion is not None:
            return companion
    dispatcher = outbox.Dispatcher(session.get_bind(), couriers, clock,  # type: ignore[arg-type]
                                   poll_seconds=poll_seconds)
    dispatcher.start()
    return dispatcher


def _loop(session: Session, settings: Settings, mailer: Mailer, clock: Clock, report: WorkerReport,
          sending: SendingSettings, renderer: Renderer, kinds: dict[str, outbox.Kind], *, once: bool,
          stop: Callable[[], bool], wait: Callable[[float], object] | None,
          progress: Callable[[DeliveryReport], None], on_error: Callable[[str], None], sender: str) -> None:
    """run()'s passes over the editions and the outbox's mail."""
    if wait is None:
        wait = threading.Event().wait  # (nothing sets it: each wait sleeps the whole interval)
    while not stop():
        busy = False
        try:
            for edition in editions.unfinished(session):
                if stop():
                    break
                r = deliver(session, edition, mailer, clock, sending, renderer=renderer, stop=stop, sender=sender)
                if r.sent or r.failed or r.skipped:
                    busy = True
                    report.add(r)
                    progress(r)
            if not stop():
                mails = outbox.drain(session, mailer, kinds, clock, sender=sender,
                                     max_attempts=settings.smtp.max_attempts, stop=stop)
                report.mails.add(mails)
                if mails.error:
                    raise DeliveryError(mails.error)
                busy = busy or mails.claimed > 0
        except DeliveryError as exc:
            if once:
                raise
            report.errors.append(str(exc))
            on_error(str(exc))
        finally:
            session.rollback()  # no transaction (and no snapshot) held while idle
        if once:
            break
        if not busy:
            mailer.close()  # do not hold an idle SMTP connection between polls
            wait(settings.delivery.poll_seconds)

