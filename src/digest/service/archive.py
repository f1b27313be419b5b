"""Service: the public archive — editions that went out, each as a web page without personal links."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, exists, or_
from sqlmodel import Session, col, select

from digest.content.editions import edition_view
from digest.content.render import Renderer
from digest.store.models import Delivery, DeliveryStatus, Edition, EditionStatus


def _published() -> ColumnElement[bool]:
    """Editions that reached someone: finished, or at least one delivery sent (a reader may hold
    its "View in browser" link while the rest is still going out)."""
    some_sent = exists().where(col(Delivery.edition_id) == col(Edition.id), col(Delivery.status) == DeliveryStatus.sent)
    return or_(col(Edition.status) == EditionStatus.sent, some_sent)


def published(session: Session) -> list[Edition]:
    """The published editions, newest first."""
    return list(session.exec(select(Edition).where(_published()).order_by(col(Edition.number).desc())).all())


def find(session: Session, number: int) -> Edition | None:
    return session.exec(select(Edition).where(Edition.number == number, _published())).first()


def page(session: Session, edition: Edition, renderer: Renderer, sections: Sequence[str]) -> str:
    """The edition as the email showed it (sections in the configured order: digest.sections),
    with every section and no personal link."""
    view = edition_view(session, edition, sections)
    return renderer.render(view, edition.subject, personal=False).html
