"""The sender loop (`run_sender`) on the in-memory ledger and mailer: what a sender does with its
lease, lost claims, a stop, temporary and permanent refusals, and a dead sender's journal, without
a database or an SMTP server (the same loop runs on SQLite and PostgreSQL in test_sending.py)."""

from __future__ import annotations

import email
import logging
import os
import socket
import subprocess
import sys
from datetime import timedelta
from email import policy

import pytest

from conftest import FixedClock
from digest.config import DKIMSettings, NewsletterSettings
from digest.content import editions
from digest.delivery import journal
from digest.delivery.ledger import MemoryLedger
from digest.delivery.sender import DeliveryReport, SenderSettings, run_sender
from digest.delivery.variants import Variants, VariantSettings
from digest.mail.mailer import MemoryMailer, Reply
from digest.store.models import Delivery, DeliveryStatus, Post, Subscriber, SubscriberStatus

NEWSLETTER = NewsletterSettings(name="Test Weekly", from_="Test Weekly <news@digest.test>",
                                public_url="https://news.digest.test", secret_key="s" * 32)
START = FixedClock().now
EDITION = 1


class Relay(MemoryMailer):
    """MemoryMailer with a chosen reply per address, and `during(envelope)` called while each
    message is on the wire (before its reply is read)."""

    def __init__(self, replies: dict[str, Reply] | None = None, during=None):
        super().__init__()
        self.replies = replies or {}
        self.during = during

    def send(self, envelopes):
        for env in envelopes:
            reply = self.replies.get(env.recipient, Reply(250, "2.0.0 queued"))
            if reply.ok:
                self.sent.append(env)
            if self.during is not None:
                self.during(env)
            yield env, reply


def address(i: int) -> str:
    return f"reader{i:03d}@example.com"


def ledger(n: int, **subscriber_kw) -> MemoryLedger:
    """n active subscribers (ids 1..n) with a pending delivery each (ids 101..100+n)."""
    subscribers = [Subscriber(id=i, email=address(i), status=SubscriberStatus.active, created_at=START, **subscriber_kw)
                   for i in range(1, n + 1)]
    deliveries = [Delivery(id=100 + i, edition_id=EDITION, subscriber_id=i) for i in range(1, n + 1)]
    return MemoryLedger(deliveries, subscribers)


def settings(tmp_path, *, batch_size: int = 50, lease_seconds: int = 30, max_attempts: int = 8) -> SenderSettings:
    return SenderSettings(secret_key=NEWSLETTER.secret_key, public_url=NEWSLETTER.public_url,
                          bounce_domain="bounces.digest.test", message_id_domain="digest.test",
                          batch_size=batch_size, lease=timedelta(seconds=lease_seconds),
                          max_attempts=max_attempts, journal_dir=tmp_path / "journal")


def post(i: int, category: str) -> Post:
    return Post(id=i, source_id=1, guid=f"g{i}", url=f"https://blog.example.com/{i}", title=f"Post {i}",
                category=category, display_title=f"Post {i}", excerpt=f"What post {i} says.",
                content_hash="h", first_seen_at=START, updated_at=START)


VIEW = editions.view([post(1, "News"), post(2, "News"), post(3, "Explained")], EDITION, START)
VARIANT_SETTINGS = VariantSettings(NEWSLETTER, (), None, DKIMSettings(), None)


@pytest.fixture(scope="module")
def rendered() -> dict:
    """The edition rendered once for the module (rendering is the slow part, and not what is tested)."""
    v = Variants(lambda catch_up_from: VIEW, "Test Weekly #1", NEWSLETTER, VARIANT_SETTINGS.renderer, START)
    v.render(v.key(None))
    return v.rendered


def send(store: MemoryLedger, mailer, clock, cfg: SenderSettings, rendered: dict, *, sender: str = "host-a:1:aaa",
         stop=lambda: False) -> DeliveryReport:
    variants = Variants(lambda catch_up_from: VIEW, "Test Weekly #1", NEWSLETTER, VARIANT_SETTINGS.renderer, START, None, rendered)
    return run_sender(store, EDITION, 1, variants, mailer, clock, cfg, sender=sender, stop=stop)


