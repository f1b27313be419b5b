"""Service: the subscriber list — add, import, export, list, unsubscribe, erase."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from .errors import InvalidAddress, NotFound
from .message import one_line
from .models import Delivery, Outbox, Subscriber, SubscriberStatus, as_utc

Clock = Callable[[], datetime]


def normalize_email(address: str, *, check_deliverability: bool = False) -> str:
    """A valid address in the one form we store (lower case); InvalidAddress otherwise."""
    address = (address or "").strip()
    if not address or any(c in address for c in "\r\n\x00"):
        raise InvalidAddress(f"not a valid email address: {address!r}")
    from email_validator import EmailNotValidError, validate_email  # here: `digest send` never needs it

    try:
        info = validate_email(address, check_deliverability=check_deliverability)
    except EmailNotValidError as exc:
        raise InvalidAddress(f"not a valid email address: {address!r} ({exc})") from None
    return info.normalized.lower()


def clean_name(name: str | None) -> str | None:
    name = one_line(name or "")[:200]
    return name or None


def find(session: Session, email: str) -> Subscriber | None:
    try:
        email = normalize_email(email)
    except InvalidAddress:
        email = email.strip().lower()
    return session.exec(select(Subscriber).where(Subscriber.email == email)).first()


def get(session: Session, email: str) -> Subscriber:
    sub = find(session, email)
    if sub is None:
        raise NotFound(f"no subscriber {email}")
    return sub


def add(session: Session, email: str, clock: Clock, *, name: str | None = None) -> tuple[Subscriber, bool]:
    """Add (or reactivate) a confirmed subscriber. Returns (subscriber, created)."""
    now = as_utc(clock())
    address = normalize_email(email)
    sub = session.exec(select(Subscriber).where(Subscriber.email == address)).first()
    created = sub is None
    if sub is None:
        sub = Subscriber(email=address, created_at=now)
    if sub.status != SubscriberStatus.active:
        sub.status = SubscriberStatus.active
        sub.confirmed_at = now
        sub.unsubscribed_at = None
    if name is not None:
        sub.name = clean_name(name)
    session.add(sub)
    session.commit()
    return sub, created


@dataclass
class ImportReport:
    imported: int = 0
    skipped: int = 0  # already on the list
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)


def import_csv(session: Session, stream: io.TextIOBase, clock: Clock) -> ImportReport:
    """Rows `email[,name]`, an optional header row. Bad rows are reported by line; the rest imported."""
    now = as_utc(clock())
    report = ImportReport()
    existing = set(session.exec(select(Subscriber.email)).all())
    reader = csv.reader(stream)
    pending = []
    for row in reader:
        line = reader.line_num
        if not row or not any(cell.strip() for cell in row):
            continue
        raw = row[0].strip()
        if line == 1 and raw.lower() in ("email", "e-mail", "email address", "address"):
            continue
        try:
            address = normalize_email(raw)
        except InvalidAddress as exc:
            report.errors.append((line, str(exc)))
            continue
        if address in existing:
            report.skipped += 1
            continue
        existing.add(address)
        name = clean_name(row[1]) if len(row) > 1 else None
        pending.append(
            Subscriber(email=address, name=name, status=SubscriberStatus.active, created_at=now, confirmed_at=now)
        )
        report.imported += 1
        if len(pending) >= 1000:
            session.add_all(pending)
            session.commit()
            pending = []
    session.add_all(pending)
    session.commit()
    return report


def export_rows(session: Session, status: SubscriberStatus | None = None) -> Iterator[list[str]]:
    yield ["email", "name", "status", "created_at", "confirmed_at", "categories"]
    for sub in iterate(session, status):
        yield [
            sub.email,
            sub.name or "",
            sub.status.value,
            sub.created_at.isoformat(sep=" ", timespec="seconds"),
            sub.confirmed_at.isoformat(sep=" ", timespec="seconds") if sub.confirmed_at else "",
            sub.categories or "",
        ]


def iterate(session: Session, status: SubscriberStatus | None = None, batch: int = 1000) -> Iterator[Subscriber]:
    """Subscribers in id order, loaded a batch at a time."""
    last = 0
    while True:
        stmt = select(Subscriber).where(col(Subscriber.id) > last).order_by(Subscriber.id).limit(batch)
        if status is not None:
            stmt = stmt.where(Subscriber.status == status)
        rows = session.exec(stmt).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].id


def unsubscribe(session: Session, sub: Subscriber, clock: Clock) -> bool:
    """Unsubscribe, keeping history. False when already unsubscribed."""
    if sub.status == SubscriberStatus.unsubscribed:
        return False
    sub.status = SubscriberStatus.unsubscribed
    sub.unsubscribed_at = as_utc(clock())
    session.add(sub)
    session.commit()
    return True


def erase(session: Session, sub: Subscriber) -> None:
    """Erase a person's data: the subscriber row goes; their deliveries stay, anonymous."""
    session.execute(update(Delivery).where(Delivery.subscriber_id == sub.id).values(subscriber_id=None, last_error=None))
    session.execute(delete(Outbox).where(Outbox.recipient == sub.email))  # queued mail names the address
    session.delete(sub)
    session.commit()
