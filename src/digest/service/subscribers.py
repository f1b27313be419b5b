"""Service: the subscriber list — add, import, export, list, unsubscribe, erase."""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from digest.clock import Clock
from digest.content.plaintext import NAME_LIMIT, clean, shorten
from digest.delivery import webhooks
from digest.delivery.webhooks import NO_EVENTS, Events
from digest.errors import DigestError, InvalidAddress, NotFound
from digest.service import cadences, welcome
from digest.service.cadences import Cadence, Cadences
from digest.store.models import (
    MAIN_CADENCE,
    Delivery,
    Outbox,
    Subscriber,
    SubscriberStatus,
    as_utc,
    stored_id,
    topics_text,
)


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


def needs_smtputf8(address: str) -> bool:
    """A non-ASCII address (in its local part or its domain) goes out only through a relay that
    offers SMTPUTF8 (RFC 6531); to one that does not, its deliveries fail with 553 5.6.7."""
    return not address.isascii()


def clean_name(name: str | None) -> str | None:
    """A name as stored: one line, no invisible characters, at most NAME_LIMIT characters."""
    return shorten(clean(name or ""), NAME_LIMIT) or None


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


def add(session: Session, email: str, clock: Clock, *, name: str | None = None,
        welcome_mail: bool = False, events: Events = NO_EVENTS, cadence: Cadence | None = None
        ) -> tuple[Subscriber, bool]:
    """Add (or reactivate) a confirmed subscriber, getting `cadence` if given (a new one: the main
    cadence otherwise). Returns (subscriber, created). One who was not active is reported as
    `subscriber.confirmed`. With `welcome_mail`, their welcome mail is queued in the same
    transaction, unless they had one already (welcome.queue; `subscriber.welcomed_at` says when)."""
    now = as_utc(clock())
    address = normalize_email(email)
    sub = session.exec(select(Subscriber).where(Subscriber.email == address)).first()
    created = sub is None
    if sub is None:
        sub = Subscriber(email=address, created_at=now)
    # Added by the operator is confirmed, as imported is: now, for a new address as for a returning one.
    confirmed = created or sub.status != SubscriberStatus.active
    if confirmed:
        sub.status = SubscriberStatus.active
        sub.confirmed_at = now
        sub.unsubscribed_at = sub.bounced_at = None
    if name is not None:
        sub.name = clean_name(name)
    if cadence is not None:
        cadences.choose(sub, cadence, now)
    session.add(sub)
    if confirmed or welcome_mail:
        session.flush()  # the new subscriber's id, for the event and the welcome
    if confirmed:
        events.emit(session, "subscriber.confirmed", events.subscriber_data(sub))
    if welcome_mail:
        welcome.queue(session, stored_id(sub), sub.email, now)
    session.commit()
    return sub, created


@dataclass
class ImportReport:
    imported: int = 0
    skipped: int = 0  # already on the list
    smtputf8: int = 0  # imported addresses that need a relay offering SMTPUTF8 (see needs_smtputf8)
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)


