"""Service: the schedule's slots. Which slot is due now, whether it was already dealt with, and
building its edition at most once however many processes share the database.

A slot is an instant the cron names (UTC). The database decides, not the memory of a process:

- `due()`: the latest slot no older than the misfire grace period, unless the `schedule_run` table
  or an edition built at or after it says it was dealt with. A restarted process thus sends once
  for the latest missed slot (several missed slots coalesce into it) and never for one outside
  the grace period. On the very first start the latest past slot is recorded as "before start",
  so a new install does not mail its list the moment the service first starts.
- `build_for_slot()`: under the edition lock, checks again and builds the edition with `slot` set
  (unique) and the slot's `schedule_run` row (primary key) in one transaction.
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
from digest.store.models import Edition, ScheduleRun, as_utc

EDITION = "edition"
NOTHING_NEW = "nothing new"
ALREADY_SENT = "already sent"
BEFORE_START = "before start"

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


def _prior(session: Session, slot: datetime) -> tuple[str, int | None] | None:
    """(outcome, edition id) if `slot` was dealt with: it or a later slot has a schedule_run row,
    or an edition was built at or after it (by any sender). None if it is still open."""
    run = session.exec(
        select(ScheduleRun).where(ScheduleRun.slot >= slot).order_by(col(ScheduleRun.slot)).limit(1)
    ).first()
    if run is not None:
        if as_utc(run.slot) == slot:
            return run.outcome, run.edition_id
        return f"covered by the later slot {_fmt(as_utc(run.slot))}", run.edition_id
    edition = session.exec(
        select(Edition).where(Edition.created_at >= slot).order_by(col(Edition.created_at)).limit(1)
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


def due(session: Session, cron: Cron, grace: timedelta, clock: Clock) -> Due:
    """The slot `digest serve` should send for now, if any."""
    now = as_utc(clock())
    has_history = session.exec(select(ScheduleRun.slot).limit(1)).first() is not None
    if not has_history:
        base = cron.latest(now, BASELINE_LOOKBACK) or now
        record(session, base, BEFORE_START, clock)
        return Due(None, f"schedule starts now; the slot at {_fmt(base)}, before it, is not sent")
    slot = cron.latest(now, grace)
    if slot is None:
        return Due(None, "no send due")
    prior = _prior(session, slot)
    session.rollback()  # end the read
    if prior is not None:
        return Due(None, f"slot {_fmt(slot)} already done: {_describe(*prior, session)}")
    return Due(slot, f"slot {_fmt(slot)} is due")


def record(session: Session, slot: datetime, outcome: str, clock: Clock, edition_id: int | None = None) -> bool:
    """Record what became of `slot`; False if another process recorded it first."""
    session.add(ScheduleRun(slot=as_utc(slot), ran_at=as_utc(clock()), outcome=outcome, edition_id=edition_id))
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
) -> SlotResult:
    """Build the edition for `slot` unless the slot was dealt with; at most one per slot, across
    processes (edition lock; unique Edition.slot; schedule_run primary key)."""
    slot = as_utc(slot)
    now = as_utc(clock())
    locks.acquire(session, locks.EDITION, now=now)
    try:
        prior = _prior(session, slot)
        if prior is not None:
            outcome, edition_id = prior
            detail = "done by another sender: " + _describe(outcome, edition_id, session)
            if outcome == ALREADY_SENT and session.get(ScheduleRun, slot) is None:
                session.add(ScheduleRun(slot=slot, ran_at=now, outcome=ALREADY_SENT, edition_id=edition_id))
                session.commit()
            else:
                session.rollback()
            return SlotResult(slot, ALREADY_SENT, None, detail)
        edition = editions.build(
            session, clock, subject_template=subject_template, newsletter_name=newsletter_name, slot=slot
        )
        outcome = EDITION if edition else NOTHING_NEW
        session.add(ScheduleRun(slot=slot, ran_at=now, outcome=outcome, edition_id=edition.id if edition else None))
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


def status(session: Session, cron: Cron, clock: Clock, n: int = 5) -> Status:
    """The next `n` slots, the newest edition and the newest recorded slot (for `digest schedule`)."""
    now = as_utc(clock())
    last_edition = session.exec(select(Edition).order_by(col(Edition.number).desc()).limit(1)).first()
    last_run = session.exec(select(ScheduleRun).order_by(col(ScheduleRun.slot).desc()).limit(1)).first()
    run_edition = session.get(Edition, last_run.edition_id) if last_run and last_run.edition_id else None
    return Status(cron.upcoming(now, n), last_edition, last_run, run_edition)