def test_everyone_is_mailed_once_and_the_ledger_says_so(tmp_path, clock, rendered):
    store = ledger(120)
    relay = Relay()
    r = send(store, relay, clock, settings(tmp_path), rendered)
    assert (r.sent, r.failed, r.skipped, r.stopped) == (120, 0, 0, False)
    assert sorted(env.recipient for env in relay.sent) == [address(i) for i in range(1, 121)]
    # three batches of 50, then nothing after the last one nor from the start; results went in with them
    assert store.claims == 5
    for d in store.deliveries:
        assert (d.status, d.attempts, d.sent_at, d.claimed_by) == (DeliveryStatus.sent, 1, START, None)
        assert d.message_id.startswith(f"<1.{d.id}.") and d.message_id.endswith("@digest.test>")
    first = email.message_from_bytes(relay.sent[0].data.replace(b"\r\n..", b"\r\n."), policy=policy.default)
    assert first["Message-ID"] == store.by_id[101].message_id and first["To"] == address(1)
    assert relay.sent[0].sender.startswith("bounce+") and relay.sent[0].sender.endswith("@bounces.digest.test")
    assert not any((tmp_path / "journal").iterdir())  # the journal is gone with the sender


def test_inactive_subscribers_and_unwanted_topics_are_skipped(tmp_path, clock, rendered):
    store = ledger(5)
    store.subscribers[2].status = SubscriberStatus.unsubscribed
    store.subscribers[3].paused = True
    store.subscribers[4].topics = ["Architecture"]  # a section this edition does not have
    store.by_id[105].subscriber_id = None  # the subscriber's data was erased
    relay = Relay()
    r = send(store, relay, clock, settings(tmp_path), rendered)
    assert (r.sent, r.skipped) == (1, 4)
    assert [env.recipient for env in relay.sent] == [address(1)]
    for i in (102, 103, 104, 105):
        d = store.by_id[i]
        assert (d.status, d.last_error, d.claimed_by) == (DeliveryStatus.skipped, "subscriber not active or wants none of these topics", None)


def test_a_batch_that_outlasts_its_lease_renews_it_and_no_rival_takes_it(tmp_path, clock, rendered):
    """One batch of 20, a 30 s lease, 5 s per message: the sender renews as it goes."""
    store = ledger(20)
    taken = []

    def slow(env):
        clock.now += timedelta(seconds=5)
        if len(relay.sent) in (8, 15):  # 40 s and 75 s into a batch first leased for 30 s
            taken.append(store.claim(EDITION, "host-b:2:bbb", now=clock.now, until=clock.now + timedelta(seconds=30), limit=100))

    relay = Relay(during=slow)
    r = send(store, relay, clock, settings(tmp_path, batch_size=20), rendered)
    assert taken == [[], []]
    assert r.sent == 20 and len({env.recipient for env in relay.sent}) == 20


def test_a_sender_that_lost_its_claims_sends_none_of_the_rest(tmp_path, clock, rendered, caplog):
    store = ledger(20)
    taken = []

    def stall(env):
        clock.now += timedelta(seconds=5)
        if len(relay.sent) == 5:
            clock.now += timedelta(seconds=60)  # the sender hangs for two leases; a rival takes over
            taken.extend(store.claim(EDITION, "host-b:2:bbb", now=clock.now, until=clock.now + timedelta(seconds=30), limit=100))

    relay = Relay(during=stall)
    with caplog.at_level(logging.WARNING):
        r = send(store, relay, clock, settings(tmp_path, batch_size=20), rendered)
    assert r.sent == 5 and [env.recipient for env in relay.sent] == [address(i) for i in range(1, 6)]
    # the rival took everything without a result yet, the message on the wire included ...
    assert [c.delivery_id for c in taken] == list(range(105, 121))
    # ... whose acceptance is still recorded; the rest is the rival's, untouched
    assert store.by_id[105].status == DeliveryStatus.sent
    rest = [store.by_id[i] for i in range(106, 121)]
    assert all(d.status == DeliveryStatus.pending and d.attempts == 0 and d.claimed_by == "host-b:2:bbb" for d in rest)
    assert "outlived its lease" in caplog.text


