"""/admin/editions: every edition with its deliveries by outcome, and one edition's page: its
posts, its counts, its failed deliveries with the server's reply (a page at a time) and a "retry
failed" button.

The counts are overview's (an edition's `recipients` less its undelivered deliveries, read from
the partial index ix_delivery_unsent), so neither page counts an edition's million deliveries.
Failures come a page at a time in delivery id order (keyset: `?after=<delivery id>`).

Each cadence numbers its editions from 1, so an edition's page is under its cadence as in the
archive: /admin/editions/N is the main cadence's edition N, /admin/editions/NAME/N another's. The
list shows every cadence's (`?cadence=NAME`: one cadence's), a page at a time by id.

"Retry failed" is `digest retry N` without the waiting: the request only makes the edition's
failed and deferred deliveries due again (ledger.reset_for_retry, the same rule: not those of
bounced, suspended, unsubscribed or paused readers) and wakes the app's SendNow thread, which
delivers them (or, with delivery.mode = "workers", the workers do).
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlmodel import Session
from starlette.exceptions import HTTPException

from digest.content import editions
from digest.delivery.ledger import reset_for_retry
from digest.errors import NotFound
from digest.service.admin import overview
from digest.service.admin.accounts import SignedIn
from digest.service.admin.area import MAX_ID, NO_STORE, AdminContext
from digest.store.models import MAIN_CADENCE, Edition

PAGE = 50  # editions a page; failed deliveries a page

Number = Annotated[int, Path(ge=1, le=MAX_ID)]


def routes(ctx: AdminContext) -> APIRouter:
    router = APIRouter()
    DB = Annotated[Session, Depends(ctx.db)]
    Admin = Annotated[SignedIn, Depends(ctx.require_admin)]
    AdminForm = Annotated[SignedIn, Depends(ctx.require_form)]
    order = ctx.settings.edition.sections

    def stored_cadence(name: str) -> str:
        """The stored key of the cadence a URL names: the main one's name is stored as "". Any
        other name is looked up as it is, so the editions of a cadence the config no longer
        offers keep their pages."""
        return MAIN_CADENCE if name == ctx.cadences.main.name else name

    def edition_or_404(s: Session, number: int, cadence: str = MAIN_CADENCE) -> Edition:
        try:
            return editions.get(s, number, cadence)
        except NotFound:
            raise HTTPException(404, headers=NO_STORE) from None

    @router.get("/editions", response_class=HTMLResponse)
    def edition_list(who: Admin, s: DB, before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
                     cadence: Annotated[str, Query(max_length=50)] = ""):
        only = stored_cadence(cadence) if cadence else None
        lines = overview.recent_editions(s, PAGE + 1, before=before, cadence=only)
        more = lines[PAGE - 1].id if len(lines) > PAGE else None
        return ctx.page("editions.html", who, editions=lines[:PAGE], more=more, first=before is None,
                        cadence=cadence, cadence_names=ctx.cadences.names)

    @router.get("/editions/{number}", response_class=HTMLResponse)
    def edition_page(who: Admin, s: DB, number: Number, after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
                     retried: Annotated[int | None, Query(ge=0)] = None):
        return edition_view(who, s, edition_or_404(s, number), after, retried)

    @router.get("/editions/{name}/{number}", response_class=HTMLResponse)
    def cadence_edition_page(who: Admin, s: DB, name: Annotated[str, Path(max_length=50)], number: Number,
                             after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
                             retried: Annotated[int | None, Query(ge=0)] = None):
        return edition_view(who, s, edition_or_404(s, number, stored_cadence(name)), after, retried)

    def edition_view(who: SignedIn, s: Session, edition: Edition, after: int, retried: int | None) -> HTMLResponse:
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
        return retry(s, edition_or_404(s, number))

    @router.post("/editions/{name}/{number}/retry")
    def retry_cadence_failed(who: AdminForm, s: DB, name: Annotated[str, Path(max_length=50)], number: Number):
        return retry(s, edition_or_404(s, number, stored_cadence(name)))

    def retry(s: Session, edition: Edition) -> RedirectResponse:
        retried = reset_for_retry(s, edition)  # commits
        if retried:
            ctx.send_now.resume()
        path = ctx.edition_path(edition.cadence, edition.number).removeprefix(ctx.path())
        return ctx.redirect(f"{path}?retried={retried}")

    return router
