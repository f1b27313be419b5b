"""/admin/subscribers: the list (search, filters, pages), a subscriber's page, and what
`digest subscribers` does: add, unsubscribe, erase (after a confirmation page), import CSV and
export CSV, each through the same service function (service.subscribers).

Fast at a million subscribers on both databases (docs/web.md#admin), so no page counts the
filtered list or skips rows with OFFSET:

- pages are keyset pages on the id, newest first (`?before=<id>`): 51 rows read for 50 shown, the
  51st saying there is a next page ("Older" rather than a total);
- the status filter reads ix_subscriber_status; "address starts with" (the default search) is a
  range of the address's unique index on SQLite; on PostgreSQL it is `LIKE 'x%'`, which that
  index serves only under the C collation (see `_address_starts_with`);
- what no index serves, "contains" (anywhere in the address or the name), the topic filter and
  the cadence filter (offered when readers have a choice of cadence), looks through at most
  WINDOW subscribers by id a page: the page says which ids it looked through and links to the
  next window, so one request never scans the whole list.
"""

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Path, Query, UploadFile
from fastapi.responses import HTMLResponse, StreamingResponse
from sqlalchemy import ColumnElement, and_, func, or_
from sqlalchemy import select as sql_select  # five columns: more than sqlmodel's select() types
from sqlmodel import Session, col, select
from starlette.exceptions import HTTPException

from digest.content import editions
from digest.content.editions import Readers
from digest.errors import DigestError, InvalidAddress, NotFound
from digest.service import signup
from digest.service import subscribers as subs
from digest.service.admin import overview
from digest.service.admin.accounts import SignedIn
from digest.service.admin.area import MAX_ID, NO_STORE, AdminContext
from digest.store.database import session as new_session
from digest.store.models import Delivery, Edition, Subscriber, SubscriberStatus, stored_id

PAGE = 50  # subscribers a page
WINDOW = 100_000  # subscribers (by id) a "contains" or topic search looks through a page
IMPORT_LIMIT = 5 * 1024 * 1024  # bytes of an uploaded CSV (~100,000 rows); more: `digest subscribers import`
SHOWN_ERRORS = 100  # bad rows of an import listed on the page (all are counted)
SHOWN_DELIVERIES = 50  # a subscriber's newest deliveries, and bounces, on their page


@dataclass(frozen=True)
class Filter:
    """What the list is narrowed to (the query string of the list page)."""

    q: str = ""  # lower case; "" for no search
    contains: bool = False  # q anywhere in the address or the name, rather than at the start of the address
    status: SubscriberStatus | None = None
    topic: str | None = None  # those who get this topic: who chose it, and who chose none (every topic)
    cadence: str = ""  # the name of a cadence: those who get its editions ("": any cadence)
    readers: Readers | None = None  # who gets that cadence's editions

    @property
    def windowed(self) -> bool:
        """Served by no index: looked through WINDOW subscribers a page."""
        return (self.contains and bool(self.q)) or self.topic is not None or self.readers is not None

    def query(self, before: int | None = None) -> dict[str, Any]:
        """The query string of this filter's page starting below id `before`."""
        args: dict[str, Any] = {"q": self.q, "match": "contains" if self.contains else "",
                                "status": self.status.value if self.status else "", "topic": self.topic or "",
                                "cadence": self.cadence}
        if before is not None:
            args["before"] = before
        return {k: v for k, v in args.items() if v != ""}


@dataclass(frozen=True)
class Page:
    subscribers: list[Subscriber]
    next_before: int | None  # `before` of the next page; None: this is the last
    looked_through: tuple[int, int] | None = None  # a windowed page: the ids it looked through (low, high)


def _upper_bound(prefix: str) -> str | None:
    """The least string above every string starting with `prefix` in code point order (None: none is)."""
    last = ord(prefix[-1]) + 1
    if 0xD800 <= last <= 0xDFFF:  # surrogates are no characters
        last = 0xE000
    return prefix[:-1] + chr(last) if last <= 0x10FFFF else None


def _address_starts_with(session: Session, prefix: str) -> ColumnElement[bool]:
    """SQL: the address starts with `prefix`. On SQLite a range of the address's unique index
    (BINARY: code point order; its LIKE ignores case, so would not use the index). On PostgreSQL
    LIKE, right under every collation; its index serves it under the C collation only, otherwise a
    `(email text_pattern_ops)` index would (not made here: see the report of this change)."""
    email = col(Subscriber.email)
    if session.get_bind().dialect.name == "postgresql":
        return email.startswith(prefix, autoescape=True)
    upper = _upper_bound(prefix)
    return and_(email >= prefix, email < upper) if upper else email >= prefix