def test_a_stop_between_messages_leaves_the_rest_pending_and_unclaimed(tmp_path, clock, rendered):
    store = ledger(30)
    relay = Relay()
    r = send(store, relay, clock, settings(tmp_path, batch_size=20), rendered, stop=lambda: len(relay.sent) >= 7)
    assert (r.sent, r.stopped) == (7, True)
    assert [d.status for d in store.deliveries].count(DeliveryStatus.sent) == 7
    pending = [d for d in store.deliveries if d.status == DeliveryStatus.pending]
    assert len(pending) == 23 and all(d.claimed_by is None and d.attempts == 0 for d in pending)
    # the next sender carries on where this one stopped
    again = Relay()
    assert send(store, again, clock, settings(tmp_path, batch_size=20), rendered, sender="host-a:1:ccc").sent == 23
    assert {env.recipient for env in relay.sent} | {env.recipient for env in again.sent} == {address(i) for i in range(1, 31)}


def test_a_temporary_refusal_backs_off_then_fails_at_max_attempts(tmp_path, clock, rendered):
    store = ledger(3)
    relay = Relay({address(2): Reply(451, "4.7.1 greylisted, try later")})
    cfg = settings(tmp_path, max_attempts=3)
    r = send(store, relay, clock, cfg, rendered)
    d = store.by_id[102]
    assert (r.sent, r.failed) == (2, 0)
    assert (d.status, d.attempts, d.last_error) == (DeliveryStatus.pending, 1, "451 4.7.1 greylisted, try later")
    assert d.next_attempt_at == START + timedelta(minutes=5) and d.claimed_by is None

    # not due yet: nothing is claimed or sent
    assert send(store, relay, clock, cfg, rendered).sent == 0 and len(relay.sent) == 2
    clock.now = START + timedelta(minutes=5)
    send(store, relay, clock, cfg, rendered)
    assert (d.attempts, d.next_attempt_at) == (2, clock.now + timedelta(minutes=30))
    clock.now = d.next_attempt_at
    r = send(store, relay, clock, cfg, rendered)  # the third attempt is the last
    assert (r.failed, r.failures, r.bounced) == (1, [(address(2), "451 4.7.1 greylisted, try later")], 0)
    assert (d.status, d.attempts, d.next_attempt_at) == (DeliveryStatus.failed, 3, None)
    assert store.subscribers[2].status == SubscriberStatus.active


def test_no_such_address_bounces_the_subscriber_other_refusals_do_not(tmp_path, clock, rendered):
    store = ledger(3)
    relay = Relay({address(1): Reply(550, "5.1.1 <reader001@example.com>: no such user"),
                   address(2): Reply(554, "5.7.1 message refused as spam")})
    r = send(store, relay, clock, settings(tmp_path), rendered)
    assert (r.sent, r.failed, r.bounced) == (1, 2, 1)
    assert [(d.status, d.attempts) for d in store.deliveries[:2]] == [(DeliveryStatus.failed, 1)] * 2
    assert store.by_id[101].last_error == "550 5.1.1 <reader001@example.com>: no such user"
    assert store.subscribers[1].status == SubscriberStatus.bounced
    assert store.subscribers[2].status == SubscriberStatus.active


def test_a_dead_senders_journal_is_replayed_once(tmp_path):
    store = ledger(4)
    directory = tmp_path / "journal"
    directory.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = directory / f"{socket.gethostname()}_{gone.stdout.strip()}_abc.log"
    at = START.isoformat()
    dead.write_text(f"101\t<1.101.1@digest.test>\t{at}\n102\t<1.102.2@digest.test>\t{at}\n103\t<1.1", encoding="utf-8")
    alive = directory / f"{socket.gethostname()}_{os.getpid()}_def.log"  # this process: still running
    alive.write_text(f"104\t<1.104.4@digest.test>\t{at}\n", encoding="utf-8")

    assert journal.replay(store, directory) == 2  # the torn last line is not an acceptance
    assert [(d.status, d.message_id, d.sent_at) for d in store.deliveries[:2]] == [
        (DeliveryStatus.sent, "<1.101.1@digest.test>", START), (DeliveryStatus.sent, "<1.102.2@digest.test>", START)]
    assert store.by_id[103].status == store.by_id[104].status == DeliveryStatus.pending
    assert not dead.exists() and alive.exists()
    assert journal.replay(store, directory) == 0


