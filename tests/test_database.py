"""The engine: SQLite writers of one process take turns on a lock of the process, not in SQLite's
busy handler (which polls with sleeps of up to 100 ms and starved some writers of a burst for
seconds; bench/signup_burst.py shows the latencies)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from conftest import sqlite_only
from digest.store.database import make_engine
from digest.store.models import Subscriber
from digest.store.schema import create_schema

subscriber = Subscriber.__table__
SOON = 10.0  # seconds; a turn left taken would hold the next writer for the busy timeout (30 s)


def _engine(tmp_path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'digest.db'}")
    create_schema(engine)
    return engine


def _row(email: str) -> dict:
    from datetime import UTC, datetime

    return {"email": email, "status": "active", "paused": False, "created_at": datetime.now(UTC)}


class Writer(threading.Thread):
    """Inserts `email` on its own connection with SQLite's busy timeout off, so meeting another
    writer at SQLite's lock is an error ("database is locked") at once instead of a wait."""

    def __init__(self, engine: Engine, email: str):
        super().__init__(daemon=True)
        self.engine, self.email, self.error = engine, email, None

    def run(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA busy_timeout=0")
                conn.execute(insert(subscriber).values(_row(self.email)))
                conn.commit()
        except Exception as exc:  # noqa: BLE001 - the test reports it
            self.error = exc


def _emails(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(subscriber.c.email)).scalars())


@sqlite_only
def test_a_second_writer_waits_for_the_first_to_commit_instead_of_meeting_it_at_sqlites_lock(tmp_path):
    engine = _engine(tmp_path)
    with engine.connect() as first:
        first.execute(insert(subscriber).values(_row("first@example.com")))  # holds the write lock
        second = Writer(engine, "second@example.com")
        second.start()
        second.join(2.0)  # time to meet the lock; it must be waiting, not refused
        assert second.error is None
        assert second.is_alive()
        first.commit()
    second.join(SOON)
    assert not second.is_alive() and second.error is None
    assert _emails(engine) == {"first@example.com", "second@example.com"}
    engine.dispose()


@sqlite_only
@pytest.mark.parametrize("end", ["commit", "rollback", "failed write, rollback", "connection closed"])
def test_every_way_a_write_transaction_ends_lets_the_next_writer_in(tmp_path, end):
    engine = _engine(tmp_path)
    conn = engine.connect()
    conn.execute(insert(subscriber).values(_row("first@example.com")))
    if end == "commit":
        conn.commit()
    elif end == "rollback":
        conn.rollback()
    elif end == "failed write, rollback":
        conn.commit()
        with pytest.raises(Exception, match="UNIQUE"):
            conn.execute(insert(subscriber).values(_row("first@example.com")))
        conn.rollback()
    else:
        conn.close()  # back to the pool, which rolls it back
    next_writer = Writer(engine, "next@example.com")
    next_writer.start()
    next_writer.join(SOON)
    assert not next_writer.is_alive(), "the next writer is still waiting for its turn"
    assert next_writer.error is None
    assert "next@example.com" in _emails(engine)
    conn.close()
    engine.dispose()
