"""Service: the public archive — editions that went out, each as a web page without personal links,
and the newest of them as an Atom feed (`/archive.atom`; another cadence's at `/archive/NAME.atom`)
for feed readers."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from markupsafe import Markup
from sqlalchemy import ColumnElement, exists, or_
from sqlmodel import Session, col, select

from digest.content.editions import edition_view
from digest.content.render import Renderer
from digest.store.models import MAIN_CADENCE, Delivery, DeliveryStatus, Edition, EditionStatus, as_utc

# Entries in the feed: the newest editions only. A reader polls it every few minutes to hours and
# keeps what it has seen; 20 is five months of a weekly digest, ~150-300 KB (an edition's body
# is 7-15 KB of inline-styled tables), and ~3 ms of MJML each to render.
FEED_EDITIONS = 20

ATOM = "http://www.w3.org/2005/Atom"
ATOM_MEDIA_TYPE = "application/atom+xml"

# The email's own markup, so these are MJML's tags: every piece of data in it was escaped by Jinja
# (a "</body>" in a post title is "&lt;/body&gt;" there).
_BODY = re.compile(r"<body\b[^>]*>(.*)</body>", re.S | re.I)
_HEAD_END = "</head>"
# Characters XML 1.0 cannot carry, even escaped (C0 controls but tab/LF/CR, surrogates, U+FFFE/F).
_NOT_IN_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _published() -> ColumnElement[bool]:
    """Editions that reached someone: finished, or at least one delivery sent (a reader may hold
    its "View in browser" link while the rest is still going out)."""
    some_sent = exists().where(col(Delivery.edition_id) == col(Edition.id), col(Delivery.status) == DeliveryStatus.sent)
    return or_(col(Edition.status) == EditionStatus.sent, some_sent)


def published(session: Session, limit: int | None = None, *, cadence: str = MAIN_CADENCE) -> list[Edition]:
    """The published editions of `cadence` (a stored key), newest first (the newest `limit` of them)."""
    query = select(Edition).where(col(Edition.cadence) == cadence, _published()).order_by(col(Edition.number).desc())
    if limit is not None:
        query = query.limit(limit)
    return list(session.exec(query).all())


def find(session: Session, number: int, cadence: str = MAIN_CADENCE) -> Edition | None:
    return session.exec(
        select(Edition).where(col(Edition.cadence) == cadence, Edition.number == number, _published())
    ).first()


def page(session: Session, edition: Edition, renderer: Renderer, sections: Sequence[str]) -> str:
    """The edition as the email showed it (sections in the configured order: digest.sections),
    with every section and no personal link, and the archive's feed named in its head."""
    html = _email(session, edition, renderer, sections)
    feed_link = Markup('<link rel="alternate" type="{}" title="{}" href="{}">').format(
        ATOM_MEDIA_TYPE, renderer.newsletter_name, renderer.urls.archive_feed_of(edition.cadence)
    )
    return html.replace(_HEAD_END, str(feed_link) + _HEAD_END, 1)


class AtomFeed(NamedTuple):
    document: bytes  # UTF-8 XML
    updated: datetime  # the newest edition's date (now, for an empty archive)


def feed(session: Session, renderer: Renderer, sections: Sequence[str], now: datetime,
         limit: int = FEED_EDITIONS, *, cadence: str = MAIN_CADENCE, title: str | None = None) -> AtomFeed:
    """The newest `limit` published editions of `cadence` (a stored key) as an Atom 1.0 feed (RFC
    4287), newest first, titled `title` (the newsletter's name by default). Each entry's content is
    the body of the edition's archive page: the same HTML, without the head (MJML's <style> and
    Outlook <meta>, which a feed reader drops anyway)."""
    urls = renderer.urls
    feed_url = urls.archive_feed_of(cadence)
    editions = published(session, limit, cadence=cadence)
    updated = as_utc(editions[0].created_at) if editions else now

    # Unqualified names under a default namespace declared on the root (ElementTree's
    # default_namespace refuses unqualified attributes such as rel and href).
    root = ET.Element("feed", xmlns=ATOM)
    # The ids are the permalinks (RFC 4287 4.2.6 takes any IRI): stable for as long as public_url
    # is, as a tag: URI built from it would be.
    _text(root, "id", feed_url)
    _text(root, "title", title or renderer.newsletter_name)
    _text(root, "updated", _timestamp(updated))
    _link(root, "self", feed_url, ATOM_MEDIA_TYPE)
    _link(root, "alternate", urls.archive_list_url(cadence), "text/html")
    _text(ET.SubElement(root, "author"), "name", renderer.newsletter_name)
    for edition in editions:
        entry = ET.SubElement(root, "entry")
        url = urls.archive_url(edition.number, cadence)
        date = _timestamp(as_utc(edition.created_at))  # the date the archive page shows
        _text(entry, "id", url)
        _text(entry, "title", edition.subject)
        _text(entry, "published", date)
        _text(entry, "updated", date)
        _link(entry, "alternate", url, "text/html")
        _text(entry, "content", _body(_email(session, edition, renderer, sections)), type="html")
    document = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return AtomFeed(document, updated)


def _email(session: Session, edition: Edition, renderer: Renderer, sections: Sequence[str]) -> str:
    view = edition_view(session, edition, sections)
    return renderer.render(view, edition.subject, personal=False).html


def _body(html: str) -> str:
    """What is inside the document's <body> (the whole of `html` if a template of one's own made
    something without one)."""
    match = _BODY.search(html)
    return (match.group(1) if match else html).strip()


def _text(parent: ET.Element, tag: str, value: str, **attributes: str) -> None:
    # ElementTree escapes the text; it would write the characters XML forbids as they are.
    ET.SubElement(parent, tag, attributes).text = _NOT_IN_XML.sub("", value)


def _link(parent: ET.Element, rel: str, href: str, media_type: str) -> None:
    ET.SubElement(parent, "link", rel=rel, href=href, type=media_type)


def _timestamp(value: datetime) -> str:
    """RFC 3339, in UTC: 2026-12-03T09:00:00Z."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")
