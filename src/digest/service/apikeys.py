"""Service: keys for the HTTP API (/api/v1) — make one, revoke one, list them, and tell who calls.

A key is `dk_` and 43 characters of URL-safe base64 (32 random bytes, 256 bits); only its SHA-256
is stored (models.ApiKey says why a plain hash is enough), so the key is shown once, when it is
made, and a copy of the database holds nothing that calls the API. The `dk_` prefix lets secret
scanners and people tell a digest key from other tokens. A key is looked up by its hash, an
indexed equality: what a timing difference there could reveal is a prefix of a SHA-256, which
brings no one closer to a key.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from digest.clock import Clock
from digest.content.plaintext import clean
from digest.errors import DigestError, NotFound
from digest.store.models import ApiKey, as_utc

PREFIX = "dk_"
NAME_LIMIT = 100  # the column's length
# last_used_at is written at most this often per key: a busy client costs one UPDATE a minute,
# not one per request, and "last used" to the minute is what an operator needs.
USED_EVERY = timedelta(minutes=1)


def key_hash(key: str) -> str:
    """What is stored of a key: its SHA-256, in hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create(session: Session, name: str, clock: Clock) -> tuple[ApiKey, str]:
    """A new key named `name` (unique among the keys not revoked): (its row, the key itself).
    The key is not stored: the caller shows it once."""
    name = clean(name)
    if not name:
        raise DigestError("an API key needs a name (e.g. the site or script that will use it)")
    if len(name) > NAME_LIMIT:
        raise DigestError(f"API key name too long: {len(name)} characters (at most {NAME_LIMIT})")
    if name.isdigit():  # `digest api-key revoke 12` means the key with id 12
        raise DigestError(f"API key name {name!r} is a number, which `revoke` would read as an id: add a word")
    key = PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, key_hash=key_hash(key), created_at=as_utc(clock()))
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise DigestError(f"an API key named {name!r} exists: revoke it first, or choose another name") from None
    return row, key


def keys(session: Session) -> list[ApiKey]:
    """Every key, revoked ones too, oldest first."""
    return list(session.exec(select(ApiKey).order_by(col(ApiKey.id))).all())


def find(session: Session, name_or_id: str) -> ApiKey:
    """The key a command names: by id (digits), else the key not revoked with that name."""
    wanted = name_or_id.strip()
    if wanted.isdigit():
        row = session.get(ApiKey, int(wanted))
    else:
        row = session.exec(
            select(ApiKey).where(col(ApiKey.name) == clean(wanted), col(ApiKey.revoked_at).is_(None))
        ).first()
    if row is None:
        raise NotFound(f"no API key {wanted!r} (see `digest api-key list`)")
    return row


def revoke(session: Session, key: ApiKey, clock: Clock) -> bool:
    """Revoke `key` at once: its next request gets 401. False when it was revoked already."""
    if key.revoked_at is not None:
        return False
    key.revoked_at = as_utc(clock())
    session.add(key)
    session.commit()
    return True


def authenticate(session: Session, presented: str, clock: Clock) -> ApiKey | None:
    """The key (not revoked) that `presented` is, or None. Notes the time of use (see USED_EVERY)."""
    if not presented.startswith(PREFIX):
        return None
    row = session.exec(
        select(ApiKey).where(col(ApiKey.key_hash) == key_hash(presented), col(ApiKey.revoked_at).is_(None))
    ).first()
    if row is None:
        return None
    now = as_utc(clock())
    if row.last_used_at is None or as_utc(row.last_used_at) <= now - USED_EVERY:
        # One conditional UPDATE: of two requests at once, one writes.
        session.execute(
            update(ApiKey)
            .where(col(ApiKey.id) == row.id,
                   or_(col(ApiKey.last_used_at).is_(None), col(ApiKey.last_used_at) <= now - USED_EVERY))
            .values(last_used_at=now)
        )
        session.commit()
    return row
