"""Edition -> MessageTemplate: Jinja2 templates (MJML for the HTML part, plain text for the other).

MJML is compiled once per edition variant (a few times for a variant too large for one email:
see ``Renderer.render_within``). Per-subscriber values are left in the output as placeholders
(``PLACEHOLDERS``) and filled in by ``message.MessageTemplate`` for each recipient.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jinja2
from mjml import mjml2html

from digest.config import Settings
from digest.content.editions import EditionView, Section
from digest.content.images import shown_size, web_url
from digest.content.plaintext import (
    AUTHOR_LIMIT,
    CATEGORY_LIMIT,
    TITLE_LIMIT,
    clean,
    excerpt,
    hides_characters,
    shorten,
)
from digest.links import PublicUrls
from digest.store.models import Post

log = logging.getLogger(__name__)

# Shorter excerpts tried, in words, before an edition too large for one email loses posts.
SHORTER_EXCERPTS = (30, 15)

# Placeholder -> the per-recipient field that replaces it. Plain ASCII letters, so neither
# Jinja's autoescape nor MJML alters them.
PLACEHOLDERS = {
    "XDIGESTUNSUBSCRIBEURLX": "unsubscribe_url",
    "XDIGESTPREFERENCESURLX": "preferences_url",
    "XDIGESTNAMEX": "name",
}
_FIELD_TO_PLACEHOLDER = {v: k for k, v in PLACEHOLDERS.items()}


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str
    more: int = 0  # posts left out to keep the message small: "and N more on the web"


@dataclass(frozen=True)
class ImageView:
    """A post's lead image as the email shows it: `width` at most the card's (images.CARD_WIDTH),
    `height` in proportion, None when the feed gave no size (the mail program then finds it)."""

    url: str
    width: int
    height: int | None

    @classmethod
    def of(cls, post: Post) -> ImageView | None:
        # Checked again: a row stored by an older version obeys the same rules.
        url = web_url(post.image_url) if post.image_url else None
        if url is None:
            return None
        width, height = shown_size(post.image_width, post.image_height if post.image_width else None)
        return cls(url, width, height)


@dataclass(frozen=True)
class PostView:
    """A post as an edition shows it. Text is cleaned and capped again here (feeds.parse already
    did when it was stored), so rows stored by an older version obey the same rules; a link
    holding an invisible character is dropped (the templates then show the title unlinked)."""

    title: str
    display_title: str
    category: str
    url: str
    author: str | None
    published_at: datetime | None
    first_seen_at: datetime
    excerpt: str
    image: ImageView | None  # shown when `images` is "lead" (the bundled templates ask)

    @classmethod
    def of(cls, post: Post, excerpt_words: int | None = None) -> PostView:
        text = clean(post.excerpt)
        return cls(
            title=shorten(clean(post.title), TITLE_LIMIT),
            display_title=shorten(clean(post.display_title), TITLE_LIMIT),
            category=shorten(clean(post.category), CATEGORY_LIMIT),
            url="" if hides_characters(post.url) else post.url,
            author=shorten(clean(post.author), AUTHOR_LIMIT) if post.author else None,
            published_at=post.published_at,
            first_seen_at=post.first_seen_at,
            excerpt=text if excerpt_words is None else excerpt(text, excerpt_words),
            image=ImageView.of(post),
        )


@dataclass(frozen=True)
class ShownSection:
    """A Section as an edition shows it: its name cleaned and capped, its posts as PostViews."""

    name: str
    posts: tuple[PostView, ...]


def shown(sections: tuple[Section, ...], excerpt_words: int | None, limit: int | None) -> tuple[ShownSection, ...]:
    """`sections` as PostViews: at most `limit` posts (None: all), the first ones in reading order."""
    out = []
    room = limit
    for section in sections:
        posts = section.posts if room is None else section.posts[:room]
        if not posts:
            break
        name = shorten(clean(section.name), CATEGORY_LIMIT)
        out.append(ShownSection(name, tuple(PostView.of(p, excerpt_words) for p in posts)))
        if room is not None:
            room -= len(posts)
    return tuple(out)


def bundled_templates_dir() -> Path:
    """Templates shipped with the package (the wheel's digest/templates), else the source
    checkout's templates/ (this file is src/digest/content/render.py)."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "templates", package.parents[1] / "templates"):
        if (candidate / "edition.mjml.j2").is_file():
            return candidate
    raise FileNotFoundError("bundled templates not found")


def template_file(override_dir: Path | None, name: str) -> bytes:
    """The bytes of template file `name` (e.g. "web/style.css"): override_dir's, else the bundled
    one; b"" when neither has it."""
    for base in (override_dir, bundled_templates_dir()):
        if base is not None and (base / name).is_file():
            return (base / name).read_bytes()
    return b""


def environment(override_dir: Path | None = None) -> jinja2.Environment:
    dirs = [str(override_dir)] if override_dir else []
    dirs.append(str(bundled_templates_dir()))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(dirs),
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html", "mjml", "html.j2", "mjml.j2"),
            default_for_string=False,
            default=False,
        ),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["longdate"] = _longdate
    return env


