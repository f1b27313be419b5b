"""The login form and logout.

Rate limits, in memory like the subscribe form's (`digest serve` is one process): 10 attempts a
minute from one client, 5 per 15 minutes for one account, whoever tries; argon2 costs ~50 ms of
CPU an attempt, so these also keep a flood of guesses from taking the server's CPU. A refused
attempt is not checked at all, right or wrong."""

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session
from starlette.exceptions import HTTPException

from digest.service.admin import accounts
from digest.service.admin.accounts import SignedIn
from digest.service.admin.area import COOKIE, LOGIN_COOKIE, NO_STORE, AdminContext
from digest.service.ratelimit import RateLimiter

PER_CLIENT = (10, 60.0)  # attempts, seconds
PER_ACCOUNT = (5, 900.0)
NONCE_MAX_AGE = 3600  # the login form's CSRF cookie: seconds


def routes(ctx: AdminContext) -> APIRouter:
    router = APIRouter()
    DB = Annotated[Session, Depends(ctx.db)]
    per_client = RateLimiter(PER_CLIENT[0], ctx.clock, window=PER_CLIENT[1])
    per_account = RateLimiter(PER_ACCOUNT[0], ctx.clock, window=PER_ACCOUNT[1])

    def login_form(http_status: int = 200, *, error: str | None = None, email: str = "",
                   headers: dict[str, str] | None = None) -> HTMLResponse:
        nonce, form_value = ctx.login_nonce()
        response = ctx.page("login.html", None, http_status, headers=headers, error=error, email=email,
                            login_csrf=form_value)
        ctx.set_cookie(response, LOGIN_COOKIE, nonce, max_age=NONCE_MAX_AGE)
        return response

    @router.get("/login", response_class=HTMLResponse)
    def login_page():
        return login_form()

    @router.post("/login", response_class=HTMLResponse)
    def login(request: Request, s: DB, email: Annotated[str, Form()] = "",
              password: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = ""):
        if not ctx.login_nonce_ok(request, csrf):
            raise HTTPException(403, headers=NO_STORE)
        client = request.client.host if request.client else "unknown"
        account = email.strip().lower()
        if not per_client.hit(client) or not per_account.hit(account):
            return login_form(429, error="Too many sign-in attempts. Wait a few minutes and try again.",
                              email=email, headers={"Retry-After": "60"})
        admin = accounts.authenticate(s, account, password, ctx.clock)
        if admin is None:
            return login_form(400, error="That address and password do not match an admin.", email=email)
        response = ctx.redirect()
        ctx.set_cookie(response, COOKIE, ctx.session_cookie(accounts.open_session(s, admin, ctx.clock)))
        ctx.clear_cookie(response, LOGIN_COOKIE)
        return response

    @router.post("/logout")
    def logout(request: Request, s: DB, who: Annotated[SignedIn, Depends(ctx.require_form)]):
        token = ctx.session_token(request)
        if token:
            accounts.close_session(s, token)
        response = ctx.redirect("/login")
        ctx.clear_cookie(response, COOKIE)
        return response

    return router
