"""The database: engines and sessions.

The schema is made and changed by the migrations (digest.store.schema, which imports this module;
nothing here imports it): `schema.create_schema` runs them to the newest revision, `schema.ready`
is the cheap check every command makes first."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, create_engine

from digest.errors import ConfigError, DatabaseError
from digest.store import models  # noqa: F401  (registers the tables)


def make_engine(url: str, *, echo: bool = False, connections: int | None = None) -> Engine:
    """An engine for a SQLAlchemy URL; SQLite gets WAL, foreign keys and a busy timeout.
    `connections`: the most the pool opens at once (SQLAlchemy's default is 15: 5 kept, 10 more
    under load); a caller with more threads than that sizes it to them, so none waits for one."""
    pool = {}
    if connections is not None and ":memory:" not in url:  # (an in-memory SQLite has one connection)
        pool = {"pool_size": min(5, connections), "max_overflow": max(0, connections - 5)}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:" and not Path(path).parent.exists():
            raise ConfigError(f"database.url: directory does not exist: {Path(path).parent}")
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30}, **pool)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    connect_args = {}
    if url.startswith("postgresql") and "application_name" not in url:
        connect_args["application_name"] = "digest"  # shows in pg_stat_activity
    try:
        return create_engine(url, echo=echo, pool_pre_ping=True, connect_args=connect_args, **pool)
    except ImportError as exc:  # the URL names a driver that is not installed
        raise ConfigError(f"database.url: no driver for {make_url(url).drivername}: {exc}") from None


def display_url(url: str) -> str:
    """The URL without its password, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def database_error(url: str, exc: OperationalError) -> DatabaseError:
    """One line for a database that cannot be reached, read or written: the URL (without its
    password) and the driver's first line, e.g. 'attempt to write a readonly database' or
    'connection to server at "127.0.0.1", port 5432 failed: Connection refused'."""
    reason = str(exc.orig or exc).strip().splitlines()[0]
    return DatabaseError(f"database {display_url(url)}: {reason}")


def session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)
