""""Send now" from /admin: a request is a row (SendRequest); the web app's `SendNow` thread
claims it and runs the same send as `digest send` (without fetching the feeds first: what the
admin previewed is what goes out, plus any post a poll added meanwhile). The request answers at
once; the page of the request shows how it went.

A row rather than a call: the send survives the request (and is visible from every process), two
clicks make one send (`request()` returns the open request), and two `digest serve` processes
never run one request twice (the claim is one conditional UPDATE). Editions themselves are
built under the edition lock, so a send now and a scheduled send at the same moment take turns
and the second finds nothing new.

The same thread delivers what is due of unfinished editions when asked (`SendNow.resume`): after
an edition's "retry failed" in /admin, whose request only makes its failed deliveries due again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from digest.clock import Clock
from digest.config import Settings
from digest.errors import DigestError
from digest.mail.mailer import Mailer
from digest.service import pipeline
from digest.store.database import session as new_session
from digest.store.models import SendRequest, as_utc

log = logging.getLogger("digest")

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
POLL_SECONDS = 5.0  # an idle SendNow looks for requests (from other processes) this often


def open_request(session: Session) -> SendRequest | None:
    """The request waiting or running, if any."""
    return session.exec(
        select(SendRequest).where(col(SendRequest.status).in_((PENDING, RUNNING))).order_by(col(SendRequest.id))
    ).first()


def request(session: Session, admin_email: str, clock: Clock) -> SendRequest:
    """Ask for a send now; the request already open, if there is one."""
    existing = open_request(session)
    if existing is not None:
        return existing
    row = SendRequest(requested_by=admin_email, requested_at=as_utc(clock()), status=PENDING)
    session.add(row)
    session.commit()
    return row


def get(session: Session, request_id: int) -> SendRequest | None:
    return session.get(SendRequest, request_id)


def claim(session: Session, clock: Clock) -> SendRequest | None:
    """Take the oldest waiting request (None: none, or another process took it first); commits."""
    oldest = session.exec(
        select(SendRequest.id).where(col(SendRequest.status) == PENDING).order_by(col(SendRequest.id)).limit(1)
    ).first()
    if oldest is None:
        session.rollback()
        return None
    taken = session.exec(
        update(SendRequest).where(col(SendRequest.id) == oldest, col(SendRequest.status) == PENDING)
        .values(status=RUNNING, started_at=as_utc(clock()))
    ).rowcount
    session.commit()
    return session.get(SendRequest, oldest, populate_existing=True) if taken else None


def outcome(result: pipeline.SendResult) -> tuple[int | None, str]:
    """(edition number, a line for the page) of a send."""
    if result.new_queued is not None:
        q = result.new_queued
        return q.edition_number, f"edition {q.edition_number} built with {q.pending:,} deliveries, left to the workers"
    if result.edition is None:
        return None, "nothing new to send: every post is already in an edition"
    r = result.edition
    return r.edition_number, (f"edition {r.edition_number}: {result.post_count} post(s), {result.recipients:,}"
                              f" recipient(s); {r.sent:,} delivered, {r.failed:,} failed, {r.pending:,} pending")


def run(session: Session, row: SendRequest, settings: Settings, mailer: Mailer, clock: Clock,
        stop: Callable[[], bool]) -> None:
    """Make the send of a claimed request and record how it went."""
    try:
        result = pipeline.send(session, settings, mailer, clock, fetch=False, stop=stop)
        row.edition_number, row.outcome = outcome(result)
        row.status = DONE
    except Exception as exc:  # noqa: BLE001 - recorded on the request, which would say "running" for ever
        session.rollback()
        row.status = FAILED
        row.outcome = str(exc) if isinstance(exc, DigestError) else f"{type(exc).__name__}: {exc}"
    finally:
        mailer.close()
    row.finished_at = as_utc(clock())
    session.add(row)
    session.commit()
    log.info("send now (asked by %s): %s", row.requested_by, row.outcome)


def resume(session: Session, settings: Settings, mailer: Mailer, clock: Clock, stop: Callable[[], bool]) -> None:
    """Deliver what is due of the unfinished editions (claimed delivery by delivery, so a
    scheduler doing the same at the same moment sends nothing twice)."""
    try:
        for r in pipeline.resume(session, settings, mailer, clock, stop=stop):
            log.info("edition %d resumed: %d delivered, %d failed, %d pending", r.edition_number, r.sent, r.failed,
                     r.pending)
    finally:
        mailer.close()


class SendNow:
    """The thread of `digest serve` that makes the sends asked for in /admin."""

    def __init__(self, engine: Engine, settings: Settings, mailer_factory: Callable[[], Mailer], clock: Clock,
                 poll_seconds: float = POLL_SECONDS):
        self.engine = engine
        self.settings = settings
        self.mailer_factory = mailer_factory
        self.clock = clock
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._resume = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="send-now", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def resume(self) -> None:
        """Deliver what is due of the unfinished editions now (what `digest serve`'s scheduler
        does at its next poll): after a "retry failed" in /admin made deliveries due again."""
        self._resume.set()
        self._wake.set()

    def close(self, timeout: float = 30) -> None:
        """Stop after the message in flight; the rest of the edition is sent by the next send or poll."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                with new_session(self.engine) as s:
                    row = claim(s, self.clock)
                    if row is not None:
                        run(s, row, self.settings, self.mailer_factory(), self.clock, self._stop.is_set)
                        continue
                    if self._resume.is_set():
                        self._resume.clear()
                        resume(s, self.settings, self.mailer_factory(), self.clock, self._stop.is_set)
            except Exception as exc:  # the thread keeps running; the request is left as it was
                log.error("send now: %s: %s", type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            self._wake.wait(self.poll_seconds)
