"""Deliver an edition: settle what dead senders left, build the variants, send from this process or
from a pool of sender processes, and mark the edition sent when nothing is left pending."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import update
from sqlmodel import Session, col, select

from digest.clock import Clock
from digest.config import Settings, WebhookSettings
from digest.content.editions import counts, edition_view, pending_count
from digest.content.render import Renderer
from digest.delivery import pool
from digest.delivery.claims import new_sender_id
from digest.delivery.journal import settle_dead_senders
from digest.delivery.ledger import SQLLedger
from digest.delivery.sender import DeliveryReport, SenderSettings, run_sender
from digest.delivery.variants import Variants, VariantSettings
from digest.delivery.webhooks import Events, iso
from digest.mail.mailer import Mailer
from digest.store.models import Delivery, DeliveryStatus, Edition, EditionStatus, Subscriber, SubscriberStatus, as_utc


@dataclass(frozen=True)
class SendingSettings:
    """What deliver() reads from the configuration; built once by the entry point."""

    sender: SenderSettings
    variants: VariantSettings
    connections: int  # SMTP connections, each from its own sender process
    rate_limit: float  # messages a second over all of them (0: no limit)
    database_url: str  # for the sender processes
    webhooks: tuple[WebhookSettings, ...] = ()  # told `edition.sent` when the edition is done
    main_cadence: str = ""  # its name (schedule.name), for the event

    @classmethod
    def from_settings(cls, s: Settings) -> SendingSettings:
        return cls(SenderSettings.from_settings(s), VariantSettings.from_settings(s), s.smtp.connections,
                   s.smtp.rate_limit, s.database_url, tuple(s.webhooks), s.schedule.name)


def deliver(
    session: Session,
    edition: Edition,
    mailer: Mailer,
    clock: Clock,
    cfg: SendingSettings,
    *,
    renderer: Renderer,
    stop: Callable[[], bool] = lambda: False,
    sender: str | None = None,
    connections: int | None = None,
    tick: Callable[[], None] | None = None,
) -> DeliveryReport:
    """Send every due pending delivery of `edition`. Raises DeliveryError when the SMTP server
    cannot be reached; whatever was not sent stays pending.

    `connections` (default `cfg.connections`) > 1 spreads the work over that many sender
    processes when the mailer has a `factory` and the database can be shared; otherwise this
    process sends over `mailer` (as `sender`, default a new sender id). `stop()` is polled between
    messages (and forwarded to the sender processes): when it turns true, messages in flight
    finish and the rest stays pending. `tick()`, if given, is called while sending (about every
    half second from the pool's wait for its processes, else once a batch), in this process's main
    thread: for a progress display, which so needs no thread of its own.
    """
    ledger = SQLLedger(session)
    settle_dead_senders(ledger, cfg.sender.journal_dir)
    variants = Variants(
        lambda catch_up_from: edition_view(session, edition, cfg.variants.sections, catch_up_from=catch_up_from),
        edition.subject,
        cfg.variants.newsletter,
        lambda: renderer,
        clock(),
        cfg.variants.signer(),
    )
    n = cfg.connections if connections is None else connections
    factory = getattr(mailer, "factory", None)
    if n > 1 and factory is not None:
        # No more sender processes than there are batches to claim (a small edition goes out
        # from this process, without starting any).
        due = ledger.count_due(edition.id, as_utc(clock()))  # type: ignore[arg-type]
        n = min(n, -(-due // cfg.sender.batch_size))
    try:
        if n > 1 and factory is not None and pool.can_share(cfg.database_url):
            report = pool.deliver_in_pool(session, edition, variants, factory, clock, cfg.sender, cfg.variants,
                                          database_url=cfg.database_url, rate_limit=cfg.rate_limit, stop=stop, n=n,
                                          tick=tick)
        else:
            report = run_sender(ledger, edition.id, edition.number, variants, mailer, clock, cfg.sender,  # type: ignore[arg-type]
                                sender=sender or new_sender_id(), stop=stop, rate=cfg.rate_limit, tick=tick)
    finally:
        pending = finish_if_done(session, edition, Events(cfg.webhooks, clock, cfg.main_cadence))
    report.pending = pending
    return report


def finish_if_done(session: Session, edition: Edition, events: Events) -> int:
    """Mark the edition sent once none of its deliveries is pending, and report it as
    `edition.sent` in the same transaction; how many are pending. Several senders may finish at
    once (a pool, workers on other hosts): the one whose UPDATE changes the status reports it."""
    pending = pending_count(session, edition)
    if pending == 0 and edition.status != EditionStatus.sent:
        finished = as_utc(events.clock())
        changed = session.execute(
            update(Edition)
            .where(col(Edition.id) == edition.id, col(Edition.status) == EditionStatus.sending)
            .values(status=EditionStatus.sent, finished_at=finished)
        ).rowcount  # type: ignore[attr-defined]  # an UPDATE's result is a CursorResult
        session.refresh(edition)
        if changed:
            events.emit(session, "edition.sent", {"edition": {
                "id": edition.id, "cadence": events.cadence(edition.cadence), "number": edition.number,
                "subject": edition.subject,
                "finished_at": iso(finished), "deliveries": counts(session, edition),
            }})
            _report_bounced(session, edition, events)
        session.commit()
    return pending


_STATUS_CODE = re.compile(r"\b5\.\d{1,3}\.\d{1,3}\b")  # an enhanced status code (RFC 3463) in a reply


def _report_bounced(session: Session, edition: Edition, events: Events) -> None:
    """`subscriber.bounced` for the readers whose address the server refused for good while this
    edition went out (the sender processes marked them bounced; they are not given the webhooks,
    so the edition's end reports them, once: a bounced reader gets no later delivery)."""
    if not events.listens("subscriber.bounced"):
        return
    refused = session.exec(
        select(Subscriber, col(Delivery.last_error))
        .join(Delivery, col(Delivery.subscriber_id) == col(Subscriber.id))
        .where(col(Delivery.edition_id) == edition.id, col(Delivery.status) == DeliveryStatus.failed,
               col(Subscriber.status) == SubscriberStatus.bounced)
        .order_by(col(Subscriber.id))
    ).all()
    for sub, reply in refused:
        code = _STATUS_CODE.search(reply or "")
        data = events.subscriber_data(sub)
        data["bounce"] = {"kind": "hard", "status": code.group(0) if code else None, "diagnostic": reply}
        events.emit(session, "subscriber.bounced", data)
