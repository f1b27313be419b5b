"""The foundation of /admin: what `service.web.create_app` mounts, and what every admin page uses.

A page module is a function `routes(ctx: AdminContext) -> APIRouter` (see `home.py`), listed in
ROUTES; its handlers take who is signed in from `ctx.require_admin` (GET) or `ctx.require_form`
(POST: signed in, and the form's CSRF token is this session's), and answer with `ctx.page()`:

    Admin = Annotated[SignedIn, Depends(ctx.require_admin)]

    DB = Annotated[Session, Depends(ctx.db)]

    @router.get("/editions")
    def editions(who: Admin, s: DB):
        return ctx.page("editions.html", who, editions=...)

and in the template (which extends "admin/base.html"): `<form method="post">{{ csrf_field }} ...`.

Sign-in: the cookie (COOKIE) holds a random token, signed with a key derived from
newsletter.secret_key for this use only (itsdangerous's salt), HttpOnly, SameSite=Strict,
Secure whenever public_url is https, and sent for the /admin paths only, so the readers' pages
never get it. The session itself is a database row (accounts.open_session): logout deletes it,
12 hours without a request end it. Not signed in: a GET is sent to the login page, a POST gets
it too (its form is not acted on).

Every admin response is `Cache-Control: no-store`, `X-Robots-Tag: noindex`, under a CSP as
strict as the readers' (ADMIN_CSP): no script at all, nothing from another origin. Reader pages
link nowhere here.
"""

import hmac
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadSignature, Signer
from jinja2 import Environment
from markupsafe import Markup, escape
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.exceptions import HTTPException

from digest.clock import Clock
from digest.config import Settings
from digest.content.render import template_file
from digest.delivery.outbox import Relay
from digest.delivery.webhooks import Events
from digest.links import PublicUrls
from digest.mail.mailer import Mailer
from digest.service.admin import accounts
from digest.service.admin.accounts import SignedIn
from digest.service.admin.sending import SendNow
from digest.service.cadences import Cadences
from digest.store.models import as_utc

ADMIN = "/admin"  # every admin path starts with it (under public_url's path prefix)
COOKIE = "digest_admin"  # the session
LOGIN_COOKIE = "digest_admin_login"  # the login form's CSRF nonce, before there is a session
SESSION_SALT = "digest.admin.session"  # key derivation: a session signature is good for nothing else
LOGIN_SALT = "digest.admin.login"

ADMIN_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'none'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# The next-edition page frames its preview (a URL of this app, itself sandboxed).
FRAMING_CSP = ADMIN_CSP + "; frame-src 'self'"
NO_STORE = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex, nofollow"}
MAX_ID = 2**62  # ids and numbers in admin URLs: a larger one is no row's, so 422, not a database error

# The navigation of every admin page: (label, path under /admin). A new page adds its line.
NAV: list[tuple[str, str]] = [("Overview", ""), ("Next edition", "/next"), ("Editions", "/editions"),
                               ("Subscribers", "/subscribers")]


def utc(instant: datetime | None) -> str:
    """A stored time for the admin pages: "2026-11-26 09:00 UTC" ("never" for None)."""
    return "never" if instant is None else f"{as_utc(instant):%Y-%m-%d %H:%M} UTC"


class SignInRequired(Exception):
    """Raised by require_admin: answered with a redirect to the login page."""


