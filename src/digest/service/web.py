"""The web app readers use (`digest serve`): subscribe, confirm, unsubscribe, preferences, archive.

Thin: each handler reads the request, calls a service (signup, archive) and renders a template
from templates/web/. Plain HTML forms, no JavaScript, no sessions, no cookies: every action on a
subscriber is authorised by the signed token in its URL. The operator's pages under /admin
(service.admin) have sessions; their cookie is sent for /admin paths only.

No request waits on SMTP: a sign-up queues its confirmation mail in the outbox (digest.outbox) in
its own transaction, and the app's Relay threads send it.
"""

import hashlib
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from email.utils import format_datetime
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Form, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from digest.clock import Clock, utc_now
from digest.config import Settings, WebSettings
from digest.content.render import Renderer, environment, template_file
from digest.delivery import outbox, webhooks
from digest.errors import BadToken, InvalidAddress, NotFound
from digest.links import (
    ARCHIVE,
    ARCHIVE_FEED,
    CONFIRM,
    EMBED,
    HOME,
    PREFERENCES,
    STYLESHEET,
    SUBSCRIBE,
    TOKEN_PATHS,
    UNSUBSCRIBE,
    Links,
)
from digest.mail.mailer import Mailer, SMTPMailer
from digest.service import api, apikeys, archive, embed, signup
from digest.service import subscribers as subs
from digest.service.admin import area as admin
from digest.service.admin import testmail
from digest.service.cadences import Cadence, Cadences
from digest.service.ratelimit import RateLimiter
from digest.store.database import make_engine, session
from digest.store.models import SubscriberStatus
from digest.store.schema import ready

log = logging.getLogger("digest.web")

# Pages: styles from our own stylesheet only, no script at all, never framed, forms post here.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'none'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# An archived edition is the email's own HTML, whose styles are inline (as email needs).
ARCHIVE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' https: data:; script-src 'none'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
# Threads that run the (sync) handlers, and the database pool matches it. Few: a handler is
# Python work with short database calls between, and more threads only take turns on the GIL
# (bench/signup_burst.py on 2 cores: p99 0.8-0.9 s with anyio's default of 40, 0.5-0.6 s with 8,
# and the server spent a quarter less CPU a request); 8 still leave room for requests waiting on
# the database (a PostgreSQL round trip, SQLite's write lock held by `digest send`).
REQUEST_THREADS = 8
# The most a request's body may hold (a form, an API document): a sign-up or a PATCH is a few
# hundred bytes, 64 KiB leaves room for any form we have. Larger is answered 413 before it is read,
# so no one (signed in or not) makes the app spool megabytes; /admin's CSV import has its own.
BODY_LIMIT = 64 * 1024

# Pages reached through a personal link (links.TOKEN_PATHS): not cached, not indexed, and the
# token never logged.
_TOKEN_IN_PATH = re.compile("(" + "|".join(map(re.escape, TOKEN_PATHS)) + r")[^\s/?#\"']+")
# An API key goes in the Authorization header, which no log holds; a client that puts it in the
# URL instead (?api_key=dk_...) would have uvicorn's access log write it down.
_API_KEY = re.compile(re.escape(apikeys.PREFIX) + r"[A-Za-z0-9_-]{16,}")


def redact(text: str) -> str:
    """`text` with the token of every personal link replaced: /unsubscribe/TOKEN -> /unsubscribe/[redacted],
    and any API key: dk_[redacted]"""
    return _API_KEY.sub(apikeys.PREFIX + "[redacted]", _TOKEN_IN_PATH.sub(r"\1[redacted]", text))


def _has_token(text: str) -> bool:
    return any(p in text for p in TOKEN_PATHS) or apikeys.PREFIX in text


