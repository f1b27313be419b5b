"""The main job, shared by `digest send` and the scheduler: fetch, finish any unfinished
edition, build the next one from every unsent post, deliver it. And the preview of it."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlmodel import Session

from digest.clock import Clock, utc_now
from digest.config import Settings
from digest.content import editions, feeds, sources
from digest.content.editions import EditionView
from digest.content.render import Renderer
from digest.delivery.deliver import SendingSettings, deliver
from digest.delivery.ledger import reset_for_retry
from digest.delivery.sender import DeliveryReport
from digest.delivery.variants import build_message, signer_for
from digest.links import PublicUrls
from digest.mail.mailer import Envelope, Mailer, Reply
from digest.mail.message import MessageTemplate, Recipient
from digest.service import slots as schedule
from digest.service.cadences import Cadences
from digest.subject import subject_for

# A scheduled run starts a moment after its slot (later if another job of the process was running):
# whatever misfire_grace_hours says, a slot is still due this long after it.
MIN_GRACE = timedelta(minutes=1)

# The token a preview's unsubscribe and preferences links carry: no subscriber's, so they lead to
# the "not valid" page.
PREVIEW_TOKEN = "preview"


def poll(
    session: Session,
    settings: Settings,
    clock: Clock = utc_now,
    *,
    stop: Callable[[], bool] = lambda: False,
    fetch=feeds.fetch_one,
    on_fetched: Callable[[], None] = lambda: None,
) -> list[sources.SourceReport]:
    """`digest fetch`: poll every configured feed and store its posts (see sources.poll)."""
    return sources.poll(
        session, settings.feed_locations(), settings.feeds, settings.edition, clock, fetch=fetch, stop=stop,
        on_fetched=on_fetched,
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
    cadence: str = ""  # the name of the cadence the new edition was built for
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
    tick: Callable[[], None] | None = None,
    cadence: str | None = None,
) -> SendResult:
    """Fetch, finish every unfinished edition, build the next one of `cadence` (a name; None: the
    main cadence) from every post not yet in one of its editions (for schedule slot `slot`, if
    given: at most one edition per slot), deliver it. `tick()`: the progress of the sends (see
    delivery.deliver). NotFound for a cadence the config does not offer."""
    cadences = Cadences(settings.schedule)
    chosen = cadences.named(cadence)
    readers = cadences.readers(chosen)
    result = SendResult(cadence=chosen.name)
    if fetch:
        result.polled = poll(session, settings, clock, stop=stop)
    nl = settings.newsletter
    if settings.delivery.mode == "workers":
        return _queue_for_workers(session, clock, result, slot, subject_template=nl.subject, newsletter_name=nl.name,
                                  readers=readers)
    renderer = Renderer.from_settings(settings)
    result.resumed = resume(session, settings, mailer, clock, stop=stop, renderer=renderer, tick=tick)
    if stop():
        return result
    if slot is None:
        edition = editions.create(session, clock, subject_template=nl.subject, newsletter_name=nl.name,
                                  readers=readers)
    else:
        result.slot = schedule.build_for_slot(
            session, clock, slot, subject_template=nl.subject, newsletter_name=nl.name, readers=readers
        )
        edition = result.slot.edition
    if edition is None:
        return result
    view = editions.edition_view(session, edition, settings.edition.sections)
    result.post_count = view.post_count
    result.recipients = editions.delivery_count(session, edition)
    result.edition = deliver(
        session, edition, mailer, clock, SendingSettings.from_settings(settings), renderer=renderer, stop=stop,
        tick=tick,
    )
    return result


def resume(
    session: Session,
    settings: Settings,
    mailer: Mailer,
    clock: Clock = utc_now,
    *,
    stop: Callable[[], bool] = lambda: False,
    renderer: Renderer | None = None,
    tick: Callable[[], None] | None = None,
) -> list[DeliveryReport]:
    """Deliver what is due of every unfinished edition (an interrupted send, deferred retries).
    With delivery.mode = "workers" that is the workers' job: nothing is sent here."""
    if settings.delivery.mode == "workers":
        return []
    renderer = renderer or Renderer.from_settings(settings)
    sending = SendingSettings.from_settings(settings)
    reports = []
    for unfinished in editions.unfinished(session):
        if stop():
            break
        reports.append(deliver(session, unfinished, mailer, clock, sending, renderer=renderer, stop=stop, tick=tick))
    return reports


@dataclass
class CadenceRun:
    """What one cadence's schedule made of a run."""

    cadence: str  # its name
    due: schedule.Due
    send: SendResult | None = None  # a slot was due: the send job's result


@dataclass
class ScheduledResult:
    runs: list[CadenceRun]  # one per cadence, the main one first
    polled: list[sources.SourceReport] = field(default_factory=list)  # no slot due: fetched ...
    resumed: list[DeliveryReport] = field(default_factory=list)  # ... and resumed

    @property
    def due(self) -> schedule.Due:
        """The main cadence's due slot."""
        return self.runs[0].due

    @property
    def send(self) -> SendResult | None:
        """The main cadence's send, if it had a slot due."""
        return self.runs[0].send

    @property
    def sends(self) -> list[SendResult]:
        return [run.send for run in self.runs if run.send is not None]


