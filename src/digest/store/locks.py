"""Named locks in the database, so that processes sharing it (two `digest serve`, or `digest send`
from cron next to the service) take turns at a step that reads and then writes, such as building
an edition from the unsent posts.

`acquire(session, name)` ends the session's transaction and starts a new one whose first statement
updates the lock's row. The lock is held until that transaction commits or rolls back.

- SQLite: the UPDATE takes the database write lock, like BEGIN IMMEDIATE, waiting up to the busy
  timeout for another writer; the reads after it see the latest committed data.
- PostgreSQL (and others): a row lock; a second process blocks on the same UPDATE until the first
  commits, and then (READ COMMITTED) sees what it wrote. `SELECT pg_advisory_xact_lock(...)` would
  serve as well; the row works on every database.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from digest.store.models import Lock, table_of

EDITION = "edition"  # building an edition (and deciding a schedule slot)
POSTS = "posts"  # storing a source's posts

_table = table_of(Lock)


def acquire(session: Session, name: str, *, holder: str | None = None, now: datetime | None = None) -> None:
    """Hold lock `name` until the session's next commit or rollback (commits what came before)."""
    if session.in_transaction():
        session.commit()
    for _ in range(3):
        result = session.exec(
            update(_table).where(_table.c.name == name).values(holder=holder, acquired_at=now)
        )
        if result.rowcount:
            return
        session.rollback()
        try:  # the first use of this lock on this database: create its row
            session.exec(insert(_table).values(name=name))
            session.commit()
        except IntegrityError:  # another process created it first
            session.rollback()
    raise RuntimeError(f"could not take database lock {name!r}")  # pragma: no cover
