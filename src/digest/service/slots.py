"""Service: the schedule's slots. Which slot is due now, whether it was already dealt with, and
building its edition at most once however many processes share the database.

A slot is an instant the cron names (UTC). Each cadence has its own cron, slots and editions;
everything below holds per cadence. The database decides, not the memory of a process:

- `due()`: the latest slot no older than the misfire grace period, unless the `schedule_run` table
  or an edition of the cadence built at or after it says it was dealt with. A restarted process thus sends once
  for the latest missed slot (several missed slots coalesce into it) and never for one outside
  the grace period. On the very first start the latest past slot is recorded as "before start",
  so a new install (or a cadence new to the config) does not mail its list the moment the service
  first starts.
- `build_for_slot()`: under the edition lock, checks again and builds the edition with `slot` set
  (unique per cadence) and the slot's `schedule_run` row (primary key: cadence and slot) in one
  transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from digest.clock import Clock
from digest.content import editions
from digest.cron import Cron
from digest.store import locks
from digest.store.models import MAIN_CADENCE, Edition, ScheduleRun, as_utc

EDITION = "edition"
NOTHING_NEW = "nothing new"
ALREADY_SENT = "already sent"
BEFORE_START = "before start"
NO_READERS = "no readers"  # a cadence other than the main one that nobody chose: its posts wait

BASELINE_LOOKBACK = timedelta(days=366 * 30)  # how far back the first start looks for the latest slot


@dataclass(frozen=True)
class Due:
    """The slot to run now (None: none), and why."""

    slot: datetime | None
    reason: str


@dataclass(frozen=True)
class SlotResult:
    slot: datetime
    outcome: str  # EDITION (built now), NOTHING_NEW or ALREADY_SENT
    edition: Edition | None = None  # the edition built now, if any
    detail: str = ""


def _prior(session: Session, cadence: str, slot: datetime) -> tuple[str, int | None] | None:
    """(outcome, edition id) if `slot` of `cadence` was dealt with: it or a later slot has a
    schedule_run row, or an edition of the cadence was built at or after it (by any sender). None
    if it is still open."""
    run = session.exec(
        select(ScheduleRun).where(col(ScheduleRun.cadence) == cadence, ScheduleRun.slot >= slot)
        .order_by(col(ScheduleRun.slot)).limit(1)
    ).first()
    if run is not None:
        if as_utc(run.slot) == slot:
            return run.outcome, run.edition_id
        return f"covered by the later slot {_fmt(as_utc(run.slot))}", run.edition_id
    edition = session.exec(
        select(Edition).where(col(Edition.cadence) == cadence, Edition.created_at >= slot)
        .order_by(col(Edition.created_at)).limit(1)
    ).first()
    if edition is not None:
        return ALREADY_SENT, edition.id
    return None


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M" + (":%S" if t.second else "")) + " UTC"


def _describe(outcome: str, edition_id: int | None, session: Session) -> str:
    if edition_id is not None:
        edition = session.get(Edition, edition_id)
        if edition is not None:
            return f"{outcome} (edition {edition.number})"
    return outcome


def due(session: Session, cron: Cron, grace: timedelta, clock: Clock, cadence: str = MAIN_CADENCE) -> Due:
    """The slot of `cadence` (its schedule: `cron`) `digest serve` should send for now, if any."""
    now = as_utc(clock())
    has_history = session.exec(
        select(ScheduleRun.slot).where(col(ScheduleRun.cadence) == cadence).limit(1)
    ).first() is not None
    if not has_history:
        base = cron.latest(now, BASELINE_LOOKBACK) or now
        record(session, base, BEFORE_START, clock, cadence=cadence)
        return Due(None, f"schedule starts now; the slot at {_fmt(base)}, before it, is not sent")
    slot = cron.latest(now, grace)
    if slot is None:
        return Due(None, "no send due")
    prior = _prior(session, cadence, slot)
    session.rollback()  # end the read
    if prior is not None:
        return Due(None, f"slot {_fmt(slot)} already done: {_describe(*prior, session)}")
    return Due(slot, f"slot {_fmt(slot)} is due")


def record(session: Session, slot: datetime, outcome: str, clock: Clock, edition_id: int | None = None, *,
           cadence: str = MAIN_CADENCE) -> bool:
    """Record what became of `slot` of `cadence`; False if another process recorded it first."""
    session.add(ScheduleRun(cadence=cadence, slot=as_utc(slot), ran_at=as_utc(clock()), outcome=outcome,
                            edition_id=edition_id))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return False
    return True


def build_for_slot(
    session: Session,
    clock: Clock,
    slot: datetime,
    *,
    subject_template: str,
    newsletter_name: str,
    readers: editions.Readers = editions.MAIN_READERS,
) -> SlotResult:
    """Build the edition of `readers`' cadence for `slot` unless the slot was dealt with; at most
    one per slot and cadence, across processes (edition lock; unique Edition (cadence, slot);
    schedule_run primary key)."""
    slot = as_utc(slot)
    now = as_utc(clock())
    cadence = readers.cadence
    locks.acquire(session, locks.EDITION, now=now)
    try:
        prior = _prior(session, cadence, slot)
        if prior is not None:
            outcome, edition_id = prior
            detail = "done by another sender: " + _describe(outcome, edition_id, session)
            if outcome == ALREADY_SENT and session.get(ScheduleRun, (cadence, slot)) is None:
                session.add(ScheduleRun(cadence=cadence, slot=slot, ran_at=now, outcome=ALREADY_SENT,
                                        edition_id=edition_id))
                session.commit()
            else:
                session.rollback()
            return SlotResult(slot, ALREADY_SENT, None, detail)
        edition = editions.build(
            session, clock, subject_template=subject_template, newsletter_name=newsletter_name, slot=slot,
            readers=readers,
        )
        if edition is not None:
            outcome = EDITION
        elif cadence != MAIN_CADENCE and not readers.any_active(session):
            outcome = NO_READERS
        else:
            outcome = NOTHING_NEW
        session.add(ScheduleRun(cadence=cadence, slot=slot, ran_at=now, outcome=outcome,
                                edition_id=edition.id if edition else None))
        session.commit()
    except IntegrityError:  # not reachable while the lock holds; the constraints back it up
        session.rollback()
        return SlotResult(slot, ALREADY_SENT, None, "taken by another sender")
    return SlotResult(slot, outcome, edition)


@dataclass(frozen=True)
class Status:
    upcoming: list[datetime]
    last_edition: Edition | None
    last_run: ScheduleRun | None
    last_run_edition: Edition | None


def status(session: Session, cron: Cron, clock: Clock, n: int = 5, cadence: str = MAIN_CADENCE) -> Status:
    """The next `n` slots of `cadence`, its newest edition and its newest recorded slot (for
    `digest schedule`)."""
    now = as_utc(clock())
    last_edition = session.exec(
        select(Edition).where(col(Edition.cadence) == cadence).order_by(col(Edition.number).desc()).limit(1)
    ).first()
    last_run = session.exec(
        select(ScheduleRun).where(col(ScheduleRun.cadence) == cadence).order_by(col(ScheduleRun.slot).desc()).limit(1)
    ).first()
    run_edition = session.get(Edition, last_run.edition_id) if last_run and last_run.edition_id else None
    return Status(cron.upcoming(now, n), last_edition, last_run, run_edition)