def scheduled(
    session: Session,
    settings: Settings,
    mailer: Mailer,
    clock: Clock = utc_now,
    *,
    stop: Callable[[], bool] = lambda: False,
    fetch: bool = True,
) -> ScheduledResult:
    """What `digest serve` runs at each cron time, at start and at each poll: for each cadence
    whose schedule slot is due (see schedule.due), `send` for it (the feeds fetched once);
    otherwise fetch the feeds and resume unfinished editions. A slot missed by downtime is caught
    up here, once; a failed run is retried here."""
    grace = max(timedelta(hours=settings.schedule.misfire_grace_hours), MIN_GRACE)
    result = ScheduledResult([])
    for cadence in Cadences(settings.schedule).all:
        due = schedule.due(session, cadence.cron, grace, clock, cadence.key)
        run = CadenceRun(cadence.name, due)
        result.runs.append(run)
        if due.slot is not None and not stop():
            run.send = send(session, settings, mailer, clock, fetch=fetch and not result.sends, stop=stop,
                            slot=due.slot, cadence=cadence.name)
    if result.sends:
        return result
    if fetch:
        result.polled = poll(session, settings, clock, stop=stop)
    result.resumed = resume(session, settings, mailer, clock, stop=stop)
    return result


def _queue_for_workers(session: Session, clock: Clock, result: SendResult, slot: datetime | None, *,
                       subject_template: str, newsletter_name: str, readers: editions.Readers) -> SendResult:
    """Build the next edition with its pending deliveries and leave the sending to `digest worker`."""
    for unfinished in editions.unfinished(session):
        result.queued.append(Queued(unfinished.number, editions.pending_count(session, unfinished)))
    if slot is None:
        edition = editions.create(session, clock, subject_template=subject_template, newsletter_name=newsletter_name,
                                  readers=readers)
    else:
        result.slot = schedule.build_for_slot(session, clock, slot, subject_template=subject_template,
                                              newsletter_name=newsletter_name, readers=readers)
        edition = result.slot.edition
    if edition is not None:
        result.post_count = editions.edition_view(session, edition).post_count
        result.new_queued = Queued(edition.number, editions.pending_count(session, edition))
    session.rollback()  # end the read transaction
    return result


@dataclass
class Preview:
    view: EditionView
    message: MessageTemplate

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
    cadence: str | None = None,
) -> Preview | None:
    """Exactly the edition of `cadence` (a name; None: the main one) `send` would build now (or the
    newest `latest` posts); records nothing."""
    key = Cadences(settings.schedule).named(cadence).key
    if fetch:
        poll(session, settings, clock)
    posts = editions.latest_posts(session, latest) if latest else editions.unsent_posts(session, key)
    if not posts:
        return None
    now = clock()
    number = None if latest else editions.next_number(session, key)
    view = editions.view(posts, number, now, settings.edition.sections, key)
    subject = subject_for(settings.newsletter.subject, settings.newsletter.name, view.post_count, number, now)
    message = build_message(Renderer.from_settings(settings), view, subject, settings.newsletter, now,
                            signer_for(settings.dkim, settings.dkim_key_path))
    return Preview(view, message)


def send_preview(
    preview: Preview, addresses: list[str], mailer: Mailer, settings: Settings, clock: Clock = utc_now
) -> list[tuple[str, Reply]]:
    """Mail the preview to `addresses` only, subject prefixed "[Preview]". Records nothing."""
    envelopes = preview_envelopes(preview, addresses, settings, clock)
    mailer.open()
    try:
        return [(env.recipient, reply) for env, reply in mailer.send(envelopes)]
    finally:
        mailer.close()


def preview_envelopes(
    preview: Preview, addresses: list[str], settings: Settings, clock: Clock = utc_now, tag: object = None
) -> list[Envelope]:
    """The preview's copies for `addresses`, subject prefixed "[Preview]", links that lead nowhere
    (PREVIEW_TOKEN); each envelope tagged `tag`."""
    from digest.service.subscribers import normalize_email

    now = clock()
    renderer = Renderer.from_settings(settings)
    message = build_message(renderer, preview.view, "[Preview] " + preview.subject, settings.newsletter, now,
                            signer_for(settings.dkim, settings.dkim_key_path))
    nl, urls = settings.newsletter, renderer.urls
    envelopes = []
    for addr in addresses:
        email = normalize_email(addr)
        mid = f"<preview.{secrets.token_hex(8)}@{nl.domain}>"
        recipient = Recipient(
            email, None, urls.unsubscribe_url(PREVIEW_TOKEN), urls.preferences_url(PREVIEW_TOKEN), mid
        )
        data = message.for_recipient(recipient)
        envelopes.append(Envelope(nl.from_address, email, data, tag=tag))
    return envelopes


def preview_recipient(urls: PublicUrls) -> Recipient:
    """The sample reader a preview is rendered for (its links carry PREVIEW_TOKEN)."""
    return Recipient("reader@example.com", "Reader", urls.unsubscribe_url(PREVIEW_TOKEN),
                     urls.preferences_url(PREVIEW_TOKEN), "<preview@example.com>")


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
    cadence: str | None = None,
) -> RetryResult:
    """`digest retry N`: try edition N (of `cadence`, a name; None: the main one)'s failed and
    deferred deliveries again, now."""
    edition = editions.get(session, number, Cadences(settings.schedule).named(cadence).key)
    retried = reset_for_retry(session, edition)
    report = deliver(session, edition, mailer, clock, SendingSettings.from_settings(settings),
                     renderer=Renderer.from_settings(settings), stop=stop)
    return RetryResult(retried, report)
