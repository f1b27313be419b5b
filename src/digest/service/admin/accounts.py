"""Admins and their sessions.

An admin is an address and an argon2id hash of their password (argon2-cffi's defaults, RFC 9106's
second recommended profile: 3 passes over 64 MiB, about 50 ms here; the hash string carries its
own salt and parameters, so old hashes keep working when the defaults change and are re-hashed at
the next sign-in). The password itself is never stored or logged.

A session is a row (AdminSession) found by the SHA-256 of a random token that only the browser's
cookie holds. A row rather than a self-contained signed cookie: logging out and `digest admin
remove` end a session for good (a signed cookie stays valid until it expires), and the idle
expiry is read from `last_seen_at`, not from whatever time the browser sends back.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete
from sqlmodel import Session, col, select

from digest.clock import Clock
from digest.errors import DigestError, NotFound
from digest.service.subscribers import normalize_email
from digest.store.models import Admin, AdminSession, as_utc, stored_id

MIN_PASSWORD = 12  # characters; a longer one is better, there is no other rule
MAX_PASSWORD = 1024  # argon2 takes any length; this keeps a form post from making it hash megabytes
IDLE = timedelta(hours=12)  # a session nobody used for this long has ended
TOUCH_EVERY = timedelta(minutes=1)  # last_seen_at is written at most this often (a write per page otherwise)

_hasher = PasswordHasher()
# Verified against when the address is unknown, so a wrong address costs what a wrong password does.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


class WeakPassword(DigestError):
    """A password too short (or too long) to be set."""


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise WeakPassword(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise WeakPassword(f"the password may have at most {MAX_PASSWORD} characters")
    return password


def find(session: Session, email: str) -> Admin | None:
    return session.exec(select(Admin).where(col(Admin.email) == email.strip().lower())).first()


def add(session: Session, email: str, password: str, clock: Clock) -> tuple[Admin, bool]:
    """Add an admin, or set a new password for one (ending their sessions). (admin, created).
    InvalidAddress or WeakPassword for bad input."""
    address = normalize_email(email)
    check_password(password)
    admin = find(session, address)
    created = admin is None
    if admin is None:
        admin = Admin(email=address, password_hash="", created_at=as_utc(clock()))
    admin.password_hash = _hasher.hash(password)
    session.add(admin)
    session.flush()
    if not created:
        _end_sessions(session, stored_id(admin))
    session.commit()
    return admin, created


def remove(session: Session, email: str) -> Admin:
    """Remove an admin and end their sessions; NotFound if there is none."""
    admin = find(session, email)
    if admin is None:
        raise NotFound(f"no admin {email.strip()} (see `digest admin list`)")
    _end_sessions(session, stored_id(admin))
    session.delete(admin)
    session.commit()
    return admin


def listing(session: Session) -> list[Admin]:
    return list(session.exec(select(Admin).order_by(col(Admin.email))).all())


def authenticate(session: Session, email: str, password: str, clock: Clock) -> Admin | None:
    """The admin with this address and password, or None (a wrong address or password alike)."""
    admin = find(session, email) if len(password) <= MAX_PASSWORD else None
    try:
        _hasher.verify(admin.password_hash if admin else _DUMMY_HASH, password[:MAX_PASSWORD])
    except (VerificationError, InvalidHashError):
        return None
    if admin is None:
        return None
    if _hasher.check_needs_rehash(admin.password_hash):
        admin.password_hash = _hasher.hash(password)
    admin.last_login_at = as_utc(clock())
    session.add(admin)
    session.commit()
    return admin


# --- sessions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedIn:
    """Who is signed in, for a request: what every admin page gets from `require_admin`."""

    admin_id: int
    email: str
    csrf_token: str  # the token this session's forms post back


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(session: Session, admin: Admin, clock: Clock) -> str:
    """A new session for `admin`; the token for its cookie (shown nowhere else)."""
    token = secrets.token_urlsafe(32)
    now = as_utc(clock())
    session.add(AdminSession(id=_key(token), admin_id=stored_id(admin), csrf_token=secrets.token_urlsafe(32),
                             created_at=now, last_seen_at=now))
    session.commit()
    return token


def current(session: Session, token: str, clock: Clock) -> SignedIn | None:
    """Who the session of `token` belongs to, when it is open and was used within IDLE; it counts
    as used now. An idle one is deleted."""
    now = as_utc(clock())
    row = session.exec(
        select(AdminSession, Admin).join(Admin, col(Admin.id) == col(AdminSession.admin_id))
        .where(col(AdminSession.id) == _key(token))
    ).first()
    if row is None:
        session.rollback()
        return None
    sess, admin = row
    seen = as_utc(sess.last_seen_at)
    if now - seen >= IDLE:
        session.delete(sess)
        session.commit()
        return None
    if now - seen >= TOUCH_EVERY:
        sess.last_seen_at = now
        session.add(sess)
        session.commit()
    else:
        session.rollback()  # end the read
    return SignedIn(stored_id(admin), admin.email, sess.csrf_token)


def close_session(session: Session, token: str) -> None:
    """Log out: the session's row goes, so its cookie opens nothing any more."""
    session.execute(delete(AdminSession).where(col(AdminSession.id) == _key(token)))
    session.commit()


def _end_sessions(session: Session, admin_id: int) -> None:
    session.execute(delete(AdminSession).where(col(AdminSession.admin_id) == admin_id))
