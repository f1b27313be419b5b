"""The HTTP API at /api/v1: subscribers and editions for other programs (a site's own sign-up
form, a CRM, a dashboard), authorised by keys made with `digest api-key create NAME`.

A FastAPI application of its own, mounted by web.create_app, so that its OpenAPI document
(/api/v1/openapi.json) describes the API and nothing else, and so that every error under
/api/v1, an unknown route's 404 included, is JSON: `{"error": {"code": ..., "message": ...}}`
with one of the stable codes of ErrorCode. Thin, as the pages are: each handler calls the
services the pages and the CLI call (signup, subscribers, editions).

A key goes in the Authorization header (`Bearer dk_...`), never in a URL, so no log line holds
one. Each key has its own rate limit (api.rate_limit_per_minute), and a lower one for creating
pending subscribers (api.sign_ups_per_minute), since each of those mails a confirmation to an
address nobody has confirmed yet. No request waits on SMTP: the confirmation goes through the
outbox, as a sign-up on the form does.

Handlers are plain functions under `create_api` and their parameters' types are aliases made
there (DB, Caller): FastAPI reads them at run time, so this module has no `from __future__ import
annotations`.
"""

import base64
import binascii
import math
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from enum import Enum
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from digest.clock import Clock
from digest.config import Settings
from digest.content import editions as editions_svc
from digest.delivery.webhooks import Events
from digest.errors import InvalidAddress, NotFound
from digest.service import apikeys, signup
from digest.service import subscribers as subs
from digest.service.cadences import Cadence, Cadences
from digest.service.ratelimit import RateLimiter
from digest.store.database import session
from digest.store.models import ApiKey, Edition, Subscriber, SubscriberStatus, stored_id

PREFIX = "/api/v1"
PAGE_LIMIT = 500  # subscribers in one page at most (`limit`); 100 unless asked
ID_MAX = 2**62  # ids and numbers in paths: anything larger is no row's (and no database integer's)


class ErrorCode(str, Enum):
    """The `code` of every error the API answers with. Stable: clients may branch on them."""

    unauthorized = "unauthorized"  # 401: no key, not a key, or a revoked key
    rate_limited = "rate_limited"  # 429: over the key's limit; Retry-After says when to try again
    not_found = "not_found"  # 404: no such route, subscriber or edition
    method_not_allowed = "method_not_allowed"  # 405
    validation_failed = "validation_failed"  # 422: the body or a query parameter is not what the API takes
    invalid_email = "invalid_email"  # 422: the address cannot be mailed
    unknown_topic = "unknown_topic"  # 422: a topic no post carries
    unknown_cadence = "unknown_cadence"  # 422: a cadence the config does not offer (schedule.cadences)
    subscriber_exists = "subscriber_exists"  # 409: that address is on the list already (any status)
    internal_error = "internal_error"  # 500


class ApiError(Exception):
    def __init__(self, status: int, code: ErrorCode, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


# --- the documents the API takes and gives ----------------------------------------------------


class ErrorDetail(BaseModel):
    code: ErrorCode
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class SubscriberOut(BaseModel):
    id: int
    email: str
    name: str | None
    status: SubscriberStatus
    topics: list[str] | None = Field(description="the categories chosen; null: every category, new ones included")
    cadence: str = Field(description="how often they get the digest: a cadence's name (schedule.name for the main"
                       " one, or a key of schedule.cadences)")
    paused: bool
    created_at: datetime
    confirmed_at: datetime | None
    unsubscribed_at: datetime | None

    @classmethod
    def of(cls, sub: Subscriber, cadences: Cadences) -> "SubscriberOut":
        return cls(id=stored_id(sub), email=sub.email, name=sub.name, status=sub.status, topics=sub.topics,
                   cadence=cadences.of(sub.cadence).name, paused=sub.paused, created_at=sub.created_at,
                   confirmed_at=sub.confirmed_at, unsubscribed_at=sub.unsubscribed_at)


class SubscriberPage(BaseModel):
    data: list[SubscriberOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class SubscriberCreate(BaseModel):
    email: str = Field(max_length=320)
    name: str | None = Field(None, max_length=1000)
    topics: list[str] | None = Field(None, description="known categories; null or [] (or all of them): every one")
    cadence: str | None = Field(None, max_length=50, description="a cadence on offer; null: the main one")
    status: Literal["pending", "active"] = Field(
        "pending", description="pending: mailed a confirmation link first (double opt-in); active: subscribed now,"
        " for an address that has already agreed elsewhere")


class SubscriberUpdate(BaseModel):
    """Only the fields given change."""

    name: str | None = Field(None, max_length=1000, description="null or empty: no name")
    topics: list[str] | None = Field(None, description="null or []: every category")
    cadence: str | None = Field(None, max_length=50, description="a cadence on offer; null: the main one. A reader"
                                " who changes cadence loses no post and gets none twice")


class EditionCounts(BaseModel):
    posts: int
    pending: int
    sent: int
    failed: int
    skipped: int


class EditionOut(BaseModel):
    cadence: str = Field(description="the cadence it is of, by name: each cadence numbers its own editions")
    number: int
    subject: str
    status: str
    created_at: datetime
    finished_at: datetime | None
    counts: EditionCounts

    @classmethod
    def of(cls, edition: Edition, counts: dict[str, int], cadences: Cadences) -> "EditionOut":
        return cls(cadence=edition.cadence or cadences.main.name, number=edition.number, subject=edition.subject,
                   status=edition.status.value,
                   created_at=edition.created_at, finished_at=edition.finished_at, counts=EditionCounts(**counts))


class EditionList(BaseModel):
    data: list[EditionOut]


# --- the app ----------------------------------------------------------------------------------


def _error(status: int, code: ErrorCode, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message))
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No API key, or one not valid or revoked (`unauthorized`)"},
    429: {"model": ErrorBody, "description": "Over the key's rate limit (`rate_limited`); see Retry-After"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "`not_found`"}}


