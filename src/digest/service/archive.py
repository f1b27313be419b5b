"""Service: the public archive — editions that went out, each as a web page without personal links."""

from __future__ import annotations

from sqlalchemy import exists, or_
from sqlmodel import Session, col, select

from digest.config import Settings
from digest.content.editions import edition_view
from digest.store.models import Delivery, DeliveryStatus, Edition, EditionStatus
from digest.content.render import Renderer


def _published():
    """Editions that reached someone: finished, or at least one delivery sent (a reader may hold
    its "View in browser" link while the rest is still going out)."""
    some_sent = exists().where(Delivery.edition_id == Edition.id, Delivery.status == DeliveryStatus.sent)
    return or_(col(Edition.status) == EditionStatus.sent, some_sent)


def published(session: Session) -> list[Edition]:
    """The published editions, newest first."""
    return list(session.exec(select(Edition).where(_published()).order_by(col(Edition.number).desc())).all())


def find(session: Session, number: int) -> Edition | None:
    return session.exec(select(Edition).where(Edition.number == number, _published())).first()


def page(session: Session, edition: Edition, settings: Settings, renderer: Renderer) -> str:
    """The edition as the email showed it, with every section and no personal link."""
    view = edition_view(session, edition, settings.edition.sections)
    return renderer.render(view, edition.subject, personal=False).html
