"""Service: readers joining (double opt-in), confirming, choosing topics, pausing and leaving.

What `digest serve` does for a reader, with the session and the clock passed in. Mail is never
sent from here: a confirmation is queued in the outbox, and `ConfirmationMail` is how the outbox
(digest.outbox) sends it; so is a reader's welcome when they confirm (service/welcome.py).
The web app answers a subscribe form the same way whatever the address's state; the outcome
returned here is for the caller's logs and tests, never for the reader.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, parseaddr
from enum import Enum

import jinja2
from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from digest.clock import Clock
from digest.config import NewsletterSettings, Settings
from digest.content.plaintext import clean
from digest.content.render import Renderer, compile_mjml
from digest.delivery import outbox
from digest.delivery.webhooks import NO_EVENTS, Events
from digest.errors import BadToken
from digest.links import CONFIRM_MAX_AGE, Links
from digest.mail.mailer import Envelope
from digest.service import cadences, welcome
from digest.service import subscribers as subs
from digest.service.cadences import Cadence
from digest.store.models import MAIN_CADENCE, Outbox, Post, Subscriber, SubscriberStatus, as_utc, stored_id


class SignupOutcome(str, Enum):
    """What a subscribe form did. The reader sees the same page for every one of them."""

    created = "created"  # a new pending subscriber; confirmation mail due
    resent = "resent"  # still pending; another confirmation mail due
    throttled = "throttled"  # still pending; a confirmation went out too recently
    returning = "returning"  # had unsubscribed; pending again, confirmation mail due
    active = "active"  # already subscribed; nothing changes, no mail
    blocked = "blocked"  # bounced or suspended; nothing changes, no mail


@dataclass(frozen=True)
class SubscribeResult:
    outcome: SignupOutcome
    mailed: bool  # a confirmation mail was queued in the outbox


# --- categories -------------------------------------------------------------------------------


def known_categories(session: Session, order: Sequence[str] = ()) -> list[str]:
    """Every category seen so far: configured section order first, then alphabetical."""
    names = [c for c in session.exec(select(Post.category).distinct()).all() if c]
    rank = {name.casefold(): i for i, name in enumerate(order)}
    return sorted(names, key=lambda n: (rank.get(n.casefold(), len(rank)), n.casefold()))


def choose_categories(chosen: Iterable[str], known: Sequence[str]) -> list[str] | None:
    """A subscriber's `topics`: the known categories chosen (each name whole, commas and all).
    None (every category, new ones included) when none or all of them are chosen."""
    wanted = {c.strip() for c in chosen if c and c.strip()}
    keep = [c for c in known if c in wanted]
    if not keep or len(keep) == len(known):
        return None
    return keep


def chosen(sub: Subscriber) -> frozenset[str] | None:
    return None if sub.topics is None else frozenset(sub.topics)


def known_for(session: Session, sub: Subscriber | None, order: Sequence[str] = ()) -> list[str]:
    """Known categories plus any `sub` chose that no post carries any more."""
    known = known_categories(session, order)
    picked = (chosen(sub) if sub is not None else None) or frozenset()
    return known + sorted(picked - set(known), key=str.casefold)


# --- subscribe --------------------------------------------------------------------------------


def subscribe(
    session: Session,
    clock: Clock,
    *,
    email: str,
    name: str | None = None,
    categories: Iterable[str] = (),
    known: Sequence[str] = (),
    resend_after: timedelta = timedelta(minutes=10),
    check_deliverability: bool = False,
    cadence: str = MAIN_CADENCE,
) -> SubscribeResult:
    """Record a sign-up. Raises InvalidAddress for an address that cannot be mailed.

    New address: a pending subscriber. Pending or unsubscribed: the record stays as it is (a
    form anyone can post changes nothing about someone else's address: not the name a digest
    greets them by, not their topics or cadence) until the reader confirms. Each of these gets a
    confirmation mail, queued in the outbox in this transaction, unless one was queued less than
    `resend_after` ago. Active, bounced or suspended: nothing changes and no mail is due.
    """
    address = subs.normalize_email(email, check_deliverability=check_deliverability)
    now = as_utc(clock())
    choice = choose_categories(categories, known)
    sub = _find(session, address)
    if sub is None:
        sub = Subscriber(
            email=address,
            name=subs.clean_name(name),
            status=SubscriberStatus.pending,
            topics=choice,
            cadence=cadence,  # (a stored key: cadences.Cadence.key)
            created_at=now,
        )
        session.add(sub)
        try:
            session.flush()  # committed with the outbox row, in _due: one write transaction
        except IntegrityError:  # the same address, posted twice at once
            session.rollback()
            sub = _find(session, address)
            assert sub is not None
        else:
            return _due(session, sub, SignupOutcome.created, now, resend_after)

    if sub.status == SubscriberStatus.active:
        return SubscribeResult(SignupOutcome.active, False)
    if sub.status in (SubscriberStatus.bounced, SubscriberStatus.suspended):
        return SubscribeResult(SignupOutcome.blocked, False)
    if sub.status == SubscriberStatus.unsubscribed:
        return _due(session, sub, SignupOutcome.returning, now, resend_after)
    return _due(session, sub, SignupOutcome.resent, now, resend_after)


def _find(session: Session, address: str) -> Subscriber | None:
    return session.exec(select(Subscriber).where(Subscriber.email == address)).first()


def _due(
    session: Session, sub: Subscriber, outcome: SignupOutcome, now: datetime, resend_after: timedelta
) -> SubscribeResult:
    """Take the right to send a confirmation now (one atomic UPDATE, so two posts at once cannot
    both send) and queue the mail in the same transaction. A confirmation still waiting in the
    outbox (the relay is down) is not queued twice: it goes out when the relay is back."""
    if outbox.waiting(session, CONFIRMATION, sub.email):
        return SubscribeResult(SignupOutcome.throttled, False)
    cutoff = now - resend_after
    taken = session.exec(
        update(Subscriber)
        .where(
            col(Subscriber.id) == sub.id,
            or_(col(Subscriber.confirmation_sent_at).is_(None), col(Subscriber.confirmation_sent_at) <= cutoff),
        )
        .values(confirmation_sent_at=now)
    ).rowcount
    if taken:
        outbox.enqueue(session, CONFIRMATION, sub.email, {"subscriber_id": sub.id}, now)
    session.commit()
    if not taken:
        return SubscribeResult(SignupOutcome.throttled, False)
    return SubscribeResult(outcome, True)


# --- the confirmation mail --------------------------------------------------------------------


CONFIRMATION = "confirmation"  # the outbox kind


class ConfirmationMail:
    """The outbox kind "confirmation": the mail with the confirmation link, made when it is sent
    (so the link's 7 days start then). Not sent to an address that was erased or changed, or that
    is active, bounced or suspended by then."""

    def __init__(self, links: Links, newsletter: NewsletterSettings, clock: Clock, env: jinja2.Environment):
        self.links = links
        self.newsletter = newsletter
        self.clock = clock
        self.env = env

    def envelope(self, session: Session, row: Outbox) -> Envelope | None:
        sub = session.get(Subscriber, outbox.payload(row)["subscriber_id"], populate_existing=True)
        if sub is None or sub.email != row.recipient:
            return None
        if sub.status not in (SubscriberStatus.pending, SubscriberStatus.unsubscribed):
            return None
        token = self.links.confirm_token(stored_id(sub), sub.email)
        data = confirmation_email(self.newsletter, sub.email, self.links.confirm_url(token), self.clock(), env=self.env)
        return Envelope(self.newsletter.from_address, sub.email, data, tag=row.id)

    def failed(self, session: Session, row: Outbox) -> None:
        """Forget the send, so the reader's next try queues a new mail at once."""
        session.execute(
            update(Subscriber)
            .where(col(Subscriber.id) == outbox.payload(row)["subscriber_id"], col(Subscriber.email) == row.recipient)
            .values(confirmation_sent_at=None)
        )


def outbox_kinds(settings: Settings, links: Links, clock: Clock, renderer: Renderer) -> dict[str, outbox.Kind]:
    """Every kind of outbox row and how to send it. `links` reads the clock too (a confirmation
    link's 7 days start when the mail is made); `renderer` holds the templates."""
    return {
        CONFIRMATION: ConfirmationMail(links, settings.newsletter, clock, renderer.env),
        welcome.WELCOME: welcome.WelcomeMail.from_settings(settings, links, clock, renderer),
    }


def confirmation_email(
    nl: NewsletterSettings, to: str, confirm_url: str, date: datetime, *, env: jinja2.Environment
) -> bytes:
    """The confirmation mail as bytes (MJML HTML + text, the digest's look). The name typed into
    the form is deliberately left out: a stranger's text must not ride in mail we send."""
    ctx = {
        "newsletter": {"name": nl.name, "public_url": nl.public_url},
        "confirm_url": confirm_url,
        "days": CONFIRM_MAX_AGE // 86400,
        "email": to,
    }
    html = compile_mjml(env.get_template("confirm.mjml.j2").render(ctx))
    text = env.get_template("confirm.txt.j2").render(ctx)
    msg = EmailMessage(policy=SMTP)
    name, addr = parseaddr(nl.from_)
    msg["From"] = formataddr((clean(name), addr)) if name else addr
    msg["To"] = to
    msg["Subject"] = clean(f"Confirm your subscription to {nl.name}")
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = f"<confirm.{secrets.token_hex(8)}@{nl.domain}>"
    msg["Auto-Submitted"] = "auto-generated"
    if nl.reply_to:
        msg["Reply-To"] = clean(nl.reply_to)
    msg.set_content(text, cte="quoted-printable")
    msg.add_alternative(html, subtype="html", cte="quoted-printable")
    for part in msg.iter_parts():
        del part["MIME-Version"]  # belongs on the message only
    return msg.as_bytes()


# --- confirm ----------------------------------------------------------------------------------


def check_confirm(session: Session, links: Links, token: str) -> Subscriber:
    """The subscriber a confirmation link is for. BadToken when forged, altered or expired, when
    the address was erased, bounced or suspended, or when the reader unsubscribed after the
    last confirmation mail (then the form is the way back)."""
    sid, fingerprint = links.read_confirm_token(token)
    sub = session.get(Subscriber, sid)
    if sub is None or not links.matches(fingerprint, sub.email):
        raise BadToken("this link is not valid")
    if sub.status in (SubscriberStatus.pending, SubscriberStatus.active):
        return sub
    if sub.status == SubscriberStatus.unsubscribed and _asked_again(sub):
        return sub
    raise BadToken("this link is no longer valid")


def _asked_again(sub: Subscriber) -> bool:
    """A former subscriber who asked for a confirmation mail after leaving."""
    if sub.confirmation_sent_at is None:
        return False
    return sub.unsubscribed_at is None or as_utc(sub.confirmation_sent_at) > as_utc(sub.unsubscribed_at)


def confirm(session: Session, clock: Clock, links: Links, token: str, *, welcome_mail: bool = False,
            events: Events = NO_EVENTS) -> tuple[Subscriber, bool]:
    """Activate the subscriber of a confirmation link (reported as `subscriber.confirmed`).
    (subscriber, changed); idempotent. With `welcome_mail`, their welcome mail is queued in the
    same transaction, once per subscriber (welcome.queue)."""
    sub = check_confirm(session, links, token)
    if sub.status == SubscriberStatus.active:
        return sub, False
    now = as_utc(clock())
    # One atomic UPDATE takes the change: a second confirmation that read the reader as pending
    # too (two clicks at once) finds them active when it writes (SQLite: it waits for the write
    # lock; PostgreSQL: for the row lock, then reads the row again) and reports nothing.
    taken = session.execute(  # type: ignore[attr-defined]  # an UPDATE's result is a CursorResult
        update(Subscriber)
        .where(col(Subscriber.id) == sub.id, col(Subscriber.status) == sub.status)
        .values(status=SubscriberStatus.active, confirmed_at=now, unsubscribed_at=None),
        execution_options={"synchronize_session": False},
    ).rowcount
    session.refresh(sub)
    if not taken:
        session.commit()
        return sub, False
    events.emit(session, "subscriber.confirmed", events.subscriber_data(sub))
    if welcome_mail:
        welcome.queue(session, stored_id(sub), sub.email, now)
    session.commit()
    return sub, True


# --- links in the digest: unsubscribe and preferences ----------------------------------------


def from_token(session: Session, links: Links, token: str) -> Subscriber | None:
    """The subscriber of an unsubscribe/preferences link; None when they were erased since.
    BadToken when the link is forged or altered."""
    sid, fingerprint = links.read_subscriber_token(token)
    sub = session.get(Subscriber, sid)
    if sub is None or not links.matches(fingerprint, sub.email):
        return None
    return sub


def unsubscribe(session: Session, clock: Clock, links: Links, token: str, events: Events = NO_EVENTS) -> bool:
    """Unsubscribe the link's subscriber at once. True when this changed something; idempotent."""
    sub = from_token(session, links, token)
    if sub is None:
        return False
    return subs.unsubscribe(session, sub, clock, events)


def save_preferences(session: Session, sub: Subscriber, *, categories: Iterable[str], known: Sequence[str]) -> None:
    """Store the topics chosen (none or all of them: every topic, new ones included)."""
    sub.topics = choose_categories(categories, known)
    session.add(sub)
    session.commit()


def choose_cadence(session: Session, sub: Subscriber, cadence: Cadence, clock: Clock) -> None:
    """How often they get the digest; the first edition in the new cadence starts where their last
    one ended (see cadences.choose)."""
    if cadences.choose(sub, cadence, clock()):
        session.add(sub)
        session.commit()


def set_paused(session: Session, sub: Subscriber, paused: bool) -> None:
    """Pause (no digest at all, the subscription kept) or resume."""
    sub.paused = paused
    session.add(sub)
    session.commit()


def resubscribe(session: Session, sub: Subscriber, clock: Clock, events: Events = NO_EVENTS) -> bool:
    """An unsubscribed reader comes back through a link from their own mail: active at once
    (reported as `subscriber.confirmed`)."""
    if sub.status != SubscriberStatus.unsubscribed:
        return False
    sub.status = SubscriberStatus.active
    sub.confirmed_at = sub.confirmed_at or as_utc(clock())
    sub.unsubscribed_at = None
    session.add(sub)
    events.emit(session, "subscriber.confirmed", events.subscriber_data(sub))
    session.commit()
    return True