def create_api(settings: Settings, engine: Engine, clock: Clock, wake: Callable[[], None]) -> FastAPI:
    """The API as an application to mount at PREFIX. `wake()` tells the outbox relay a
    confirmation mail was queued."""
    order = settings.edition.sections
    cadences = Cadences(settings.schedule)
    events = Events.from_settings(settings, clock)
    resend_after = timedelta(minutes=settings.web.confirm_resend_minutes)
    requests = RateLimiter(settings.api.rate_limit_per_minute, clock)
    sign_ups = RateLimiter(settings.api.sign_ups_per_minute, clock)
    bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                        description="A key from `digest api-key create NAME`, as `Authorization: Bearer dk_...`")

    def db() -> Iterator[Session]:
        with session(engine) as s:
            yield s

    DB = Annotated[Session, Depends(db)]

    def too_many(limiter: RateLimiter, key: str, what: str) -> ApiError:
        retry_after = max(1, math.ceil(limiter.wait(key)))
        return ApiError(429, ErrorCode.rate_limited, f"more than {limiter.limit} {what} a minute with this API key;"
                        f" try again in {retry_after} s", {"Retry-After": str(retry_after)})

    def caller(s: DB, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> ApiKey:
        if credentials is None:
            raise ApiError(401, ErrorCode.unauthorized, "send an API key as `Authorization: Bearer <key>`"
                           " (make one with `digest api-key create NAME`)", {"WWW-Authenticate": "Bearer"})
        key = apikeys.authenticate(s, credentials.credentials, clock)
        if key is None:
            raise ApiError(401, ErrorCode.unauthorized, "this API key is not valid or was revoked",
                           {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if not requests.hit(str(key.id)):
            raise too_many(requests, str(key.id), "requests")
        return key

    Caller = Annotated[ApiKey, Depends(caller)]

    api = FastAPI(
        title=f"{settings.newsletter.name} API",
        version="1",
        summary="Subscribers and editions of a `digest` newsletter.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        dependencies=[Depends(caller)],
        responses=ERRORS,
    )

    def known_topics(s: Session, sub: Subscriber | None, topics: list[str]) -> list[str]:
        """The known categories (and those `sub` chose before); ApiError naming a topic that is neither."""
        known = signup.known_for(s, sub, order)
        for topic in topics:
            if topic not in known:
                raise ApiError(422, ErrorCode.unknown_topic, f"unknown topic {topic!r}: no post carries it"
                               f" (known: {', '.join(known) or 'none yet'})")
        return known

    def offered(name: str | None) -> Cadence:
        """The cadence called `name` (None: the main one); ApiError naming the ones on offer."""
        try:
            return cadences.named(name)
        except NotFound:
            raise ApiError(422, ErrorCode.unknown_cadence,
                           f"unknown cadence {name!r} (offered: {', '.join(cadences.names)})") from None

    def out(sub: Subscriber) -> SubscriberOut:
        return SubscriberOut.of(sub, cadences)

    def subscriber(s: Session, subscriber_id: int) -> Subscriber:
        sub = s.get(Subscriber, subscriber_id)
        if sub is None:
            raise ApiError(404, ErrorCode.not_found, f"no subscriber {subscriber_id}")
        return sub

    def exists(address: str) -> ApiError:
        return ApiError(409, ErrorCode.subscriber_exists, f"{address} is on the list already")

    SubscriberId = Annotated[int, Path(ge=1, le=ID_MAX)]

    # --- subscribers ------------------------------------------------------------------------------

    @api.get("/subscribers", response_model=SubscriberPage, tags=["subscribers"])
    def list_subscribers(
        s: DB,
        limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT)] = 100,
        cursor: Annotated[str | None, Query(description="`next_cursor` of the page before")] = None,
        status: SubscriberStatus | None = None,
        email: Annotated[str | None, Query(description="only the subscriber with this address")] = None,
    ):
        """Subscribers in the order they joined, a page at a time: follow `next_cursor` until it is null.
        Every subscriber appears once, whoever joins or leaves meanwhile."""
        if email is not None:
            sub = subs.find(s, email)
            found = [sub] if sub is not None and status in (None, sub.status) else []
            return SubscriberPage(data=[out(x) for x in found], next_cursor=None)
        rows = subs.page(s, after=_read_cursor(cursor), limit=limit + 1, status=status)
        more = len(rows) > limit
        rows = rows[:limit]
        return SubscriberPage(data=[out(x) for x in rows],
                              next_cursor=_cursor(stored_id(rows[-1])) if more else None)

    @api.post("/subscribers", status_code=201, response_model=SubscriberOut, tags=["subscribers"],
              responses={409: {"model": ErrorBody, "description": "`subscriber_exists`"}})
    def create_subscriber(s: DB, key: Caller, body: SubscriberCreate):
        """Add a subscriber. `pending` (the default) mails a confirmation link first, as the sign-up
        form does; `active` subscribes at once. An address on the list already, whatever its
        status, is left as it is: 409 `subscriber_exists`."""
        try:
            address = subs.normalize_email(body.email, check_deliverability=settings.web.check_deliverability)
        except InvalidAddress as exc:
            raise ApiError(422, ErrorCode.invalid_email, str(exc)) from None
        known = known_topics(s, None, body.topics or [])
        cadence = offered(body.cadence)
        if subs.find(s, address) is not None:
            raise exists(address)
        if body.status == "active":
            try:
                sub, _ = subs.add(s, address, clock, name=body.name, cadence=cadence, events=events)
            except IntegrityError:  # the same address, added twice at once
                s.rollback()
                raise exists(address) from None
            if body.topics:
                signup.save_preferences(s, sub, categories=body.topics, known=known)
            wake()  # its webhooks are committed in the outbox
            return out(sub)
        if not sign_ups.hit(str(key.id)):
            raise too_many(sign_ups, str(key.id), "pending subscribers")
        result = signup.subscribe(s, clock, email=address, name=body.name, categories=body.topics or [],
                                  known=known, resend_after=resend_after, cadence=cadence.key)
        if result.outcome != signup.SignupOutcome.created:  # added by someone else since the look above
            raise exists(address)
        if result.mailed:
            wake()  # the mail is committed in the outbox; a relay thread sends it now
        return out(subs.get(s, address))

    @api.get("/subscribers/{subscriber_id}", response_model=SubscriberOut, tags=["subscribers"], responses=NOT_FOUND)
    def get_subscriber(s: DB, subscriber_id: SubscriberId):
        return out(subscriber(s, subscriber_id))

    @api.patch("/subscribers/{subscriber_id}", response_model=SubscriberOut, tags=["subscribers"],
               responses=NOT_FOUND)
    def update_subscriber(s: DB, subscriber_id: SubscriberId, body: SubscriberUpdate):
        """Change the name, the topics or the cadence; a field left out stays as it is. A reader
        who changes cadence gets, in their first edition of the new one, every post they have not
        had yet: none is lost, none comes twice (as on the preferences page)."""
        sub = subscriber(s, subscriber_id)
        cadence = offered(body.cadence) if "cadence" in body.model_fields_set else None
        if "topics" in body.model_fields_set:
            known = known_topics(s, sub, body.topics or [])
            signup.save_preferences(s, sub, categories=body.topics or [], known=known)
        if "name" in body.model_fields_set:
            subs.rename(s, sub, body.name)
        if cadence is not None:
            signup.choose_cadence(s, sub, cadence, clock)
        return out(sub)

    @api.post("/subscribers/{subscriber_id}/unsubscribe", response_model=SubscriberOut, tags=["subscribers"],
              responses=NOT_FOUND)
    def unsubscribe_subscriber(s: DB, subscriber_id: SubscriberId):
        """Unsubscribe (the history is kept); idempotent."""
        sub = subscriber(s, subscriber_id)
        if subs.unsubscribe(s, sub, clock, events):
            wake()  # its webhooks are committed in the outbox
        return out(sub)

    @api.delete("/subscribers/{subscriber_id}", status_code=204, response_class=Response, tags=["subscribers"],
                responses=NOT_FOUND)
    def erase_subscriber(s: DB, subscriber_id: SubscriberId):
        """Erase the person: the subscriber goes, their past deliveries stay as anonymous counts."""
        subs.erase(s, subscriber(s, subscriber_id))
        return Response(status_code=204)

    # --- editions ---------------------------------------------------------------------------------

    # An edition is its cadence's number N, as in `digest editions show N --cadence NAME` and
    # /archive/NAME/N: /editions/N is the main cadence's edition N (what it was before cadences),
    # ?cadence=NAME another's. Database ids are shown nowhere else, so no URL takes one.
    @api.get("/editions", response_model=EditionList, tags=["editions"])
    def list_editions(s: DB, cadence: Annotated[str | None, Query(
            max_length=50, description="only this cadence's editions (default: every cadence's)")] = None):
        """Every edition (of `cadence`), newest first, with its posts and deliveries by status."""
        key = None if cadence is None else offered(cadence).key
        return EditionList(data=[EditionOut.of(e, c, cadences) for e, c in editions_svc.summaries(s, key)])

    @api.get("/editions/{number}", response_model=EditionOut, tags=["editions"], responses=NOT_FOUND)
    def get_edition(s: DB, number: Annotated[int, Path(ge=1, le=ID_MAX)], cadence: Annotated[str | None, Query(
            max_length=50, description="the cadence whose edition `number` this is (default: the main one)")] = None):
        """Edition `number` of the main cadence, or of `cadence`: each cadence numbers its own."""
        chosen = offered(cadence)
        try:
            edition = editions_svc.get(s, number, chosen.key)
        except NotFound:
            of = f" of {chosen.name}" if cadences.choice else ""
            raise ApiError(404, ErrorCode.not_found, f"no edition {number}{of}") from None
        return EditionOut.of(edition, editions_svc.counts(s, edition), cadences)

    # --- errors as JSON ---------------------------------------------------------------------------

    @api.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return _error(404, ErrorCode.not_found, f"no such route: {request.method} {request.url.path}")
        if exc.status_code == 405:
            return _error(405, ErrorCode.method_not_allowed, f"{request.method} is not allowed on {request.url.path}",
                          getattr(exc, "headers", None))
        return _error(exc.status_code, ErrorCode.internal_error, str(exc.detail))

    @api.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = exc.errors()
        if any(p.get("loc", ("",))[0] == "path" for p in problems):  # /subscribers/abc names no subscriber
            return _error(404, ErrorCode.not_found, f"no such resource: {request.url.path}")
        return _error(422, ErrorCode.validation_failed, "; ".join(_problem(p) for p in problems))

    @api.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        return _error(500, ErrorCode.internal_error, "internal error (the server's log says more)")

    api.openapi = lambda: _openapi(api)  # type: ignore[method-assign]
    return api


def _problem(problem: dict[str, Any]) -> str:
    """One validation problem as `body.email: Field required`."""
    where = ".".join(str(part) for part in problem.get("loc", ()))
    return f"{where}: {problem.get('msg', 'not valid')}" if where else str(problem.get("msg", "not valid"))


def _cursor(last_id: int) -> str:
    """An opaque cursor: clients pass it back as it is; what it holds may change."""
    return base64.urlsafe_b64encode(f"s{last_id}".encode()).decode().rstrip("=")


def _read_cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        if text[:1] == "s" and text[1:].isdigit() and _cursor(int(text[1:])) == cursor:  # as _cursor wrote it
            return int(text[1:])
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise ApiError(422, ErrorCode.validation_failed, "query.cursor: not a cursor this API gave (pass `next_cursor`"
                   " as it is)")


def _openapi(api: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with the 422 it adds to every operation described as the API answers
    it (ErrorBody), not as FastAPI's own HTTPValidationError."""
    if api.openapi_schema is None:
        doc = get_openapi(title=api.title, version=api.version, summary=api.summary, routes=api.routes,
                          servers=[{"url": PREFIX}])
        error_ref = {"$ref": "#/components/schemas/ErrorBody"}
        for operation in (op for item in doc["paths"].values() for op in item.values()):
            if "422" in operation.get("responses", {}):
                operation["responses"]["422"] = {
                    "description": "`validation_failed`, `invalid_email`, `unknown_topic` or `unknown_cadence`",
                    "content": {"application/json": {"schema": error_ref}},
                }
        schemas = doc.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        api.openapi_schema = doc
    return api.openapi_schema
