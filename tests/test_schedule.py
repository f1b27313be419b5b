"""The schedule service: which slot is due, catch-up after downtime, at most one edition per slot.

Real SQLite files and the real job (`jobs.scheduled`, what `digest serve` runs); the clock is a
FixedClock the test moves, so "downtime" is a jump of the clock, not a wait.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from conftest import FixedClock, write_config
from digest.config import load_settings
from digest.errors import DeliveryError
from digest.mail.mailer import MemoryMailer
from digest.service import pipeline as jobs
from digest.service import slots as schedule
from digest.service import subscribers as subs
from digest.store.database import make_engine, session
from digest.store.models import Delivery, DeliveryStatus, Edition, EditionStatus, ScheduleRun
from digest.store.schema import create_schema
from feedgen import write_feed

UTC = UTC
MON_9 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday
READERS = ["ann@example.com", "bob@example.com", "cy@example.com"]


class Env:
    def __init__(self, tmp_path, **schedule_settings):
        self.feed = write_feed(tmp_path / "blog.atom", [1, 2])
        path = write_config(tmp_path, feeds=[str(self.feed)])
        self.settings = load_settings(path, schedule={"cron": "0 9 * * mon", **schedule_settings})
        self.engine = make_engine(self.settings.database_url)
        create_schema(self.engine)
        self.session = session(self.engine)
        self.clock = FixedClock(MON_9 - timedelta(days=1))  # Sunday: the service first starts
        self.mailer = MemoryMailer()
        for addr in READERS:
            subs.add(self.session, addr, self.clock)

    def run(self, at: datetime | None = None) -> jobs.ScheduledResult:
        if at is not None:
            self.clock.now = at
        return jobs.scheduled(self.session, self.settings, self.mailer, self.clock)

    def editions(self) -> list[Edition]:
        return list(self.session.exec(select(Edition).order_by(Edition.number)).all())

    def mailed(self) -> Counter:
        return Counter(env.recipient for env in self.mailer.sent)

    def close(self):
        self.session.close()
        self.engine.dispose()


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.close()


def test_first_start_never_sends_for_a_slot_already_past(env):
    result = env.run(MON_9 + timedelta(hours=1))  # installed an hour after Monday's slot
    assert result.due.slot is None and "schedule starts now" in result.due.reason
    assert env.editions() == [] and env.mailed() == Counter()
    assert result.polled and result.polled[0].new == 2  # it still polled the feeds
    [base] = env.session.exec(select(ScheduleRun)).all()
    assert (base.slot, base.outcome) == (MON_9, schedule.BEFORE_START)
    # The next Monday is sent.
    result = env.run(MON_9 + timedelta(days=7))
    assert result.send.edition.sent == 3 and result.send.slot.outcome == schedule.EDITION


def test_sends_at_the_slot_once_and_nothing_more_without_new_posts(env):
    assert env.run().due.slot is None  # Sunday: first start, baseline
    result = env.run(MON_9 + timedelta(seconds=1))
    assert result.due.slot == MON_9
    assert (result.send.post_count, result.send.recipients, result.send.edition.sent) == (2, 3, 3)
    [edition] = env.editions()
    assert edition.slot == MON_9
    # Later runs (each poll, a restart) find the slot done, whatever appears in the feed.
    write_feed(env.feed, [1, 2, 3])
    for minutes in (1, 30, 600):
        result = env.run(MON_9 + timedelta(minutes=minutes))
        assert result.due.slot is None and "edition (edition 1)" in result.due.reason
    assert len(env.editions()) == 1 and env.mailed() == Counter(READERS)
    # Next Monday carries post 3.
    result = env.run(MON_9 + timedelta(days=7))
    assert result.send.post_count == 1 and len(env.editions()) == 2
    assert env.mailed() == Counter({a: 2 for a in READERS})


def test_catch_up_inside_the_grace_period_sends_once(env):
    env.run()  # Sunday
    result = env.run(MON_9 + timedelta(hours=23))  # down from Sunday until Monday 08:00 the next day... 23 h late
    assert result.due.slot == MON_9 and result.send.edition.sent == 3
    again = env.run(MON_9 + timedelta(hours=23, minutes=1))
    assert again.due.slot is None and env.mailed() == Counter(READERS)


def test_no_catch_up_outside_the_grace_period(env):
    env.run()
    result = env.run(MON_9 + timedelta(hours=25))
    assert result.due.slot is None and result.due.reason == "no send due"
    assert env.editions() == [] and env.mailed() == Counter()
    # The posts wait for the next slot.
    assert env.run(MON_9 + timedelta(days=7)).send.post_count == 2


def test_several_missed_slots_give_one_edition(tmp_path):
    env = Env(tmp_path, cron="0 * * * *")  # hourly
    try:
        env.run(MON_9)  # first start at 09:00: baseline
        result = env.run(MON_9 + timedelta(hours=5, minutes=30))  # down for five slots
        assert result.due.slot == MON_9 + timedelta(hours=5)
        assert len(env.editions()) == 1 and env.mailed() == Counter(READERS)
        assert env.run(MON_9 + timedelta(hours=5, minutes=31)).due.slot is None
        assert len(env.editions()) == 1
    finally:
        env.close()


def test_grace_period_and_time_zone_from_settings(tmp_path):
    env = Env(tmp_path, timezone="Europe/Berlin", misfire_grace_hours=0.5)
    try:
        env.run()
        berlin_9 = MON_9 - timedelta(hours=1)  # 09:00 CET is 08:00 UTC
        assert env.run(berlin_9 + timedelta(minutes=31)).due.slot is None
        assert env.editions() == []
        env.clock.now = berlin_9 + timedelta(days=7, minutes=29)
        assert env.run().due.slot == berlin_9 + timedelta(days=7)
    finally:
        env.close()


def test_zero_grace_still_sends_on_time_but_never_catches_up(tmp_path):
    env = Env(tmp_path, misfire_grace_hours=0)
    try:
        env.run()
        assert env.run(MON_9 + timedelta(seconds=2)).send.edition.sent == 3  # the cron run, a moment late
        write_feed(env.feed, [1, 2, 3])
        assert env.run(MON_9 + timedelta(days=7, minutes=5)).due.slot is None  # down at the slot
        assert len(env.editions()) == 1
    finally:
        env.close()


class FlakyRelay(MemoryMailer):
    """A relay that is down until `down` is cleared."""

    down = True

    def open(self) -> None:
        if self.down:
            raise DeliveryError("cannot connect to SMTP server 127.0.0.1:25: Connection refused")


def test_relay_down_at_the_slot_then_a_poll_finishes_the_edition(env):
    env.mailer = FlakyRelay()
    env.run()
    with pytest.raises(DeliveryError):
        env.run(MON_9)  # the service logs it and carries on
    [edition] = env.editions()
    assert edition.status.value == "sending"
    env.mailer.down = False
    result = env.run(MON_9 + timedelta(minutes=30))  # the next poll
    assert result.due.slot is None and [r.sent for r in result.resumed] == [3]
    assert env.mailed() == Counter(READERS) and len(env.editions()) == 1


def test_a_failed_slot_is_retried_by_the_next_poll_within_the_grace_period(env):
    env.run()
    env.run(MON_9)  # edition 1
    write_feed(env.feed, [1, 2, 3])
    # Edition 1 still has a delivery pending (say a deferred one), so the next run resumes it first.
    [edition] = env.editions()
    edition.status = EditionStatus.sending
    delivery = env.session.exec(select(Delivery).where(Delivery.edition_id == edition.id)).first()
    delivery.status = DeliveryStatus.pending
    env.session.add_all([edition, delivery])
    env.session.commit()
    env.mailer = FlakyRelay()
    with pytest.raises(DeliveryError):
        env.run(MON_9 + timedelta(days=7))  # resuming fails before the new edition is built
    assert len(env.editions()) == 1
    env.mailer.down = False
    result = env.run(MON_9 + timedelta(days=7, minutes=30))
    assert result.due.slot == MON_9 + timedelta(days=7) and result.send.post_count == 1
    assert [r.sent for r in result.send.resumed] == [1]
    assert len(env.editions()) == 2 and env.run(MON_9 + timedelta(days=7, hours=1)).due.slot is None


def test_stop_is_checked_between_feeds(env):
    assert jobs.poll(env.session, env.settings, env.clock, stop=lambda: True) == []
    assert len(jobs.poll(env.session, env.settings, env.clock)) == 1


def test_a_manual_send_after_the_slot_counts_as_the_slot(env):
    env.run()
    env.clock.now = MON_9 + timedelta(minutes=30)  # the service is down; the owner runs `digest send`
    manual = jobs.send(env.session, env.settings, env.mailer, env.clock)
    assert manual.edition.sent == 3
    result = env.run(MON_9 + timedelta(hours=1))  # the service comes back
    assert result.due.slot is None and "already sent (edition 1)" in result.due.reason
    assert len(env.editions()) == 1 and env.mailed() == Counter(READERS)


def test_nothing_new_at_the_slot_is_recorded_and_not_sent_later(env):
    env.run()
    env.run(MON_9)  # edition 1
    result = env.run(MON_9 + timedelta(days=7))
    assert result.send.edition is None and result.send.slot.outcome == schedule.NOTHING_NEW
    write_feed(env.feed, [1, 2, 3])  # a post appears on Monday afternoon; the service restarts
    result = env.run(MON_9 + timedelta(days=7, hours=6))
    assert result.due.slot is None and "nothing new" in result.due.reason
    assert len(env.editions()) == 1


def test_interrupted_send_is_resumed_by_the_next_run(env):
    env.run()
    stop_after_first = lambda: len(env.mailer.sent) >= 1  # noqa: E731 - SIGTERM after the first message
    env.clock.now = MON_9
    first = jobs.scheduled(env.session, env.settings, env.mailer, env.clock, stop=stop_after_first)
    assert first.send.edition.stopped and first.send.edition.sent == 1
    result = env.run(MON_9 + timedelta(minutes=1))  # the next start
    assert result.due.slot is None and [r.sent for r in result.resumed] == [3 - first.send.edition.sent]
    assert env.mailed() == Counter(READERS) and len(env.editions()) == 1


def _race(tmp_path, rounds: int, make_call) -> None:
    """Two threads, each with its own engine (connections) on one SQLite file, start each round
    together; per round there must be one edition and each reader mailed once."""
    env = Env(tmp_path, cron="0 * * * *")
    env.run(MON_9 - timedelta(minutes=30))
    engines = [make_engine(env.settings.database_url) for _ in range(2)]
    mailers = [MemoryMailer(), MemoryMailer()]
    try:
        for r in range(rounds):
            write_feed(env.feed, list(range(1, r + 3)))  # one more post each round
            now = MON_9 + timedelta(hours=r, seconds=1)
            barrier = threading.Barrier(2)
            errors: list[BaseException] = []

            def worker(i: int, barrier: threading.Barrier, now: datetime, errors: list[BaseException]) -> None:
                try:
                    with session(engines[i]) as s:
                        barrier.wait()
                        make_call(i, s, env.settings, mailers[i], FixedClock(now))
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=worker, args=(i, barrier, now, errors)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert errors == []
            assert len(env.editions()) == r + 1, f"round {r}"
        total = Counter(e.recipient for m in mailers for e in m.sent)
        assert total == Counter({a: rounds for a in READERS})
    finally:
        for e in engines:
            e.dispose()
        env.close()


def test_two_schedulers_racing_for_each_slot(tmp_path):
    _race(tmp_path, 8, lambda i, s, settings, mailer, clock: jobs.scheduled(s, settings, mailer, clock))


def test_scheduler_and_manual_send_racing(tmp_path):
    def call(i, s, settings, mailer, clock):
        if i == 0:
            jobs.scheduled(s, settings, mailer, clock)
        else:
            jobs.send(s, settings, mailer, clock)

    _race(tmp_path, 8, call)