def test_the_memory_ledger_answers_as_the_sql_one(db, clock):
    """The same claims and results on SQLLedger (the test database) and MemoryLedger end the same."""
    from sqlmodel import select

    from digest.delivery.ledger import Results, SQLLedger
    from digest.store.models import Edition, as_utc

    db.add(Edition(number=7, created_at=START, subject="s"))
    db.commit()
    edition_id = db.exec(select(Edition)).one().id

    def rows():
        subs = [Subscriber(email=address(i), status=SubscriberStatus.active, created_at=START, paused=(i == 4),
                           topics=["News"] if i == 3 else None) for i in range(1, 5)]
        return subs

    subs = rows()
    db.add_all(subs)
    db.commit()
    deliveries = [Delivery(edition_id=edition_id, subscriber_id=s.id) for s in subs] + [Delivery(edition_id=edition_id)]
    db.add_all(deliveries)
    db.commit()
    ids = [d.id for d in deliveries]
    twin_subs = rows()
    for s, original in zip(twin_subs, subs, strict=True):
        s.id = original.id
    memory = MemoryLedger([Delivery(id=d.id, edition_id=edition_id, subscriber_id=d.subscriber_id) for d in deliveries], twin_subs)
    t = START
    seconds = lambda n: t + timedelta(seconds=n)  # noqa: E731

    def run(store) -> list:
        said = [store.claim(edition_id, "host-a:1:a", now=t, until=seconds(30), limit=2),
                store.claim(edition_id, "host-b:2:b", now=t, until=seconds(30), limit=10, after=ids[0])]
        results = Results(accepted=[(ids[0], "<7.1.1@digest.test>", seconds(1))],
                          other=[(ids[1], DeliveryStatus.failed, 1, "550 5.1.1 no such user", None)], bounced=[subs[1].id])
        said.append(store.claim(edition_id, "host-a:1:a", now=seconds(2), until=seconds(32), limit=10, results=results))
        said.append(store.renew("host-a:1:a", seconds(40)))  # none left: its two have results
        said.append(store.renew("host-b:2:b", seconds(40)))
        store.record(Results(other=[(ids[2], DeliveryStatus.pending, 1, "451 later", seconds(300))]))
        store.release("host-b:2:b")
        said.append(store.replay([(ids[3], "<7.4.1@digest.test>", seconds(3)), (ids[0], "<again>", seconds(3))]))
        said.append(store.claim(edition_id, "host-c:3:c", now=seconds(4), until=seconds(34), limit=10))
        said.append(store.claim(edition_id, "host-c:3:c", now=seconds(300), until=seconds(330), limit=10))
        return said

    def state(deliveries, subscribers) -> list:
        when = lambda v: None if v is None else as_utc(v)  # noqa: E731
        return ([(d.id, d.status, d.attempts, d.last_error, d.message_id, when(d.sent_at), when(d.next_attempt_at),
                  d.claimed_by, when(d.claimed_until)) for d in sorted(deliveries, key=lambda d: d.id)],
                sorted((s.id, s.status) for s in subscribers))

    said_sql = run(SQLLedger(db))
    db.expire_all()
    in_sql = state(db.exec(select(Delivery)).all(), db.exec(select(Subscriber)).all())
    said_memory = run(memory)
    assert said_memory == said_sql
    assert state(memory.deliveries, memory.subscribers.values()) == in_sql

    # and what they said is what the rules say
    first, second, after_results, renew_a, renew_b, replayed, rest, retried = said_sql
    assert [c.delivery_id for c in first] == ids[:2] and [c.delivery_id for c in second] == ids[2:]
    assert [c.active for c in second] == [True, False, False]  # paused; no subscriber left
    assert second[0].topics == '["News"]' and (second[0].email, second[0].subscriber_id) == (address(3), subs[2].id)
    assert (after_results, renew_a, renew_b, replayed) == ([], 0, 3, 2)
    assert [c.delivery_id for c in rest] == ids[4:]
    assert [c.delivery_id for c in retried] == [ids[2], ids[4]]  # due again; host-c's claim ran out
    statuses = [row[1] for row in in_sql[0]]
    assert statuses == [DeliveryStatus.sent, DeliveryStatus.failed, DeliveryStatus.pending, DeliveryStatus.sent, DeliveryStatus.pending]
    assert in_sql[0][0][4] == "<7.1.1@digest.test>"  # a replay does not touch a delivery already sent
    assert dict(in_sql[1])[subs[1].id] == SubscriberStatus.bounced
