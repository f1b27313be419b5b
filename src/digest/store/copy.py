"""Copy a whole digest database into a new, empty one: how a publication moves from SQLite to
PostgreSQL (or from one server to another) without losing anything.

Everything is copied with its ids — subscribers (so the unsubscribe and preferences links in
emails already sent keep working: they name the subscriber's id), their topics and status,
sources, posts (so nothing already sent is sent again), editions with their posts (the archive)
and every delivery (the ledger: sent, failed, and pending ones with their next attempt). On
PostgreSQL the id sequences are moved past the copied ids.

The source must not be in use: the caller's `settle` writes to the source first what dead senders
left (acceptances in their journals: `delivery.journal.settle_dead_senders`), and the copy is
refused while a sender holds a live claim. The target is brought
to the newest schema and must be empty; the copy is one transaction there, so a failure leaves
it empty. The source is only read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col

from digest.errors import DigestError
from digest.store import schema
from digest.store.database import session
from digest.store.models import Delivery, DeliveryStatus, as_utc

BATCH = 5000  # rows read and written at a time: memory stays flat whatever the size


@dataclass
class CopyReport:
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows copied, in copy order
    replayed: int = 0  # acceptances taken from dead senders' journals into the source first


def copy_database(source: Engine, target: Engine, now: datetime, *, settle: Callable[[Session], int] | None = None,
                  progress: Callable[[str, int], None] | None = None) -> CopyReport:
    """Copy every table of `source` into `target` (empty, or a new database). DigestError when the
    two are the same database, the target has data, or a sender is still working on the source.
    `settle(session)` runs on the source first (once its schema is checked) and returns the
    acceptances it recorded (CopyReport.replayed)."""
    if _same(source, target):
        raise DigestError("the target is the configured database itself: give a new, empty database")
    schema.ready(source)
    report = CopyReport()
    if settle is not None:
        with session(source) as s:
            report.replayed = settle(s)
    with source.connect() as src:
        live = src.execute(
            select(func.count()).select_from(Delivery).where(
                col(Delivery.status) == DeliveryStatus.pending,
                col(Delivery.claimed_until) > as_utc(now),
            )
        ).scalar_one()
        if live:
            raise DigestError(f"{live} deliveries are being sent right now: stop `digest serve`, "
                              "`digest send` and workers on this database, then copy")
        schema.ready(target)  # an empty target gets the schema; an out-of-date one is refused
        tables = [t for t in SQLModel.metadata.sorted_tables]  # parents before children
        with target.begin() as dst:
            for t in tables:
                if dst.execute(select(func.count()).select_from(t)).scalar_one():
                    raise DigestError(f"the target database is not empty (table {t.name} has rows): "
                                      "copy into a new, empty database")
            for t in tables:
                n = 0
                rows = src.execution_options(yield_per=BATCH).execute(select(t).order_by(*t.primary_key.columns))
                for part in rows.partitions(BATCH):
                    batch = [dict(r._mapping) for r in part]
                    if t.name == Delivery.__tablename__:
                        for row in batch:  # claims belong to processes of the old database
                            row["claimed_by"] = row["claimed_until"] = None
                    dst.execute(insert(t), batch)
                    n += len(batch)
                    if progress:
                        progress(t.name, n)
                report.rows[t.name] = n
            if dst.dialect.name == "postgresql":
                for t in tables:
                    serial = t.autoincrement_column
                    if serial is not None:
                        dst.exec_driver_sql(
                            f"SELECT setval(pg_get_serial_sequence('{t.name}', '{serial.name}'),"
                            f" COALESCE(MAX({serial.name}), 1), MAX({serial.name}) IS NOT NULL) FROM {t.name}"
                        )
        src.rollback()
    return report


def _same(a: Engine, b: Engine) -> bool:
    ua, ub = a.url, b.url
    if ua.get_backend_name() == "sqlite" and ub.get_backend_name() == "sqlite":
        pa, pb = ua.database or "", ub.database or ""
        return bool(pa) and bool(pb) and Path(pa).resolve() == Path(pb).resolve()
    where_a = (ua.get_backend_name(), ua.host, ua.port, ua.database)
    return where_a == (ub.get_backend_name(), ub.host, ub.port, ub.database)
