"""The render-once cache: one MessageTemplate per variant of an edition, a variant being a category
choice and, for readers who just changed cadence, the point their catch-up starts from.

Rendering (Jinja2 + MJML) is the expensive step, so each variant is rendered once (the parent of a
sender pool renders every variant the pending deliveries need and hands the results over) and
every recipient's copy is then filled in from its template (`MessageTemplate.wire_for`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from digest.config import DKIMSettings, NewsletterSettings, Settings
from digest.content.editions import EditionView
from digest.content.plaintext import NAME_LIMIT
from digest.content.render import Rendered, Renderer
from digest.links import Links
from digest.mail.dkim import DKIMSigner
from digest.mail.message import MessageTemplate, Recipient, default_list_id
from digest.store.models import parse_topics

# Gmail clips a message larger than 102 KB ("[Message clipped]"), and the unsubscribe link at
# the end goes with the rest. It counts the message as it arrives, so the headers added on the way
# (Received, Authentication-Results, ARC: 2-3 KB at Gmail) count too: every message is built to
# stay within MESSAGE_BUDGET bytes for any recipient (see Renderer.render_within).
GMAIL_CLIP_BYTES = 102_000
MESSAGE_BUDGET = GMAIL_CLIP_BYTES - 4_000

# A variant: (the categories chosen among the message's posts, None: all of them; the catch-up
# point, Delivery.catch_up_from, None: the edition as it is). The cadence is the edition's own, so
# it needs no place in the key; the catch-up point is there only for the first edition after a
# change of cadence, whose posts differ.
VariantKey = tuple[frozenset[str] | None, int | None]
# The rendered message of each variant (None: nothing in it for that choice).
RenderedVariants = dict[VariantKey, Rendered | None]


class Variants:
    """One MessageTemplate per variant, built on first use from a Rendered edition.

    `view_loader(catch_up_from)` gives the posts of the edition (None) or of a catch-up (see
    editions.edition_view). `rendered` can be filled in advance (the parent of a sender pool
    renders every variant its pending deliveries need, once) and handed to other processes, which
    then only build templates from it (quoted-printable, ~ms)."""

    def __init__(self, view_loader: Callable[[int | None], EditionView], subject: str,
                 newsletter: NewsletterSettings, renderer_factory: Callable[[], Renderer], date: datetime,
                 signer: DKIMSigner | None = None, rendered: RenderedVariants | None = None):
        self._view_loader = view_loader
        self._views: dict[int | None, EditionView] = {}
        self.subject = subject
        self.newsletter = newsletter
        self._renderer_factory = renderer_factory
        self._renderer: Renderer | None = None
        self.date = date
        self.signer = signer
        self.rendered: RenderedVariants = dict(rendered or {})
        self._cache: dict[VariantKey, MessageTemplate | None] = {}
        # by the subscriber's raw `topics` text: the hot path of a sender, one lookup a message
        self._by_text: dict[str | None, MessageTemplate | None] = {}
        self._catch_ups: dict[tuple[str | None, int], MessageTemplate | None] = {}

    def view(self, catch_up_from: int | None = None) -> EditionView:
        if catch_up_from not in self._views:
            self._views[catch_up_from] = self._view_loader(catch_up_from)
        return self._views[catch_up_from]

    def key(self, categories: frozenset[str] | None, catch_up_from: int | None = None) -> VariantKey:
        view = self.view(catch_up_from)
        chosen = None if categories is None else (categories & view.categories)
        return (None if chosen == view.categories else chosen), catch_up_from

    def render(self, key: VariantKey) -> Rendered | None:
        if key not in self.rendered:
            categories, catch_up_from = key
            v = self.view(catch_up_from).only(categories)
            if not v.sections:
                self.rendered[key] = None
            else:
                if self._renderer is None:
                    self._renderer = self._renderer_factory()
                self.rendered[key] = render_fitted(self._renderer, v, self.subject, self.newsletter, self.date,
                                                   self.signer)
        return self.rendered[key]

    def for_categories(self, categories: frozenset[str] | None,
                       catch_up_from: int | None = None) -> MessageTemplate | None:
        key = self.key(categories, catch_up_from)
        if key not in self._cache:
            rendered = self.render(key)
            self._cache[key] = (None if rendered is None
                                else message_from(rendered, self.newsletter, self.date, self.signer))
        return self._cache[key]

    def for_text(self, topics: str | None, catch_up_from: int | None = None) -> MessageTemplate | None:
        """for_categories() of a subscriber's raw `topics` column, cached by its text (which is
        the same for the same choice: see models.topics_text)."""
        if catch_up_from is None:
            try:
                return self._by_text[topics]
            except KeyError:
                m = self._by_text[topics] = self.for_categories(parse_topics(topics))
                return m
        try:
            return self._catch_ups[topics, catch_up_from]
        except KeyError:
            m = self._catch_ups[topics, catch_up_from] = self.for_categories(parse_topics(topics), catch_up_from)
            return m


def signer_for(dkim: DKIMSettings, key_path: Path | None) -> DKIMSigner | None:
    """The DKIM signer `[dkim]` configures, or None (load_settings() already checked the key)."""
    if not dkim.enabled:
        return None
    return DKIMSigner.from_file(dkim.domain, dkim.selector, key_path)  # type: ignore[arg-type]


def message_from(rendered: Rendered, newsletter: NewsletterSettings, date: datetime,
                 signer: DKIMSigner | None) -> MessageTemplate:
    nl = newsletter
    return MessageTemplate(
        rendered,
        from_=nl.from_,
        list_id=nl.list_id or default_list_id(nl.name, nl.domain),
        date=date,
        reply_to=nl.reply_to,
        feedback_id=nl.feedback_id,
        signer=signer,
    )


def build_message(renderer: Renderer, view: EditionView, subject: str, newsletter: NewsletterSettings,
                  date: datetime, signer: DKIMSigner | None) -> MessageTemplate:
    return message_from(render_fitted(renderer, view, subject, newsletter, date, signer), newsletter, date, signer)


def render_fitted(renderer: Renderer, view: EditionView, subject: str, newsletter: NewsletterSettings,
                  date: datetime, signer: DKIMSigner | None, template: str = "edition") -> Rendered:
    """`view` rendered so that the largest copy anyone can get stays within MESSAGE_BUDGET (with
    `template`: see Renderer.render)."""
    largest = largest_recipient(newsletter)

    def size(rendered: Rendered) -> int:
        return len(message_from(rendered, newsletter, date, signer).for_recipient(largest))

    return renderer.render_within(view, subject, size, MESSAGE_BUDGET, template)


def largest_recipient(newsletter: NewsletterSettings) -> Recipient:
    """The recipient with the largest copy: a name of NAME_LIMIT characters of 4 UTF-8 bytes (12
    bytes each in quoted-printable), the longest address (254 characters), and ids in the links
    and the Message-ID as long as they get."""
    links = Links(newsletter.secret_key, newsletter.public_url)
    email = "x" * 64 + "@" + "y" * 184 + ".test"
    token = links.subscriber_token(2**62, email)
    message_id = f"<{2**62}.{2**62}.ffffffff@{newsletter.domain}>"
    return Recipient(email, "\U0001F4EC" * NAME_LIMIT, links.unsubscribe_url(token), links.preferences_url(token),
                     message_id)


@dataclass(frozen=True)
class VariantSettings:
    """What building an edition's variants reads from the configuration. Picklable: a sender
    process builds its own renderer and signer from it."""

    newsletter: NewsletterSettings  # From, Reply-To, List-Id, Feedback-ID; the links' key and URL
    sections: tuple[str, ...]  # the order of the edition's sections
    templates_dir: Path | None
    dkim: DKIMSettings
    dkim_key_path: Path | None
    images: str = "lead"  # edition.images: the same for every reader, so no part of a variant's key

    @classmethod
    def from_settings(cls, s: Settings) -> VariantSettings:
        return cls(s.newsletter, tuple(s.edition.sections), s.templates_dir, s.dkim, s.dkim_key_path,
                   s.edition.images)

    def renderer(self) -> Renderer:
        return Renderer(newsletter_name=self.newsletter.name, public_url=self.newsletter.public_url,
                        templates_dir=self.templates_dir, images=self.images)

    def signer(self) -> DKIMSigner | None:
        return signer_for(self.dkim, self.dkim_key_path)