def _longdate(value: datetime | None) -> str:
    return f"{value:%B} {value.day}, {value.year}" if value else ""


class Renderer:
    """Renders EditionViews with one template environment (compiled templates are cached)."""

    def __init__(self, *, newsletter_name: str, public_url: str, templates_dir: Path | None = None,
                 images: str = "lead"):
        self.env = environment(templates_dir)
        self.newsletter_name = newsletter_name
        self.urls = PublicUrls(public_url)
        self.images = images  # edition.images: "lead" or "none", for the templates

    @classmethod
    def from_settings(cls, settings: Settings) -> Renderer:
        """The renderer of the configured newsletter: its name, public URL and templates."""
        return cls(
            newsletter_name=settings.newsletter.name,
            public_url=settings.newsletter.public_url,
            templates_dir=settings.templates_dir,
            images=settings.edition.images,
        )

    def render(
        self,
        view: EditionView,
        subject: str,
        *,
        personal: bool = True,
        excerpt_words: int | None = None,
        post_limit: int | None = None,
        template: str = "edition",
    ) -> Rendered:
        """personal=False renders the web/archive version: no personal links or names.
        `excerpt_words` shortens the excerpts; `post_limit` shows only the first posts, and a
        link to the rest on the web (the edition's archive page). `template` names the pair
        `{template}.mjml.j2` and `{template}.txt.j2` ("welcome": the welcome mail)."""
        sections = shown(view.sections, excerpt_words, post_limit)
        more = view.post_count - sum(len(s.posts) for s in sections)
        urls = self.urls
        view_url = urls.archive_url(view.number, view.cadence) if view.number else None
        ctx = {
            # public_url stays for templates of one's own that build links from it
            "newsletter": {"name": self.newsletter_name, "public_url": urls.public_url},
            "edition": view,
            "sections": sections,
            "subject": subject,
            "view_url": view_url,
            "more": more,
            # A preview of the newest posts (--latest) has no edition page: the archive, then.
            "more_url": view_url or urls.archive_index_url,
            "archive_index_url": urls.archive_index_url,
            "subscribe_url": urls.subscribe_url,
            "personal": personal,
            "images": self.images,
            "unsubscribe_url": _FIELD_TO_PLACEHOLDER["unsubscribe_url"] if personal else None,
            "preferences_url": _FIELD_TO_PLACEHOLDER["preferences_url"] if personal else None,
            "name": _FIELD_TO_PLACEHOLDER["name"] if personal else None,
        }
        mjml_source = self.env.get_template(f"{template}.mjml.j2").render(ctx)
        html = compile_mjml(mjml_source)
        text = self.env.get_template(f"{template}.txt.j2").render(ctx)
        return Rendered(subject=subject, html=html, text=text, more=more)

    def render_within(self, view: EditionView, subject: str, size: Callable[[Rendered], int], budget: int,
                      template: str = "edition") -> Rendered:
        """The email of `view` with `size(rendered)` at most `budget`: as render() makes it when
        it fits (one MJML compilation, as always), else with shorter excerpts (SHORTER_EXCERPTS),
        else with the first posts only, as many as fit, and "and N more on the web"."""
        rendered = self.render(view, subject, template=template)
        measured = size(rendered)
        if measured <= budget:
            return rendered
        for words in SHORTER_EXCERPTS:
            rendered = self.render(view, subject, excerpt_words=words, template=template)
            measured = size(rendered)
            if measured <= budget:
                return rendered
        words = SHORTER_EXCERPTS[-1]
        count = view.post_count
        empty = self.render(view, subject, excerpt_words=words, post_limit=0, template=template)
        fixed = size(empty)  # header and footer: what a post-less email weighs
        if fixed > budget:
            log.warning("edition %s: even without posts the email is %d bytes (budget %d): look at the templates",
                        view.number, fixed, budget)
            return empty
        while count > 0:
            # Posts weigh about the same: take as many as the room left holds at their average
            # weight, and at least one fewer than the last try (so this ends).
            per_post = max(1, (measured - fixed) / count)
            count = min(count - 1, int((budget - fixed) / per_post))
            if count <= 0:
                break
            rendered = self.render(view, subject, excerpt_words=words, post_limit=count,
                                    template=template)
            measured = size(rendered)
            if measured <= budget:
                log.info("edition %s: the email shows %d of %d posts (%d bytes; all of them would be over %d)",
                         view.number, count, view.post_count, measured, budget)
                return rendered
        return empty


def compile_mjml(source: str) -> str:
    return mjml2html(source)
