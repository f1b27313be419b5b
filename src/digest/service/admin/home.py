"""The overview (/admin) and the next edition (/admin/next): its preview, a test mail to the
signed-in admin, and "send now" behind a confirmation step.

With a choice of cadence, the overview shows each cadence's next send with its own new posts;
the next-edition page and its "send now" are the main cadence's, as `digest send` is without
`--cadence` (the others go out on their schedule, or with `digest send --cadence NAME`)."""

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.responses import HTMLResponse
from sqlmodel import Session
from starlette.exceptions import HTTPException

from digest.service import pipeline
from digest.service.admin import chart, overview, sending, testmail
from digest.service.admin.accounts import SignedIn
from digest.service.admin.area import FRAMING_CSP, MAX_ID, NO_STORE, AdminContext
from digest.service.scheduler import when

# The preview is the email's own HTML (inline styles, as email needs), shown in a frame that
# may run nothing: `sandbox` here and on the iframe (no script, no forms, no same-origin), framed
# by our own pages only.
PREVIEW_CSP = (
    "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src 'self' https: data:; "
    "script-src 'none'; form-action 'none'; frame-ancestors 'self'; base-uri 'none'"
)
SHOWN_POSTS = 50  # titles listed under "next send"; the count says how many more


def routes(ctx: AdminContext) -> APIRouter:
    router = APIRouter()
    DB = Annotated[Session, Depends(ctx.db)]
    Admin = Annotated[SignedIn, Depends(ctx.require_admin)]
    AdminForm = Annotated[SignedIn, Depends(ctx.require_form)]
    settings = ctx.settings
    cadences = ctx.cadences
    cron = cadences.main.cron
    order = settings.edition.sections

    @router.get("", response_class=HTMLResponse)
    def home(who: Admin, s: DB):
        now = ctx.clock()
        counts = overview.subscriber_counts(s)
        weeks = overview.weeks(s, now, counts["active"])
        return ctx.page(
            "overview.html", who, counts=counts, weeks=weeks, chart=chart.weekly_chart(weeks),
            editions=overview.recent_editions(s), feeds=overview.feed_health(s),
            next_sends=overview.next_sends(s, [(c.name, c.cron, cadences.readers(c)) for c in cadences.all], now,
                                           order),
            when=when,
            shown_posts=SHOWN_POSTS,
        )

    @router.get("/next", response_class=HTMLResponse)
    def next_edition(who: Admin, s: DB, notice: str = ""):
        preview = pipeline.preview(s, settings, ctx.clock, fetch=False)
        s.rollback()
        upcoming = cron.next_after(ctx.clock())
        return ctx.page(
            "next.html", who, csp=FRAMING_CSP, preview=preview, test_sent=notice == "test", main=cadences.main.name,
            others=[c.name for c in cadences.all[1:]],
            next_at=when(cron, upcoming) if upcoming else None, open_request=sending.open_request(s),
        )

    @router.get("/next/preview", response_class=HTMLResponse)
    def preview_frame(who: Admin, s: DB):
        preview = pipeline.preview(s, settings, ctx.clock, fetch=False)
        s.rollback()
        if preview is None:
            raise HTTPException(404, headers=NO_STORE)
        html, _ = preview.message.parts_for(pipeline.preview_recipient(ctx.urls))
        return HTMLResponse(html, headers={**NO_STORE, "Content-Security-Policy": PREVIEW_CSP,
                                           "X-Frame-Options": "SAMEORIGIN"})

    @router.post("/next/test")
    def send_test(who: AdminForm, s: DB):
        testmail.queue(s, who.email, ctx.clock)
        s.commit()
        ctx.relay.wake()  # committed: a relay thread sends it now
        return ctx.redirect("/next?notice=test")

    @router.post("/next/send", response_class=HTMLResponse)
    def confirm_send(who: AdminForm, s: DB):
        """The confirmation step: what would go out, to how many, and a second button."""
        preview = pipeline.preview(s, settings, ctx.clock, fetch=False)
        s.rollback()
        active = overview.active_readers(s, cadences.readers(cadences.main))
        return ctx.page("confirm_send.html", who, preview=preview, active=active, main=cadences.main.name)

    @router.post("/next/send/confirm")
    def send_now(who: AdminForm, s: DB):
        row = sending.request(s, who.email, ctx.clock)
        ctx.send_now.wake()
        return ctx.redirect(f"/send/{row.id}")

    @router.get("/send/{request_id}", response_class=HTMLResponse)
    def send_status(who: Admin, s: DB, request_id: Annotated[int, Path(ge=1, le=MAX_ID)]):
        row = sending.get(s, request_id)
        if row is None:
            raise HTTPException(404, headers=NO_STORE)
        return ctx.page("send_status.html", who, request=row, running=row.status in (sending.PENDING, sending.RUNNING))

    return router