def search(session: Session, f: Filter, before: int | None = None) -> Page:
    """A page of the subscribers `f` selects, newest first, below id `before`."""
    stmt = select(Subscriber).order_by(col(Subscriber.id).desc()).limit(PAGE + 1)
    if f.status is not None:
        stmt = stmt.where(col(Subscriber.status) == f.status)
    if f.q and f.contains:
        stmt = stmt.where(or_(col(Subscriber.email).contains(f.q, autoescape=True),
                              func.lower(col(Subscriber.name)).contains(f.q, autoescape=True)))
    elif f.q:
        stmt = stmt.where(_address_starts_with(session, f.q))
    if f.topic is not None:
        stmt = stmt.where(or_(col(Subscriber.topics).is_(None),
                              editions.chose_any(session.get_bind().dialect.name, frozenset([f.topic]))))
    if f.readers is not None:
        stmt = stmt.where(f.readers.where())
    if before is not None:
        stmt = stmt.where(col(Subscriber.id) < before)
    if not f.windowed:
        rows = list(session.exec(stmt).all())
        return Page(rows[:PAGE], stored_id(rows[PAGE - 1]) if len(rows) > PAGE else None)
    newest = session.exec(select(func.max(col(Subscriber.id)))).one() or 0
    high = min(before - 1, newest) if before is not None else newest
    low = max(high - WINDOW + 1, 1)
    rows = list(session.exec(stmt.where(col(Subscriber.id) >= low)).all())
    if len(rows) > PAGE:  # the window holds more: the next page goes on inside it
        last = stored_id(rows[PAGE - 1])
        return Page(rows[:PAGE], last, (last, high))
    oldest = session.exec(select(func.min(col(Subscriber.id)))).one() or 0
    return Page(rows, low if low > oldest else None, (low, high))


@dataclass(frozen=True)
class DeliveryLine:
    cadence: str  # the edition's, as stored
    edition: int
    status: str
    attempts: int
    error: str | None
    sent_at: Any


def deliveries(session: Session, sub: Subscriber, *, bounced: bool = False) -> list[DeliveryLine]:
    """`sub`'s newest deliveries (`bounced`: those recorded as bounces), newest first."""
    stmt = (
        sql_select(col(Edition.cadence), col(Edition.number), col(Delivery.status), col(Delivery.attempts),
                   col(Delivery.last_error), col(Delivery.sent_at))
        .join(Edition, col(Edition.id) == col(Delivery.edition_id))
        .where(col(Delivery.subscriber_id) == sub.id)
        .order_by(col(Delivery.id).desc())
        .limit(SHOWN_DELIVERIES)
    )
    if bounced:
        stmt = stmt.where(col(Delivery.last_error).startswith("bounced ("))
    return [DeliveryLine(c, n, st.value, a, e, t) for c, n, st, a, e, t in session.execute(stmt).all()]


