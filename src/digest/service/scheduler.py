"""`digest serve`'s scheduler: the scheduled send and feed polling, on APScheduler in this process.

APScheduler only wakes the process: once at start, at each cron time and every poll_minutes. What
to do then is decided from the database by `pipeline.scheduled` (the same send code as `digest
send`), using the slots of `service.slots`, so a restarted process catches up on a missed slot and
several processes send once.

Thin on purpose: wiring and log lines; no scheduling decisions here. The process around it (signals,
the web server) is `service.process`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine

from digest.clock import Clock, utc_now
from digest.config import Settings
from digest.cron import Cron
from digest.errors import DigestError
from digest.mail.mailer import Mailer, SMTPMailer
from digest.service import pipeline as jobs
from digest.service.cadences import Cadences
from digest.store.database import make_engine, session
from digest.store.schema import ready

log = logging.getLogger("digest")


class CronSlots(BaseTrigger):
    """An APScheduler trigger firing at a `digest.cron.Cron`'s instants (aware UTC datetimes,
    strictly increasing, so APScheduler's comparisons never meet an ambiguous local time)."""

    def __init__(self, cron: Cron):
        self.cron = cron

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        if previous_fire_time is not None:
            return self.cron.next_after(previous_fire_time)
        return self.cron.next_after(now - timedelta(microseconds=1))

    def __str__(self) -> str:
        return f"cron[{self.cron.expr} {self.cron.tz_name}]"


def when(cron: Cron, instant: datetime) -> str:
    """An instant for people: in the schedule's zone, and in UTC unless that is the zone."""
    local = cron.local(instant)
    clock = "%H:%M:%S" if cron.has_seconds else "%H:%M"
    text = f"{local:%a %Y-%m-%d {clock} %Z}"
    if not is_utc(local):
        text += f" ({instant.astimezone(UTC):{clock}} UTC)"
    return text


def is_utc(local: datetime) -> bool:
    """A local time that is UTC under any of its names (UTC, Etc/UTC, Zulu, Universal): all say "UTC"."""
    return local.utcoffset() == timedelta(0) and local.tzname() == "UTC"


