"""The outbox: mail a request queued, sent by whoever claims it (the app's relay threads, `digest
worker`), each row once. Real database, real SMTP server (aiosmtpd)."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

from sqlmodel import select

from conftest import run_digest
from digest.content.render import Renderer
from digest.delivery import outbox
from digest.links import Links
from digest.mail.mailer import SMTPMailer
from digest.service import signup
from digest.service import subscribers as subs
from digest.store.database import make_engine, session
from digest.store.models import Outbox, OutboxStatus, Subscriber, SubscriberStatus


def sign_up(db, clock, email: str):
    return signup.subscribe(db, clock, email=email)


def outbox_kinds(settings, clock):
    links = Links(settings.newsletter.secret_key, settings.newsletter.public_url, clock)
    return signup.outbox_kinds(settings, links, clock, Renderer.from_settings(settings))


def test_two_senders_at_once_send_every_row_exactly_once(db, settings, clock, smtp_server):
    addresses = [f"reader{i}@example.com" for i in range(30)]
    for a in addresses:
        assert sign_up(db, clock, a).mailed
    kinds = outbox_kinds(settings, clock)
    engine = make_engine(settings.database_url)

    def sender(name: str) -> None:
        with session(engine) as s, SMTPMailer(settings.smtp) as mailer:
            outbox.drain(s, mailer, kinds, clock, sender=name, max_attempts=8)

    threads = [threading.Thread(target=sender, args=(f"sender-{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    engine.dispose()
    got = Counter(r for m in smtp_server.received for r in m.recipients)
    assert got == Counter({a: 1 for a in addresses})
    db.expire_all()
    assert {r.status for r in db.exec(select(Outbox)).all()} == {OutboxStatus.sent}


def test_digest_worker_sends_queued_confirmation_mails(db, config_path, clock, smtp_server):
    sign_up(db, clock, "ann@example.com")
    out = run_digest(config_path, "worker", "--once", check=True).stdout
    assert "Confirmation mails: 1 sent, 0 failed, 0 to retry" in out
    [mail] = smtp_server.to("ann@example.com")
    assert mail.message["Subject"] == "Confirm your subscription to Test Weekly"
    assert "Nothing to send." in run_digest(config_path, "worker", "--once", check=True).stdout


def test_a_confirmation_no_longer_needed_is_skipped(db, settings, clock, smtp_server):
    sign_up(db, clock, "ann@example.com")
    sign_up(db, clock, "bob@example.com")
    ann = db.exec(select(Subscriber).where(Subscriber.email == "ann@example.com")).one()
    ann.status = SubscriberStatus.active  # confirmed through an earlier mail meanwhile
    db.add(ann)
    db.commit()
    bob = db.exec(select(Subscriber).where(Subscriber.email == "bob@example.com")).one()
    subs.erase(db, bob)  # erased: their queued mail goes with them
    with SMTPMailer(settings.smtp) as mailer:
        done = outbox.drain(db, mailer, outbox_kinds(settings, clock), clock, sender="w", max_attempts=8)
    assert (done.sent, done.skipped) == (0, 1)
    assert smtp_server.received == []
    assert [r.recipient for r in db.exec(select(Outbox)).all()] == ["ann@example.com"]


def test_temporary_failures_are_retried_with_backoff_then_given_up(db, settings, clock, smtp_server):
    smtp_server.refuse["ann@example.com"] = "451 4.7.1 try later"
    sign_up(db, clock, "ann@example.com")
    kinds = outbox_kinds(settings, clock)
    with SMTPMailer(settings.smtp) as mailer:
        for attempt in range(1, 4):
            done = outbox.send_due(db, mailer, kinds, clock, sender="w", max_attempts=3)
            assert done.claimed == 1
            row = db.exec(select(Outbox)).one()
            assert row.attempts == attempt
            assert outbox.send_due(db, mailer, kinds, clock, sender="w", max_attempts=3).claimed == 0  # not due yet
            clock.now += outbox.backoff(attempt) + timedelta(seconds=1)
    assert row.status == OutboxStatus.failed and row.last_error == "451 4.7.1 try later"
    sub = db.exec(select(Subscriber)).one()
    db.refresh(sub)
    assert sub.confirmation_sent_at is None  # given up: the reader may ask again at once
    assert sign_up(db, clock, "ann@example.com").mailed
