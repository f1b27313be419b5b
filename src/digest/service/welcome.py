"""Service: the welcome mail, once per reader, when they confirm (or are added with `--welcome`).

It is queued in the outbox (digest.delivery.outbox) in the transaction that makes the reader active,
and `welcomed_at` is set in that same transaction by one atomic UPDATE: a second confirmation
(two clicks, two tabs), a crash before the commit or a restart can never queue a second one.
`WelcomeMail` is how the outbox sends it: the latest published edition of the reader's cadence (of
the main cadence while theirs has none yet) cut to the reader's topics (the edition's own render
path: Renderer, render_fitted, MessageTemplate with its List-Unsubscribe and DKIM), or on a list
that has sent nothing yet the newest posts. Made when it is sent, so it
shows what is newest then.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import update
from sqlmodel import Session, col, select

from digest.clock import Clock
from digest.config import Settings, WelcomeSettings
from digest.content import editions
from digest.content.editions import EditionView
from digest.content.render import Renderer
from digest.delivery import outbox
from digest.delivery.variants import VariantSettings, message_from, render_fitted
from digest.links import Links
from digest.mail.dkim import DKIMSigner
from digest.mail.mailer import Envelope
from digest.mail.message import Recipient
from digest.service import archive
from digest.service.cadences import Cadences
from digest.store.models import MAIN_CADENCE, Outbox, Post, Subscriber, SubscriberStatus, as_utc, stored_id
from digest.subject import subject_for

WELCOME = "welcome"  # the outbox kind
TEMPLATE = "welcome"  # templates/welcome.mjml.j2 and welcome.txt.j2


def queue(session: Session, subscriber_id: int, email: str, now: datetime) -> bool:
    """Queue the subscriber's welcome mail in the session's transaction (the caller commits),
    unless one was queued before: True when this queued it. Two confirmations at once cannot both
    queue one (the UPDATE takes the right to; on PostgreSQL the second waits for the first's row
    lock and then finds welcomed_at set)."""
    taken: int = session.execute(  # type: ignore[attr-defined]  # an UPDATE's result is a CursorResult
        update(Subscriber)
        .where(col(Subscriber.id) == subscriber_id, col(Subscriber.welcomed_at).is_(None))
        .values(welcomed_at=now),
        execution_options={"synchronize_session": False},
    ).rowcount
    if taken:
        outbox.enqueue(session, WELCOME, email, {"subscriber_id": subscriber_id}, now)
    return bool(taken)


def content(session: Session, topics: Sequence[str] | None, newest: int, order: Sequence[str],
            now: datetime, cadence: str = MAIN_CADENCE) -> EditionView:
    """What a welcome shows a reader who chose `topics` (None: all) and gets `cadence`'s editions
    (a stored key): the latest published edition of that cadence (of the main one while it has
    none: a new cadence starts where the main one's last edition ended) in sections among them,
    else (nothing published yet) the newest `newest` posts among them."""
    chosen = None if topics is None else frozenset(topics)
    latest = archive.published(session, limit=1, cadence=cadence)
    if not latest and cadence != MAIN_CADENCE:
        latest = archive.published(session, limit=1)
    if latest:
        return editions.edition_view(session, latest[0], order).only(chosen)
    query = select(Post).order_by(col(Post.published_at).desc().nulls_last(), col(Post.first_seen_at).desc())
    if chosen is not None:
        query = query.where(col(Post.category).in_(sorted(chosen)))
    return editions.view(session.exec(query.limit(newest)).all(), None, now, order)


class WelcomeMail:
    """The outbox kind "welcome". Not sent to an address that was erased or changed since, or to a
    reader who left or paused before it went out."""

    def __init__(self, welcome: WelcomeSettings, variants: VariantSettings, renderer: Renderer,
                 signer: DKIMSigner | None, links: Links, clock: Clock, cadences: Cadences):
        self.welcome = welcome
        self.cadences = cadences
        self.variants = variants
        self.renderer = renderer
        self.signer = signer
        self.links = links
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, links: Links, clock: Clock, renderer: Renderer) -> WelcomeMail:
        variants = VariantSettings.from_settings(settings)
        return cls(settings.welcome, variants, renderer, variants.signer(), links, clock,
                   Cadences(settings.schedule))

    def envelope(self, session: Session, row: Outbox) -> Envelope | None:
        sub = session.get(Subscriber, outbox.payload(row)["subscriber_id"], populate_existing=True)
        if sub is None or sub.email != row.recipient:
            return None
        if sub.status != SubscriberStatus.active or sub.paused:
            return None
        nl = self.variants.newsletter
        now = as_utc(self.clock())
        view = content(session, sub.topics, self.welcome.newest_posts, self.variants.sections, now,
                       self.cadences.of(sub.cadence).key)
        subject = subject_for(self.welcome.subject, nl.name, view.post_count, view.number, now)
        rendered = render_fitted(self.renderer, view, subject, nl, now, self.signer, TEMPLATE)
        token = self.links.subscriber_token(stored_id(sub), sub.email)
        message_id = f"<welcome.{sub.id}.{secrets.token_hex(4)}@{nl.domain}>"
        data = message_from(rendered, nl, now, self.signer).for_recipient(
            Recipient(sub.email, sub.name, self.links.unsubscribe_url(token), self.links.preferences_url(token),
                      message_id)
        )
        return Envelope(nl.from_address, sub.email, data, tag=row.id)

    def failed(self, session: Session, row: Outbox) -> None:
        """Nothing to undo: a welcome that could not be delivered is not tried again."""