def read_csv(path: Path) -> str:
    """The text of a CSV file to import (see csv_text)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DigestError(f"cannot read {path}: {exc.strerror}") from None
    return csv_text(data, str(path))


def csv_text(data: bytes, source: str) -> str:
    """The text of a CSV file to import, `source` naming it in errors. One that is not UTF-8 (a
    spreadsheet's Latin-1 or Windows-1252 export, say) is refused whole, naming the line, rather
    than imported with misread names: guessing the encoding would be wrong for some files."""
    data = data.removeprefix(codecs.BOM_UTF8)  # Excel's "CSV UTF-8" starts with one
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DigestError(
            f"{source}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x}); nothing imported:"
            f" save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 {Path(source).name} > utf8.csv)"
        ) from None


def import_csv(session: Session, stream: io.TextIOBase, clock: Clock, *, source: str = "CSV",
               on_rows: Callable[[int], None] = lambda rows: None, cadence: str = MAIN_CADENCE) -> ImportReport:
    """Rows `email[,name]`, an optional header row; the new subscribers get `cadence` (a stored
    key). Bad rows are reported by line; the rest imported,
    in one transaction: a file that cannot be read to its end (or a full disk) imports nothing.
    `source` (the file) goes into the message of such an error. `on_rows(rows read)` is called every
    1,000 rows, for the progress of a long import."""
    now = as_utc(clock())
    report = ImportReport()
    existing = set(session.exec(select(Subscriber.email)).all())
    for read, (line, row) in enumerate(_rows(stream, source), 1):
        if read % 1000 == 0:
            on_rows(read)
        if not row or not any(cell.strip() for cell in row):
            continue
        raw = from_text_cell(row[0].strip())
        if line == 1 and raw.lower() in ("email", "e-mail", "email address", "address"):
            continue
        # A third column (a spreadsheet's "city", say) is not silently dropped: what the columns
        # mean is a guess, so the row is reported; empty trailing cells are only commas.
        if len(row) > 2 and any(cell.strip() for cell in row[2:]):
            report.errors.append((line, f"{len(row)} columns; expected email[,name]"))
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
        name = clean_name(from_text_cell(row[1].strip())) if len(row) > 1 else None
        sub = Subscriber(email=address, name=name, status=SubscriberStatus.active, created_at=now, confirmed_at=now,
                         cadence=cadence)
        session.add(sub)
        report.imported += 1
        report.smtputf8 += needs_smtputf8(address)
        if report.imported % 1000 == 0:  # written, and let go of, a thousand rows at a time
            session.flush()
            session.expunge_all()
    session.commit()
    return report


def _rows(stream: io.TextIOBase, source: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells); a file the csv module gives up on is a DigestError naming the line."""
    reader = csv.reader(stream)
    try:
        for row in reader:
            yield reader.line_num, row
    except csv.Error as exc:
        raise DigestError(f"{source}:{reader.line_num}: not readable as CSV: {exc}; nothing imported") from None


# A cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection"): a
# reader's name from the public form, or an address (`=`, `+` and `-` may start one), could make
# the operator's spreadsheet fetch a URL or run a command. The export writes such a cell with a
# `'` in front, which spreadsheets read as "text"; the import takes that `'` off again.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def as_text_cell(value: str) -> str:
    """`value` as a CSV cell no spreadsheet runs as a formula."""
    return "'" + value if value.startswith(FORMULA_START) else value


def from_text_cell(cell: str) -> str:
    """A cell as_text_cell wrote (or a spreadsheet saved so) back to its value."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_START) else cell


def export_rows(session: Session, status: SubscriberStatus | None = None,
                offered: Cadences | None = None) -> Iterator[list[str]]:
    """CSV rows. `topics` is the subscriber's choice as a JSON array (a category name may hold a
    comma, so no separator would do), empty for every category; `cadence` the name of theirs (when
    `offered` gives a choice)."""
    choice = offered is not None and offered.choice
    yield ["email", "name", "status", "created_at", "confirmed_at", "topics"] + (["cadence"] if choice else [])
    for sub in iterate(session, status):
        yield [
            as_text_cell(sub.email),
            as_text_cell(sub.name or ""),
            sub.status.value,
            sub.created_at.isoformat(sep=" ", timespec="seconds"),
            sub.confirmed_at.isoformat(sep=" ", timespec="seconds") if sub.confirmed_at else "",
            "" if sub.topics is None else topics_text(sub.topics),
        ] + ([offered.of(sub.cadence).name] if offered is not None and choice else [])


def iterate(session: Session, status: SubscriberStatus | None = None, batch: int = 1000) -> Iterator[Subscriber]:
    """Subscribers in id order, loaded a batch at a time."""
    last = 0
    while True:
        rows = page(session, after=last, limit=batch, status=status)
        if not rows:
            return
        yield from rows
        last = stored_id(rows[-1])


def page(session: Session, *, after: int, limit: int, status: SubscriberStatus | None = None) -> list[Subscriber]:
    """The first `limit` subscribers (of `status`) whose id is above `after`, in id order: a page
    that stays right while subscribers join and leave (keyset pagination)."""
    stmt = select(Subscriber).where(col(Subscriber.id) > after).order_by(col(Subscriber.id)).limit(limit)
    if status is not None:
        stmt = stmt.where(Subscriber.status == status)
    return list(session.exec(stmt).all())


def rename(session: Session, sub: Subscriber, name: str | None) -> None:
    """Set the name a digest greets them by (as clean_name stores it; None or blank: no name)."""
    sub.name = clean_name(name)
    session.add(sub)
    session.commit()


def unsubscribe(session: Session, sub: Subscriber, clock: Clock, events: Events = NO_EVENTS) -> bool:
    """Unsubscribe, keeping history (reported as `subscriber.unsubscribed`). False when already
    unsubscribed."""
    if sub.status == SubscriberStatus.unsubscribed:
        return False
    sub.status = SubscriberStatus.unsubscribed
    sub.unsubscribed_at = as_utc(clock())
    session.add(sub)
    events.emit(session, "subscriber.unsubscribed", events.subscriber_data(sub))
    session.commit()
    return True


def erase(session: Session, sub: Subscriber) -> None:
    """Erase a person's data: the subscriber row goes; their deliveries stay, anonymous."""
    theirs = col(Delivery.subscriber_id) == sub.id
    session.execute(update(Delivery).where(theirs).values(subscriber_id=None, last_error=None))
    session.execute(delete(Outbox).where(col(Outbox.recipient) == sub.email))  # queued mail names the address
    # ... and so does the body of every webhook about them (events.subscriber_data writes it so)
    session.execute(delete(Outbox).where(col(Outbox.kind) == webhooks.KIND, col(Outbox.payload).contains(
        f'"email": {json.dumps(sub.email)}', autoescape=True)))
    session.delete(sub)
    session.commit()
