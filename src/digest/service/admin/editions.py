"""/admin/editions: every edition with its deliveries by outcome, and one edition's page: its
posts, its counts, its failed deliveries with the server's reply (a page at a time) and a "retry
failed" button.

The counts are overview's (an edition's `recipients` less its undelivered deliveries, read from
the partial index ix_delivery_unsent), so neither page counts an edition's million deliveries.
Failures come a page at a time in delivery id order (keyset: `?after=<delivery id>`).

"Retry failed" is `digest retry N` without the waiting: the request only makes the edition's
failed and deferred deliveries due again (ledger.reset_for_retry, the same rule: not those of
bounced, suspended, unsubscribed or paused readers) and wakes the app's SendNow thread, which
delivers them (or, with delivery.mode = "workers", the workers do).
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import HTMLResponse
from sqlmodel import Session
from starlette.exceptions import HTTPException

from digest.content import editions
from digest.delivery.ledger import reset_for_retry
from digest.errors import NotFound
from digest.service.admin import overview
from digest.service.admin.accounts import SignedIn
from digest.service.admin.area import NO_STORE, AdminContext
from digest.store.models import Edition

PAGE = 50  # editions a page; failed deliveries a page
MAX_ID = 2**62  # a larger number in a URL is not one of ours: 422, not a database error

Number = Annotated[int, Path(ge=1, le=MAX_ID)]


def routes(ctx: AdminContext) -> APIRouter:
    router = APIRouter()
    DB = Annotated[Session, Depends(ctx.db)]
    Admin = Annotated[SignedIn, Depends(ctx.require_admin)]
    AdminForm = Annotated[SignedIn, Depends(ctx.require_form)]
    order = ctx.settings.edition.sections

    def edition_or_404(s: Session, number: int) -> Edition:
        try:
            return editions.get(s, number)
        except NotFound:
            raise HTTPException(404, headers=NO_STORE) from None

    @router.get("/editions", response_class=HTMLResponse)
    def edition_list(who: Admin, s: DB, before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None):
        lines = overview.recent_editions(s, PAGE + 1, before=before)
        more = lines[PAGE - 1].number if len(lines) > PAGE else None
        return ctx.page("editions.html", who, editions=lines[:PAGE], more=more, first=before is None)

    @router.get("/editions/{number}", response_class=HTMLResponse)
    def edition_page(who: Admin, s: DB, number: Number, after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
                     retried: Annotated[int | None, Query(ge=0)] = None):
        edition = edition_or_404(s, number)
        line = overview.edition_lines(s, [edition])[0]
        failed = editions.undelivered(s, edition, after=after, limit=PAGE + 1)
        deferred = editions.undelivered(s, edition, deferred=True, limit=PAGE + 1)
        return ctx.page(
            "edition.html", who, edition=edition, line=line, view=editions.edition_view(s, edition, order),
            failed=failed[:PAGE], more_failed=failed[PAGE - 1][0] if len(failed) > PAGE else None, after=after,
            deferred=deferred[:PAGE], more_deferred=len(deferred) > PAGE, retried=retried,
        )

    @router.post("/editions/{number}/retry")
    def retry_failed(who: AdminForm, s: DB, number: Number):
        edition = edition_or_404(s, number)
        retried = reset_for_retry(s, edition)  # commits
        if retried:
            ctx.send_now.resume()
        return ctx.redirect(f"/editions/{number}?retried={retried}")

    return router
