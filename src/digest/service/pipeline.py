"""The main job, shared by `digest send` and the scheduler: fetch, finish any unfinished
edition, build the next one from every unsent post, deliver it. And the preview of it."""

from __future__ import annotations

from collections.abc import Callable
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlmodel import Session

from digest.content import editions, sources
from digest.service import slots as schedule
from digest.config import Settings
from digest.delivery.sender import DeliveryReport, build_message, deliver
from digest.content.editions import EditionView
from digest.links import Links
from digest.mail.mailer import Envelope, Mailer, Reply
from digest.mail.message import Message, Recipient
from digest.content.render import Renderer

Clock = Callable[[], datetime]

# A scheduled run starts a moment after its slot (later if another job of the process was running):
# whatever misfire_grace_hours says, a slot is still due this long after it.
MIN_GRACE = timedelta(minutes=1)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def renderer_for(settings: Settings) -> Renderer:
    return Renderer(
        newsletter_name=settings.newsletter.name,
        public_url=settings.newsletter.public_url,
        templates_dir=settings.templates_dir,
    )


@dataclass(frozen=True)
class Queued:
    """An edition left to `digest worker` (delivery.mode = "workers")."""

    edition_number: int
    pending: int  # deliveries not yet sent


@dataclass
class SendResult:
    polled: list[sources.SourceReport] = field(default_factory=list)
    resumed: list[DeliveryReport] = field(default_factory=list)
    edition: DeliveryReport | None = None  # the new edition, if one was built and delivered here
    post_count: int = 0
    recipients: int = 0  # deliveries the new edition was built with
    slot: schedule.SlotResult | None = None  # with slot=: what became of it
    # delivery.mode = "workers": editions left to the workers (unfinished ones, then the new one)
    queued: list[Queued] = field(default_factory=list)
    new_queued: Queued | None = None  # the new edition, if one was built for the workers


def send(
    session: Session,
    settings: Settings,
    mailer: Mailer,
    clock: Clock = utc_now,
    *,
    fetch: bool = True,
    stop: Callable[[], bool] = lambda: False,
    slot: datetime | None = None,
) -> SendResult:
    """Fetch, finish every unfinished edition, build the next one from every unsent post (for
    schedule slot `slot`, if given: at most one edition per slot), deliver it."""
    result = SendResult()
    if fetch:
        result.polled = sources.poll(session, settings, clock, stop=stop)
    if settings.delivery.mode == "workers":
        return _queue_for_workers(session, settings, clock, result, slot)
    renderer = renderer_for(settings)
    result.resumed = resume(session, settings, mailer, clock, stop=stop, renderer=renderer)
    if stop():
        return result
    nl = settings.newsletter
    if slot is None:
        edition = editions.create(session, clock, subject_template=nl.subject, newsletter_name=nl.name)
    else:
        result.slot = schedule.build_for_slot(
            session, clock, slot, subject_template=nl.subject, newsletter_name=nl.name
        )
        edition = result.slot.edition
    if edition is None:
        return result
    view = editions.edition_view(session, edition, settings.edition.sections)
    result.post_count = view.post_count
    result.recipients = editions.delivery_count(session, edition)
    result.edition = deliver(session, edition, mailer, clock, settings, renderer=renderer, stop=stop)
    return result


def resume(
    session: Session,
    settings: Settings,
    mailer: Mailer,
    clock: Clock = utc_now,
    *,
    stop: Callable[[], bool] = lambda: False,
    renderer: Renderer | None = None,
) -> list[DeliveryReport]:
    """Deliver what is due of every unfinished edition (an interrupted send, deferred retries).
    With delivery.mode = "workers" that is the workers' job: nothing is sent here."""
    if settings.delivery.mode == "workers":
        return []
    renderer = renderer or renderer_for(settings)
    reports = []
    for unfinished in editions.unfinished(session):
        if stop():
            break
        reports.append(deliver(session, unfinished, mailer, clock, settings, renderer=renderer, stop=stop))
    return reports


@dataclass
class ScheduledResult:
    due: schedule.Due
    send: SendResult | None = None  # a slot was due: the send job's result
    polled: list[sources.SourceReport] = field(default_factory=list)  # otherwise: fetched ...
    resumed: list[DeliveryReport] = field(default_factory=list)  # ... and resumed