def csv_chunks(ctx: AdminContext, status: SubscriberStatus | None) -> Iterator[str]:
    """The export, as `digest subscribers export` writes it, a thousand rows a chunk, read in a
    session of its own (the request's is closed once the response starts)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    with new_session(ctx.engine) as s:
        for n, row in enumerate(subs.export_rows(s, status, ctx.cadences), 1):
            writer.writerow(row)
            if n % 1000 == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue()


def routes(ctx: AdminContext) -> APIRouter:
    router = APIRouter()
    DB = Annotated[Session, Depends(ctx.db)]
    Admin = Annotated[SignedIn, Depends(ctx.require_admin)]
    AdminForm = Annotated[SignedIn, Depends(ctx.require_form)]
    Id = Annotated[int, Path(ge=1, le=MAX_ID)]
    order = ctx.settings.edition.sections

    def subscriber_or_404(s: Session, subscriber_id: int) -> Subscriber:
        sub = s.get(Subscriber, subscriber_id)
        if sub is None:
            raise HTTPException(404, headers=NO_STORE)
        return sub

    def list_page(who: SignedIn, s: Session, f: Filter, before: int | None, http_status: int = 200,
                  **extra: Any) -> HTMLResponse:
        return ctx.page(
            "subscribers.html", who, http_status, filter=f, result=search(s, f, before), first=before is None,
            counts=overview.subscriber_counts(s), statuses=[st.value for st in SubscriberStatus],
            topics=signup.known_categories(s, order), window=WINDOW, import_limit=IMPORT_LIMIT,
            cadence_names=ctx.cadences.names if ctx.cadences.choice else [],
            reader_cadence=lambda key: ctx.cadences.of(key).name,
            **{"notice": "", "add_error": None, "add_email": "", "add_name": "", **extra},
        )

    @router.get("/subscribers", response_class=HTMLResponse)
    def subscriber_list(
        who: Admin, s: DB, q: Annotated[str, Query(max_length=320)] = "", match: str = "",
        status: SubscriberStatus | Literal[""] = "", topic: Annotated[str, Query(max_length=200)] = "",
        before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None, notice: str = "",
        cadence: Annotated[str, Query(max_length=50)] = "",
    ):
        try:
            readers = ctx.cadences.readers(ctx.cadences.named(cadence)) if cadence else None
        except NotFound:
            raise HTTPException(404, headers=NO_STORE) from None
        # status "" is the form's "any": a browser sends the empty option's value
        f = Filter(q.strip().lower(), match == "contains", status or None, topic or None,
                   cadence if readers else "", readers)
        return list_page(who, s, f, before, notice=notice)

    @router.post("/subscribers/add")
    def add(who: AdminForm, s: DB, email: Annotated[str, Form(max_length=320)] = "",
            name: Annotated[str, Form(max_length=500)] = ""):
        try:
            sub, _ = subs.add(s, email, ctx.clock, name=name or None, events=ctx.events)
        except InvalidAddress as exc:
            s.rollback()
            return list_page(who, s, Filter(), None, 400, add_error=str(exc), add_email=email, add_name=name)
        ctx.relay.wake()  # its webhooks are committed in the outbox
        return ctx.redirect(f"/subscribers/{sub.id}?notice=added")

    # the file and the form around it; a larger body is answered 413 before it is read
    @router.post("/subscribers/import", response_class=HTMLResponse, max_body_size=IMPORT_LIMIT + 64 * 1024)
    def import_csv(who: AdminForm, s: DB, file: Annotated[UploadFile, File()]):
        source = file.filename or "upload.csv"
        data = file.file.read(IMPORT_LIMIT + 1)
        try:
            if len(data) > IMPORT_LIMIT:
                raise DigestError(f"{source}: larger than {IMPORT_LIMIT // 1024 // 1024} MB; nothing imported:"
                                  " import it with `digest subscribers import`")
            text = subs.csv_text(data, source)
            report = subs.import_csv(s, io.StringIO(text, newline=""), ctx.clock, source=source)
        except DigestError as exc:
            s.rollback()
            return ctx.page("import.html", who, 400, source=source, error=str(exc), report=None)
        return ctx.page("import.html", who, source=source, error=None, report=report, shown_errors=SHOWN_ERRORS)

    @router.get("/subscribers/export")
    def export_csv(who: Admin, status: SubscriberStatus | None = None):
        day = f"{ctx.clock():%Y-%m-%d}"
        name = f"subscribers-{status.value}-{day}.csv" if status else f"subscribers-{day}.csv"
        return StreamingResponse(csv_chunks(ctx, status), media_type="text/csv; charset=utf-8",
                                 headers={**NO_STORE, "Content-Disposition": f'attachment; filename="{name}"'})

    @router.get("/subscribers/{subscriber_id}", response_class=HTMLResponse)
    def subscriber_page(who: Admin, s: DB, subscriber_id: Id, notice: str = ""):
        sub = subscriber_or_404(s, subscriber_id)
        return ctx.page(
            "subscriber.html", who, sub=sub, cadence=ctx.cadences.of(sub.cadence).name, notice=notice,
            deliveries=deliveries(s, sub), bounces=deliveries(s, sub, bounced=True), shown=SHOWN_DELIVERIES,
        )

    @router.post("/subscribers/{subscriber_id}/unsubscribe")
    def unsubscribe(who: AdminForm, s: DB, subscriber_id: Id):
        changed = subs.unsubscribe(s, subscriber_or_404(s, subscriber_id), ctx.clock, ctx.events)
        if changed:
            ctx.relay.wake()  # its webhooks are committed in the outbox
        return ctx.redirect(f"/subscribers/{subscriber_id}?notice={'unsubscribed' if changed else 'already'}")

    @router.post("/subscribers/{subscriber_id}/erase", response_class=HTMLResponse)
    def confirm_erase(who: AdminForm, s: DB, subscriber_id: Id):
        """The confirmation step: what will be deleted, and a second button."""
        sub = subscriber_or_404(s, subscriber_id)
        n = s.exec(select(func.count()).select_from(Delivery).where(col(Delivery.subscriber_id) == sub.id)).one()
        return ctx.page("confirm_erase.html", who, sub=sub, deliveries=n)

    @router.post("/subscribers/{subscriber_id}/erase/confirm")
    def erase(who: AdminForm, s: DB, subscriber_id: Id):
        subs.erase(s, subscriber_or_404(s, subscriber_id))
        return ctx.redirect("/subscribers?notice=erased")

    return router