class Scheduler:
    """The scheduler of one `digest serve` process. `stop` (an Event) asks running jobs to stop
    between messages; `shutdown()` sets it and waits for them."""

    def __init__(
        self,
        settings: Settings,
        *,
        stop: threading.Event | None = None,
        clock: Clock = utc_now,
        mailer_factory: Callable[[], Mailer] | None = None,
    ):
        self.settings = settings
        self.cadences = Cadences(settings.schedule)
        self.cron = self.cadences.main.cron
        self.stop = stop or threading.Event()
        self.clock = clock
        self.mailer_factory = mailer_factory or (lambda: SMTPMailer(settings.smtp))
        self._busy = threading.Lock()  # one job at a time in this process
        self._aps = BackgroundScheduler(timezone=UTC, executors={"default": ThreadPoolExecutor(2)})
        self.engine: Engine | None = None  # made in start()

    def start(self) -> None:
        engine = self.engine = make_engine(self.settings.database_url)
        ready(engine)
        sched = self.settings.schedule
        grace = max(1, int(sched.misfire_grace_hours * 3600))
        # At start: catch up on a missed slot (decided from the database), or poll and resume.
        self._aps.add_job(self._run, args=["start"], id="start", name="start", misfire_grace_time=None)
        # One trigger per cadence; each run decides every cadence's slot from the database.
        for cadence in self.cadences.all:
            job = "send" if cadence.main else f"send {cadence.name}"
            self._aps.add_job(
                self._run, CronSlots(cadence.cron), args=["send"], id=job, name=job,
                coalesce=True, max_instances=1, misfire_grace_time=grace,
            )
        if sched.poll_minutes:
            self._aps.add_job(
                self._run, IntervalTrigger(minutes=sched.poll_minutes, timezone=UTC), args=["poll"],
                id="poll", name="poll", coalesce=True, max_instances=1, misfire_grace_time=None,
            )
        for cadence in self.cadences.all:
            upcoming = cadence.cron.next_after(self.clock())
            log.info(
                "scheduler started: %s%r in %s, next send %s; %s; catch-up within %g h",
                f"{cadence.name} " if self.cadences.choice else "", cadence.cron.expr, cadence.cron.tz_name,
                when(cadence.cron, upcoming) if upcoming else "never",
                f"polling every {sched.poll_minutes} min" if sched.poll_minutes else "no polling",
                sched.misfire_grace_hours,
            )
        self._aps.start()

    def shutdown(self) -> None:
        self.stop.set()
        if self._aps.running:
            self._aps.shutdown(wait=True)  # a running job stops after the message in flight
        if self.engine is not None:
            self.engine.dispose()

    def _run(self, kind: str) -> None:
        if self.stop.is_set():
            return
        assert self.engine is not None, "the jobs run after start() made the engine"
        if kind == "poll":
            if not self._busy.acquire(blocking=False):
                log.debug("poll skipped: another job is running")
                return
        else:
            while not self._busy.acquire(timeout=0.5):
                if self.stop.is_set():
                    return
        try:
            mailer = self.mailer_factory()
            try:
                with session(self.engine) as s:
                    result = jobs.scheduled(s, self.settings, mailer, self.clock, stop=self.stop.is_set)
            finally:
                mailer.close()
            log_scheduled(kind, result, self.cadences)
        except DigestError as exc:
            log.error("%s failed: %s", kind, exc)
        except Exception as exc:  # the service keeps running; the next run retries
            log.error("%s failed: %s: %s", kind, type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        finally:
            self._busy.release()


# --- log lines: one per poll, per edition, per failure ------------------------------------------


def log_scheduled(kind: str, result: jobs.ScheduledResult, cadences: Cadences) -> None:
    if not result.sends:
        for run in result.runs:
            name = f"{run.cadence} " if cadences.choice else ""
            (log.info if kind != "poll" else log.debug)("%s: %s%s", kind, name, run.due.reason)
        log_poll(result.polled)
        log_deliveries(result.resumed, resumed=True)
        return
    for run in result.runs:
        if run.send is not None:
            log_send(run, cadences)


def log_send(run: jobs.CadenceRun, cadences: Cadences) -> None:
    send = run.send
    assert send is not None and run.due.slot is not None, "pipeline.scheduled sends only for a due slot"
    cron = cadences.named(run.cadence).cron
    log_poll(send.polled)
    log_deliveries(send.resumed, resumed=True)
    slot = send.slot
    if slot is None:  # stopped before the edition was built; the slot stays open
        log.info("slot %s: not built (stopping); the next start catches up", when(cron, run.due.slot))
        return
    label = f"{run.cadence} slot" if cadences.choice else "slot"
    label += f" {when(cron, slot.slot)}"
    if send.edition is None:
        log.info("%s: %s", label, slot.detail or f"{slot.outcome}, no edition")
        return
    r = send.edition
    log.info(
        "edition %d for %s: %d post(s), %d recipient(s); %d delivered, %d failed, %d pending%s",
        r.edition_number, label, send.post_count, send.recipients, r.sent, r.failed, r.pending,
        " (stopped; the rest is sent on the next start)" if r.stopped else "",
    )
    log_deliveries([r], resumed=False)


def log_poll(reports) -> None:
    if not reports:
        return
    new = sum(r.new for r in reports)
    updated = sum(r.updated for r in reports)
    failed = [r for r in reports if not r.ok]
    log.info(
        "poll: %d feed%s, %d new post%s, %d updated, %d failed",
        len(reports), "" if len(reports) == 1 else "s", new, "" if new == 1 else "s", updated, len(failed),
    )
    for r in failed:
        log.warning("feed failed: %s", r.error)


def log_deliveries(reports, *, resumed: bool) -> None:
    for r in reports:
        if resumed and (r.sent or r.failed or r.stopped):
            log.info(
                "edition %d resumed: %d delivered, %d failed, %d pending",
                r.edition_number, r.sent, r.failed, r.pending,
            )
        for address, reply in r.failures:
            log.warning("delivery failed: edition %d to %s: %s", r.edition_number, address, reply)