@dataclass
class AdminContext:
    """What admin pages need: the app's settings, database, clock and templates, the admin
    paths, who is signed in (the two dependencies) and how to answer (`page`, `redirect`)."""

    settings: Settings
    engine: Engine
    clock: Clock
    env: Environment
    db: Callable[..., AsyncIterator[Session]]  # the app's session dependency
    relay: Relay  # wake() after queuing mail in the outbox
    send_now: SendNow  # wake() after a "send now" request
    urls: PublicUrls = field(init=False)
    cadences: Cadences = field(init=False)
    events: Events = field(init=False)  # the webhook events an action queues with its change
    secure: bool = field(init=False)  # cookies only over https (public_url is https)
    require_admin: Callable[..., SignedIn] = field(init=False)
    require_form: Callable[..., SignedIn] = field(init=False)

    def __post_init__(self) -> None:
        self.urls = PublicUrls(self.settings.newsletter.public_url)
        self.cadences = Cadences(self.settings.schedule)
        self.events = Events.from_settings(self.settings, self.clock)
        self.secure = self.settings.newsletter.public_url.startswith("https://")
        self._session_signer = Signer(self.settings.newsletter.secret_key, salt=SESSION_SALT)
        self._login_signer = Signer(self.settings.newsletter.secret_key, salt=LOGIN_SALT)
        self.require_admin, self.require_form = _dependencies(self)

    # --- paths and answers --------------------------------------------------------------------

    @property
    def cookie_path(self) -> str:
        return self.urls.base_path + ADMIN

    def path(self, rel: str = "") -> str:
        """The public path of an admin page: path("/next") -> "/news/admin/next"."""
        return self.urls.base_path + ADMIN + rel

    def edition_path(self, cadence: str, number: int) -> str:
        """An edition's page, by its cadence (a stored key) and number, as the archive has it:
        /admin/editions/N for the main cadence, /admin/editions/NAME/N for another (each cadence
        has an edition 1)."""
        return self.path(f"/editions/{cadence}/{number}" if cadence else f"/editions/{number}")

    def cadence_name(self, cadence: str) -> str:
        """The name of the cadence stored as `cadence` (the main one's is schedule.name)."""
        return cadence or self.cadences.main.name

    def page(self, template: str, who: SignedIn | None, http_status: int = 200, *,
             headers: dict[str, str] | None = None, csp: str = ADMIN_CSP, **ctx: Any) -> HTMLResponse:
        """An admin template (templates/admin/), never cached. `csrf_field` is the hidden input
        every POST form carries."""
        csrf = who.csrf_token if who else ""
        html = self.env.get_template(f"admin/{template}").render(
            newsletter={"name": self.settings.newsletter.name}, urls=self.urls, admin_path=self.path, nav=NAV,
            who=who, csrf_field=Markup(f'<input type="hidden" name="csrf" value="{escape(csrf)}">'), utc=utc,
            edition_path=self.edition_path, cadence_name=self.cadence_name, cadence_choice=self.cadences.choice,
            **ctx,
        )
        return HTMLResponse(html, status_code=http_status,
                            headers={**NO_STORE, "Content-Security-Policy": csp, **(headers or {})})

    def redirect(self, rel: str = "") -> RedirectResponse:
        """303 See Other to an admin page (after a POST: the browser GETs it)."""
        return RedirectResponse(self.path(rel), status_code=303, headers=NO_STORE)

    # --- cookies ------------------------------------------------------------------------------

    def set_cookie(self, response: Response, name: str, value: str, max_age: int | None = None) -> None:
        response.set_cookie(name, value, max_age=max_age, path=self.cookie_path, secure=self.secure,
                            httponly=True, samesite="strict")

    def clear_cookie(self, response: Response, name: str) -> None:
        response.delete_cookie(name, path=self.cookie_path, secure=self.secure, httponly=True, samesite="strict")

    def session_cookie(self, token: str) -> str:
        return self._session_signer.sign(token).decode()

    def session_token(self, request: Request) -> str | None:
        """The session token of the request's cookie; None without one or with a forged one."""
        value = request.cookies.get(COOKIE)
        if not value:
            return None
        try:
            return self._session_signer.unsign(value).decode()
        except BadSignature:
            return None

    def login_nonce(self) -> tuple[str, str]:
        """(cookie value, form value) for the login form: the form's is the cookie's signature,
        so a form posted from another site (which cannot read or set our cookie) fails."""
        nonce = secrets.token_urlsafe(16)
        return nonce, self._login_signer.get_signature(nonce).decode()

    def login_nonce_ok(self, request: Request, form_value: str) -> bool:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        return bool(nonce) and self._login_signer.verify_signature(nonce.encode(), form_value.encode())


def _dependencies(ctx: AdminContext) -> tuple[Callable[..., SignedIn], Callable[..., SignedIn]]:
    DB = Annotated[Session, Depends(ctx.db)]

    def require_admin(request: Request, s: DB) -> SignedIn:
        token = ctx.session_token(request)
        who = accounts.current(s, token, ctx.clock) if token else None
        if who is None:
            raise SignInRequired()
        return who

    def require_form(who: Annotated[SignedIn, Depends(require_admin)], csrf: Annotated[str, Form()] = "") -> SignedIn:
        if not hmac.compare_digest(csrf.encode(), who.csrf_token.encode()):
            raise HTTPException(403, headers=NO_STORE)
        return who

    return require_admin, require_form


# The admin page modules, each `routes(ctx) -> APIRouter`.
def _route_modules() -> list[Callable[[AdminContext], Any]]:
    from digest.service.admin import editions, home, signin, subscribers

    return [signin.routes, home.routes, editions.routes, subscribers.routes]


def mount(app: FastAPI, settings: Settings, *, engine: Engine, clock: Clock, env: Environment,
          db: Callable[..., AsyncIterator[Session]], relay: Relay, mailer_factory: Callable[[], Mailer]) -> SendNow:
    """Add /admin to `app`. Returns the "send now" thread, which the app's lifespan starts and closes."""
    send_now = SendNow(engine, settings, mailer_factory, clock)
    ctx = AdminContext(settings, engine, clock, env, db, relay, send_now)
    for routes in _route_modules():
        app.include_router(routes(ctx), prefix=ADMIN)
    css = template_file(settings.templates_dir, "admin/admin.css")
    app.add_api_route(ADMIN + "/admin.css", lambda: Response(css, media_type="text/css"), include_in_schema=False)

    async def to_login(request: Request, exc: Exception) -> Response:
        return ctx.redirect("/login")

    app.add_exception_handler(SignInRequired, to_login)
    return send_now
