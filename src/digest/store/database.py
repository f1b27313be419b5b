"""The database: engines and sessions.

The schema is made and changed by the migrations (digest.store.schema, which imports this module;
nothing here imports it): `schema.create_schema` runs them to the newest revision, `schema.ready`
is the cheap check every command makes first."""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar, cast, overload

from sqlalchemy import event, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, create_engine

from digest.errors import ConfigError, DatabaseError
from digest.store import models  # noqa: F401  (registers the tables)

# How long a SQLite writer waits for the database's one write lock before "database is locked".
BUSY_SECONDS = 30
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")  # the statements sqlite3 opens a transaction for
_CursorT = TypeVar("_CursorT", bound=sqlite3.Cursor)


class TurnTakingConnection(sqlite3.Connection):
    """A SQLite connection whose write transactions take turns with the other connections of this
    process to the same file on a lock (`turn`, one per file), before SQLite's own write lock.

    SQLite lets one connection write at a time; the others wait in its busy handler, which polls,
    sleeping 1, 2, 5, 10 ... then 100 ms between tries. Under a burst of writers (40 request
    threads each signing up or unsubscribing someone) the lock is free only for moments between
    those sleeps, so some writers lost every try for seconds: bench/signup_burst.py measured p99
    4 s, nearly all of it asleep, with a third of the writes finding the lock taken. A thread
    waiting on `turn` wakes as the writer before it commits. Other processes (`digest send`,
    `digest worker`) still meet at SQLite's lock and its busy timeout.

    A transaction holds the turn from its first write until it commits or rolls back (or the
    connection closes). A writer that cannot get the turn in BUSY_SECONDS goes ahead without it
    and leaves the waiting to SQLite, as before."""

    turn: threading.Lock  # set per database file by `_turn_taking`

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # (sqlite3.connect's arguments, passed on)
        super().__init__(*args, **kwargs)
        self.has_turn = False

    @overload
    def cursor(self, factory: None = None) -> TurnTakingCursor: ...
    @overload
    def cursor(self, factory: Callable[[sqlite3.Connection], _CursorT]) -> _CursorT: ...
    def cursor(self, factory: Callable[[sqlite3.Connection], sqlite3.Cursor] | None = None) -> sqlite3.Cursor:
        return super().cursor(factory or TurnTakingCursor)

    def take_turn(self, statement: str) -> None:
        if not self.has_turn and not self.in_transaction and statement.lstrip()[:7].upper().startswith(_WRITES):
            self.has_turn = self.turn.acquire(timeout=BUSY_SECONDS)

    def end_turn(self) -> None:
        if self.has_turn and not self.in_transaction:
            self.has_turn = False
            self.turn.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.end_turn()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.end_turn()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.has_turn:
                self.has_turn = False
                self.turn.release()


class TurnTakingCursor(sqlite3.Cursor):
    """The cursor of a TurnTakingConnection (its `cursor` makes them): a write takes the turn first."""

    @property
    def turn_taking(self) -> TurnTakingConnection:
        return cast(TurnTakingConnection, self.connection)

    # `parameters`: whatever sqlite3 takes (a sequence or a mapping), passed on unchanged.
    def execute(self, sql: str, parameters: Any = (), /) -> Self:
        self.turn_taking.take_turn(sql)
        try:
            return super().execute(sql, parameters)
        finally:
            self.turn_taking.end_turn()  # (only when no transaction was opened: a failed write)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> Self:
        self.turn_taking.take_turn(sql)
        try:
            return super().executemany(sql, seq_of_parameters)
        finally:
            self.turn_taking.end_turn()


@functools.cache
def _turn_taking(path: str) -> type[TurnTakingConnection]:
    """The connection class for one database file: every engine on it in this process shares its lock."""
    return type("TurnTakingConnection", (TurnTakingConnection,), {"turn": threading.Lock()})


def make_engine(url: str, *, echo: bool = False, connections: int | None = None) -> Engine:
    """An engine for a SQLAlchemy URL; SQLite gets WAL, foreign keys and a busy timeout.
    `connections`: the most the pool opens at once (SQLAlchemy's default is 15: 5 kept, 10 more
    under load); a caller with more threads than that sizes it to them, so none waits for one."""
    pool: dict[str, int] = {}
    if connections is not None and ":memory:" not in url:  # (an in-memory SQLite has one connection)
        pool = {"pool_size": min(5, connections), "max_overflow": max(0, connections - 5)}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:" and not Path(path).parent.exists():
            raise ConfigError(f"database.url: directory does not exist: {Path(path).parent}")
        connect_args: dict[str, object] = {"timeout": BUSY_SECONDS}
        if path and path != ":memory:":
            connect_args["factory"] = _turn_taking(os.path.realpath(path))
        engine = create_engine(url, echo=echo, connect_args=connect_args, **pool)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={BUSY_SECONDS * 1000}")
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