def scheduled(
    session: Session,
    settings: Settings,
    mailer: Mailer,
    clock: Clock = utc_now,
    *,
    stop: Callable[[], bool] = lambda: False,
    fetch: bool = True,
) -> ScheduledResult:
    """What `digest serve` runs at each cron time, at start and at each poll: if a schedule slot
    is due (see schedule.due), `send` for it; otherwise fetch the feeds and resume unfinished
    editions. A slot missed by downtime is caught up here, once; a failed run is retried here."""
    cron = settings.schedule.parsed()
    grace = max(timedelta(hours=settings.schedule.misfire_grace_hours), MIN_GRACE)
    due = schedule.due(session, cron, grace, clock)
    result = ScheduledResult(due)
    if due.slot is not None:
        result.send = send(session, settings, mailer, clock, fetch=fetch, stop=stop, slot=due.slot)
        return result
    if fetch:
        result.polled = sources.poll(session, settings, clock, stop=stop)
    result.resumed = resume(session, settings, mailer, clock, stop=stop)
    return result


def _queue_for_workers(session: Session, settings: Settings, clock: Clock, result: SendResult, slot: datetime | None) -> SendResult:
    """Build the next edition with its pending deliveries and leave the sending to `digest worker`."""
    for unfinished in editions.unfinished(session):
        result.queued.append(Queued(unfinished.number, editions.pending_count(session, unfinished)))
    nl = settings.newsletter
    if slot is None:
        edition = editions.create(session, clock, subject_template=nl.subject, newsletter_name=nl.name)
    else:
        result.slot = schedule.build_for_slot(session, clock, slot, subject_template=nl.subject, newsletter_name=nl.name)
        edition = result.slot.edition
    if edition is not None:
        result.post_count = editions.edition_view(session, edition).post_count
        result.new_queued = Queued(edition.number, editions.pending_count(session, edition))
    session.rollback()  # end the read transaction
    return result


@dataclass
class Preview:
    view: EditionView
    message: Message

    @property
    def subject(self) -> str:
        return self.message.subject


def preview(
    session: Session,
    settings: Settings,
    clock: Clock = utc_now,
    *,
    latest: int | None = None,
    fetch: bool = True,
) -> Preview | None:
    """Exactly the edition `send` would build now (or the newest `latest` posts); records nothing."""
    if fetch:
        sources.poll(session, settings, clock)
    posts = editions.latest_posts(session, latest) if latest else editions.unsent_posts(session)
    if not posts:
        return None
    now = clock()
    number = None if latest else editions.next_number(session)
    view = editions.view(posts, number, now, settings.edition.sections)
    subject = editions.subject_for(settings.newsletter.subject, settings.newsletter.name, view.post_count, number, now)
    message = build_message(renderer_for(settings), view, subject, settings, now)
    return Preview(view, message)


def send_preview(preview: Preview, addresses: list[str], mailer: Mailer, settings: Settings, clock: Clock = utc_now) -> list[tuple[str, Reply]]:
    """Mail the preview to `addresses` only, subject prefixed "[Preview]". Records nothing."""
    from digest.service.subscribers import normalize_email

    now = clock()
    message = build_message(renderer_for(settings), preview.view, "[Preview] " + preview.subject, settings, now)
    links = Links(settings.newsletter.secret_key, settings.newsletter.public_url)
    envelopes = []
    for addr in addresses:
        email = normalize_email(addr)
        mid = f"<preview.{secrets.token_hex(8)}@{settings.newsletter.domain}>"
        url = f"{links.public_url}/unsubscribe/preview"
        data = message.for_recipient(Recipient(email, None, url, f"{links.public_url}/preferences/preview", mid))
        envelopes.append(Envelope(settings.newsletter.from_address, email, data))
    mailer.open()
    try:
        return [(env.recipient, reply) for env, reply in mailer.send(envelopes)]
    finally:
        mailer.close()


def preview_recipient(settings: Settings) -> Recipient:
    """The sample reader a preview file is rendered for."""
    base = settings.newsletter.public_url
    return Recipient("reader@example.com", "Reader", f"{base}/unsubscribe/preview", f"{base}/preferences/preview", "<preview@example.com>")


@dataclass
class RetryResult:
    retried: int  # deliveries made due again
    report: DeliveryReport


def retry(
    session: Session,
    settings: Settings,
    mailer: Mailer,
    number: int,
    clock: Clock = utc_now,
    *,
    stop: Callable[[], bool] = lambda: False,
) -> RetryResult:
    """`digest retry N`: try edition N's failed and deferred deliveries again, now."""
    from digest.delivery.sender import reset_for_retry

    edition = editions.get(session, number)
    retried = reset_for_retry(session, edition)
    report = deliver(session, edition, mailer, clock, settings, renderer=renderer_for(settings), stop=stop)
    return RetryResult(retried, report)