class RedactTokens(logging.Filter):
    """A log handler filter: no log line (uvicorn's access log, an error with a URL in it, a
    traceback) carries the token of an unsubscribe, preferences or confirmation link, or an API key. A token is
    as good as the reader's password for those pages, and logs are read and kept more widely."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _has_token(message):
            record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and _has_token(record.exc_text):
            record.exc_text = redact(record.exc_text)
        return True


class SecurityHeaders:
    """Adds the security headers to every response (an endpoint may set its own CSP and cache
    policy first)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        personal = scope["path"].startswith(TOKEN_PATHS)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", CSP)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                headers.setdefault("X-Frame-Options", "DENY")  # the admin's preview frame: SAMEORIGIN
                headers["Cross-Origin-Opener-Policy"] = "same-origin"
                headers.setdefault("Cache-Control", "no-store")
                if personal:
                    headers["X-Robots-Tag"] = "noindex, nofollow"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    settings: Settings,
    *,
    mailer_factory: Callable[[], Mailer] | None = None,
    clock: Clock | None = None,
    engine: Engine | None = None,
) -> FastAPI:
    clock = clock or utc_now
    mailer_factory = mailer_factory or (lambda: SMTPMailer(settings.smtp))
    own_engine = engine is None
    # One connection for every thread that may want one (handlers, relay threads), so a request
    # never waits for the pool, let alone fails on it: none holds one across anything slow.
    connections = REQUEST_THREADS + max(1, settings.smtp.connections) + 1  # + the webhooks' thread
    engine = engine or make_engine(settings.database_url, connections=connections)
    ready(engine)
    env = environment(settings.templates_dir)
    links = Links(settings.newsletter.secret_key, settings.newsletter.public_url, clock)
    renderer = Renderer.from_settings(settings)
    urls = renderer.urls  # the pages' links: paths under public_url's path prefix
    limiter = RateLimiter(settings.web.rate_limit_per_minute, clock)
    stylesheet = template_file(settings.templates_dir, "web/style.css")
    order = settings.edition.sections
    cadences = Cadences(settings.schedule)
    resend_after = timedelta(minutes=settings.web.confirm_resend_minutes)

    kinds = {**signup.outbox_kinds(settings, links, clock, renderer), **testmail.outbox_kinds(settings, clock)}
    events = webhooks.Events.from_settings(settings, clock)
    relay = outbox.Relay(
        engine, kinds, mailer_factory, clock,
        connections=settings.smtp.connections, max_attempts=settings.smtp.max_attempts,
        rate_limit=settings.smtp.rate_limit, couriers=webhooks.couriers(settings.webhooks, clock),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        anyio.to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS
        relay.start()
        send_now.start()
        yield
        # after the message in flight; waited for off the event loop
        await anyio.to_thread.run_sync(lambda: relay.close(timeout=settings.smtp.timeout + 5))
        await anyio.to_thread.run_sync(lambda: send_now.close(timeout=settings.smtp.timeout + 5))
        if own_engine:
            engine.dispose()

    app = FastAPI(title=settings.newsletter.name, docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan,
                  max_body_size=BODY_LIMIT)
    app.add_middleware(SecurityHeaders)
    app.state.engine = engine
    app.state.limiter = limiter
    app.state.relay = relay

    async def db() -> AsyncIterator[Session]:
        # Made and closed here on the event loop, not by two more trips through the thread pool
        # (~0.2 ms of CPU a request, and two more waits for the GIL under load): making a Session
        # touches no database, and neither does closing one whose handler committed last. One
        # still in a transaction is closed in a thread: its ROLLBACK may wait on a server.
        s = session(engine)
        try:
            yield s
        finally:
            if s.in_transaction():
                with anyio.CancelScope(shield=True):  # a client gone away still gets its connection back to the pool
                    await anyio.to_thread.run_sync(s.close)
            else:
                s.close()

    DB = Annotated[Session, Depends(db)]
    send_now = admin.mount(app, settings, engine=engine, clock=clock, env=env, db=db, relay=relay,
                           mailer_factory=mailer_factory)

    newsletter = {"name": settings.newsletter.name, "site_url": settings.newsletter.site_url}

    def page(template: str, http_status: int = 200, headers: dict[str, str] | None = None, **ctx: Any) -> HTMLResponse:
        html = env.get_template(f"web/{template}").render(
            newsletter=newsletter, urls=urls, base=urls.base_path,
            cadences=cadences.all if cadences.choice else (), **ctx
        )
        return HTMLResponse(html, status_code=http_status, headers=headers)

    def subscribe_form(s: Session, http_status: int = 200, *, error: str | None = None, warning: str | None = None,
                       values: dict[str, Any] | None = None) -> HTMLResponse:
        return page("subscribe.html", http_status, categories=signup.known_categories(s, order), error=error,
                    warning=warning,
                    values=values or {"email": "", "name": "", "categories": [], "cadence": cadences.main.name})

    def offered(name: str) -> Cadence | None:
        """The cadence a form or a URL names; None for one not on offer."""
        try:
            return cadences.named(name)
        except NotFound:
            return None

    def bad_link(s: Session) -> HTMLResponse:
        return subscribe_form(s, 400, warning="This link has expired or is not valid. "
                              "Enter your address below and we'll send you a fresh one.")

    def prefs_path(sub) -> str:
        return urls.preferences_path(links.subscriber_token(sub.id, sub.email))

    # --- subscribe ----------------------------------------------------------------------------

    @app.get(HOME, response_class=HTMLResponse)
    def home(s: DB):
        return subscribe_form(s)

    @app.post(SUBSCRIBE, response_class=HTMLResponse)
    def subscribe(
        request: Request,
        s: DB,
        email: Annotated[str, Form()] = "",
        name: Annotated[str, Form()] = "",
        categories: Annotated[list[str], Form()] = [],  # noqa: B006 (FastAPI copies defaults)
        cadence: Annotated[str, Form()] = "",
        website: Annotated[str, Form()] = "",  # the honeypot: people never see it
    ):
        if not limiter.hit(request.client.host if request.client else "unknown"):
            return page("too_many.html", 429, headers={"Retry-After": "60"})
        answer = page("check_inbox.html", email=email.strip())
        if website:
            return answer
        known = signup.known_categories(s, order)
        values = {"email": email.strip(), "name": name.strip(), "categories": categories, "cadence": cadence}
        chosen = offered(cadence)
        if chosen is None:
            return subscribe_form(s, 400, error="Please choose how often you'd like the digest.", values=values)
        try:
            result = signup.subscribe(
                s, clock, email=email, name=name, categories=categories, known=known,
                resend_after=resend_after, check_deliverability=settings.web.check_deliverability,
                cadence=chosen.key,
            )
        except InvalidAddress:
            return subscribe_form(
                s, 400, error="That doesn't look like an email address. Please check it.", values=values
            )
        if result.mailed:
            relay.wake()  # the mail is committed in the outbox; a relay thread sends it now
        return answer

    @app.get(EMBED, response_class=HTMLResponse)
    def embed_page(s: DB):
        html = embed.form(env, action=urls.subscribe_action_url, newsletter_name=settings.newsletter.name,
                          categories=signup.known_categories(s, order),
                          cadences=cadences.names if cadences.choice else [])
        headers = {"Content-Security-Policy": embed.content_security_policy(urls.public_url), "X-Robots-Tag": "noindex"}
        return page("embed.html", snippet=html, action=urls.subscribe_action_url, headers=headers)

    # --- confirm ------------------------------------------------------------------------------

    @app.get(f"{CONFIRM}/{{token}}", response_class=HTMLResponse)
    def confirm_page(token: str, s: DB):
        try:
            sub = signup.check_confirm(s, links, token)
        except BadToken:
            return bad_link(s)
        if sub.status == SubscriberStatus.active:
            return page("confirmed.html", email=sub.email, prefs_url=prefs_path(sub))
        return page("confirm.html", email=sub.email)

    @app.post(f"{CONFIRM}/{{token}}", response_class=HTMLResponse)
    def confirm(token: str, s: DB):
        try:
            sub, changed = signup.confirm(s, clock, links, token, welcome_mail=settings.welcome.enabled, events=events)
        except BadToken:
            return bad_link(s)
        if changed:
            relay.wake()  # its webhooks and (on a first confirmation) the welcome are committed in the outbox
        return page("confirmed.html", email=sub.email, prefs_url=prefs_path(sub))

    # --- unsubscribe (RFC 8058 one-click, and the page) ----------------------------------------

    @app.get(f"{UNSUBSCRIBE}/{{token}}", response_class=HTMLResponse)
    def unsubscribe_page(token: str, s: DB):
        try:
            sub = signup.from_token(s, links, token)
        except BadToken:
            return page("invalid_link.html", 400)
        if sub is None or sub.status == SubscriberStatus.unsubscribed:
            return page("unsubscribed.html", prefs_url=prefs_path(sub) if sub else None)
        return page("unsubscribe.html", email=sub.email, prefs_url=prefs_path(sub))

    @app.post(f"{UNSUBSCRIBE}/{{token}}", response_class=HTMLResponse)
    def unsubscribe(token: str, s: DB):
        # The body is not read: `List-Unsubscribe=One-Click` (urlencoded or multipart), the
        # page's own form or nothing at all — the signed URL alone says who leaves.
        try:
            sub = signup.from_token(s, links, token)  # the link checked and its subscriber read once
        except BadToken:
            return page("invalid_link.html", 400)
        if sub is not None and subs.unsubscribe(s, sub, clock, events):
            relay.wake()  # its webhooks are committed in the outbox
        return page("unsubscribed.html", prefs_url=prefs_path(sub) if sub else None)

    # --- preferences --------------------------------------------------------------------------

    def token_subscriber(s, token: str):
        """The subscriber a preferences link names; None when it is forged or they were erased."""
        try:
            return signup.from_token(s, links, token)
        except BadToken:
            return None

    @app.get(f"{PREFERENCES}/{{token}}", response_class=HTMLResponse)
    def preferences_page(token: str, s: DB):
        sub = token_subscriber(s, token)
        if sub is None:
            return page("invalid_link.html", 400)
        return preferences(s, sub, token)

    @app.post(f"{PREFERENCES}/{{token}}", response_class=HTMLResponse)
    def preferences_save(
        token: str,
        s: DB,
        action: Annotated[str, Form()] = "save",
        categories: Annotated[list[str], Form()] = [],  # noqa: B006
        cadence: Annotated[str, Form()] = "",
    ):
        sub = token_subscriber(s, token)
        if sub is None:
            return page("invalid_link.html", 400)
        notice = None
        if action == "save":
            known = signup.known_for(s, sub, order)
            signup.save_preferences(s, sub, categories=categories, known=known)
            notice = "Saved. Your next digest follows these choices."
        elif action == "pause":
            signup.set_paused(s, sub, True)
            notice = "Paused. We won't send you anything until you resume."
        elif action == "resume":
            signup.set_paused(s, sub, False)
            notice = "Welcome back. Your digests will start again with the next edition."
        elif action == "resubscribe":
            if signup.resubscribe(s, sub, clock, events):
                relay.wake()  # its webhooks are committed in the outbox
            notice = "You're subscribed again."
        elif action == "cadence" and (chosen := offered(cadence)) is not None:
            signup.choose_cadence(s, sub, chosen, clock)
            notice = (f"Saved. You'll get the {chosen.name} digest; the first one brings everything you"
                      " haven't had yet.")
        return preferences(s, sub, token, notice=notice)

    def preferences(s: Session, sub, token: str, notice: str | None = None) -> HTMLResponse:
        known = signup.known_for(s, sub, order)
        picked = signup.chosen(sub)
        return page(
            "preferences.html",
            email=sub.email,
            status=sub.status.value,
            paused=sub.paused,
            categories=[(c, picked is None or c in picked) for c in known],
            cadence=cadences.of(sub.cadence).name,
            notice=notice,
            unsubscribe_url=urls.unsubscribe_path(token),
        )

    # --- archive ------------------------------------------------------------------------------

    @app.get(ARCHIVE, response_class=HTMLResponse)
    def archive_index(s: DB):
        return archive_list(s, cadences.main)

    def archive_list(s: Session, cadence: Cadence) -> HTMLResponse:
        return page("archive.html", editions=archive.published(s, cadence=cadence.key), cadence=cadence,
                    feed_path=urls.archive_feed_path_of(cadence.key), headers={"Cache-Control": "public, max-age=300"})

    # Another cadence's editions are under /archive/NAME (a name starts with a letter; a number
    # is the main cadence's edition).
    @app.get(f"{ARCHIVE}/{{number:int}}", response_class=HTMLResponse)
    def archive_edition(number: Annotated[int, Path(ge=1, le=2**62)], s: DB):
        return archive_page(s, number, cadences.main)

    # Before /archive/{name}, which would take "daily.atom" for a name.
    @app.get(f"{ARCHIVE}/{{name}}.atom")
    def archive_cadence_feed(name: str, request: Request, s: DB):
        cadence = offered(name)
        if cadence is None or cadence.main:
            raise StarletteHTTPException(404)
        return atom(request, archive.feed(s, renderer, order, clock(), cadence=cadence.key,
                                          title=f"{settings.newsletter.name} ({cadence.name})"))

    @app.get(f"{ARCHIVE}/{{name}}", response_class=HTMLResponse)
    def archive_cadence_index(name: str, s: DB):
        cadence = offered(name)
        if cadence is None:
            raise StarletteHTTPException(404)
        return archive_list(s, cadence)

    @app.get(f"{ARCHIVE}/{{name}}/{{number}}", response_class=HTMLResponse)
    def archive_cadence_edition(name: str, number: Annotated[int, Path(ge=1, le=2**62)], s: DB):
        cadence = offered(name)
        if cadence is None:
            raise StarletteHTTPException(404)
        return archive_page(s, number, cadence)

    def archive_page(s: Session, number: int, cadence: Cadence) -> HTMLResponse:
        edition = archive.find(s, number, cadence.key)
        if edition is None:
            raise StarletteHTTPException(404)
        html = archive.page(s, edition, renderer, order)
        return HTMLResponse(
            html, headers={"Content-Security-Policy": ARCHIVE_CSP, "Cache-Control": "public, max-age=300"}
        )

    @app.get(ARCHIVE_FEED)
    def archive_feed(request: Request, s: DB):
        return atom(request, archive.feed(s, renderer, order, clock()))

    def atom(request: Request, feed: archive.AtomFeed) -> Response:
        etag = '"' + hashlib.sha256(feed.document).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Last-Modified": format_datetime(feed.updated, usegmt=True),
                   "Cache-Control": "public, max-age=300"}
        if _matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)  # a reader that has it gets no body again
        return Response(feed.document, media_type=f"{archive.ATOM_MEDIA_TYPE}; charset=utf-8", headers=headers)

    # --- health and static ---------------------------------------------------------------------

    @app.get("/healthz")
    def healthz():
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1 FROM subscriber LIMIT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure means: not ready
            log.warning("health check: database unavailable: %s", exc)
            return JSONResponse({"status": "database unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get(STYLESHEET)
    def style():
        return Response(stylesheet, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204, headers={"Cache-Control": "public, max-age=86400"})

    app.mount(api.PREFIX, api.create_api(settings, engine, clock, relay.wake))  # JSON, its own errors and OpenAPI

    # --- errors as pages ------------------------------------------------------------------------

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return page("error.html", exc.status_code, headers=getattr(exc, "headers", None), code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        in_path = any(e.get("loc", ("",))[0] == "path" for e in exc.errors())
        code = 404 if in_path else 400
        return page("error.html", code, code=code)

    return app


def _matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (RFC 9110 13.1.2: weak comparison, or "*")."""
    if if_none_match is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def serve(app: FastAPI, web: WebSettings, host: str | None = None, port: int | None = None,
          stop: threading.Event | None = None) -> None:
    """Run `app` with uvicorn on `host`:`port` (default: web.host, web.port) until interrupted
    (SIGTERM/SIGINT) or until `stop` is set."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host or web.host,
            port=port or web.port,
            proxy_headers=True,
            forwarded_allow_ips=web.forwarded_allow_ips,
            server_header=False,
            # uvicorn's loggers (the access log too) go through ours, whose handlers redact tokens
            log_config=None,
        )
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactTokens())
    if stop is not None:

        def watch() -> None:
            stop.wait()
            server.should_exit = True

        threading.Thread(target=watch, name="web-stop", daemon=True).start()
    server.run()
