"""Bounces: DSNs (RFC 3464) read from a Maildir, an mbox or .eml files, traced back to their
delivery by the VERP envelope sender; hard bounce -> bounced, three soft in a row -> suspended."""

from __future__ import annotations

import mailbox
from datetime import timedelta

import pytest
from sqlmodel import select

from conftest import run_digest
from digest import bounces, dsn, jobs, subscribers
from digest.mailer import SMTPMailer
from digest.models import Delivery, DeliveryStatus, Edition, EditionStatus, SubscriberStatus
from digest.verp import VERP


def make_dsn(to: str, recipient: str, status: str, *, action: str = "failed", diagnostic: str | None = None,
             message_id: str = "<orig@digest.test>", returned: str = "headers") -> bytes:
    diagnostic = diagnostic or f"smtp; 550 {status} <{recipient}>: Recipient address rejected"
    original = (f"Return-Path: <{to}>\nFrom: Test Weekly <news@digest.test>\nTo: {recipient}\n"
                f"Subject: Test Weekly: 5 new posts\nMessage-ID: {message_id}\n")
    if returned == "message":
        returned_part = f"Content-Type: message/rfc822\n\n{original}\nhello\n"
    else:
        returned_part = f"Content-Type: text/rfc822-headers\n\n{original}"
    return f"""Return-Path: <>
Delivered-To: {to}
From: MAILER-DAEMON@mx.example.com (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B0UND"

--B0UND
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.

--B0UND
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.com
Arrival-Date: Thu, 26 Nov 2026 09:00:00 +0000

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Diagnostic-Code: {diagnostic}

--B0UND
{returned_part}
--B0UND--
""".replace("\n", "\r\n").encode()


@pytest.fixture
def sent(db, settings, clock, smtp_server):
    """An edition sent to three subscribers; {address: delivery}."""
    for a in ("ann@example.com", "bob@example.com", "cy@example.com"):
        subscribers.add(db, a, clock)
    jobs.send(db, settings, SMTPMailer(settings.smtp), clock)
    by_addr = {r.recipients[0]: r.sender for r in smtp_server.received}
    deliveries = {}
    verp = VERP(settings.newsletter.secret_key, settings.bounce_domain)
    for addr, sender in by_addr.items():
        deliveries[addr] = db.get(Delivery, verp.read(sender))
    return deliveries, by_addr


def test_dsn_parsing_and_classification():
    raw = make_dsn("bounce+1-000000000000@digest.test", "Ann@Example.com", "5.1.1")
    d = dsn.parse(raw)
    assert d.recipients[0].recipient == "ann@example.com" and d.recipients[0].kind == "hard"
    assert d.original_message_id == "<orig@digest.test>" and "bounce+1-000000000000@digest.test" in d.addresses
    assert dsn.bounce_kind("failed", "5.2.2") == "soft"  # mailbox full
    assert dsn.bounce_kind("failed", "5.7.1") == "soft"  # refused by policy: not the address's fault
    assert dsn.bounce_kind("failed", "4.4.7") == "soft"  # gave up retrying
    assert dsn.bounce_kind("failed", "5.4.4") == "soft"  # unable to route (a DNS failure): no such domain is 5.1.2
    assert dsn.bounce_kind("delayed", "4.4.1") is None
    assert dsn.reply_status(550, "5.1.1 <a@b>: user unknown") == "5.1.1"
    assert dsn.reply_status(550, "mailbox unavailable") is None
    with pytest.raises(dsn.NotADSN, match="not a delivery status notification"):
        dsn.parse(b"From: a@b\r\nTo: c@d\r\nSubject: Out of office\r\n\r\nI am away.\r\n")


def test_hard_bounce_marks_the_subscriber_bounced_and_they_get_no_next_edition(tmp_path, db, settings, clock, sent, smtp_server):
    deliveries, senders = sent
    bad = make_dsn(senders["ann@example.com"], "ann@example.com", "5.1.1")
    path = tmp_path / "bounce.eml"
    path.write_bytes(bad)
    report = bounces.process(db, settings, path, clock)
    assert (report.read, report.hard, report.soft, report.bounced) == (1, 1, 0, ["ann@example.com"])
    assert subscribers.get(db, "ann@example.com").status == SubscriberStatus.bounced
    d = db.get(Delivery, deliveries["ann@example.com"].id)
    assert d.status == DeliveryStatus.failed and d.last_error.startswith("bounced (hard): 5.1.1")
    # idempotent: the same mailbox again changes nothing
    again = bounces.process(db, settings, path, clock)
    assert (again.hard, again.bounced, len(again.ignored)) == (0, [], 1)
    # `digest editions show` lists it with the DSN's diagnostic; `digest retry` leaves it alone
    show = run_digest(settings._config_path, "editions", "show", "1", check=True).stdout
    assert "ann@example.com" in show and "Recipient address rejected" in show
    assert "retried 0" in run_digest(settings._config_path, "retry", "1", check=True).stdout
    # the next edition is not mailed to the bounced address
    _new_post(db, clock)
    r = jobs.send(db, settings, SMTPMailer(settings.smtp), clock, fetch=False).edition
    assert r.edition_number == 2 and r.sent == 2
    assert sorted(r.recipients[0] for r in smtp_server.received[3:]) == ["bob@example.com", "cy@example.com"]


def _new_post(db, clock):
    """A new post appears in the source, so the next `send` builds edition 2."""
    from digest.models import Post, Source
    src = db.exec(select(Source)).first()
    now = clock()
    db.add(Post(source_id=src.id, guid="new-post", url="https://blog.example.com/new", title="News: A new post",
                category="News", display_title="A new post", excerpt="Something new.", content_hash="x",
                first_seen_at=now, updated_at=now, published_at=now))
    db.commit()


def test_three_soft_bounces_in_a_row_suspend_and_a_delivered_edition_breaks_the_run(tmp_path, db, settings, clock):
    verp = VERP(settings.newsletter.secret_key, settings.bounce_domain)
    sub, _ = subscribers.add(db, "full@example.com", clock)
    other, _ = subscribers.add(db, "other@example.com", clock)
    ids = {}
    for n in range(1, 6):
        e = Edition(number=n, created_at=clock() + timedelta(days=n), status=EditionStatus.sent, subject=f"#{n}")
        db.add(e)
        db.flush()
        for s in (sub, other):
            d = Delivery(edition_id=e.id, subscriber_id=s.id, status=DeliveryStatus.sent, attempts=1, message_id=f"<{n}.{s.id}@digest.test>")
            db.add(d)
            db.flush()
            ids[(n, s.id)] = d.id
    db.commit()
    box = mailbox.Maildir(str(tmp_path / "Maildir"), create=True)
    # editions 1, 2 soft-bounce, 3 went through, 4 soft-bounces: no run of three yet
    for n in (1, 2, 4):
        box.add(make_dsn(verp.sender(ids[(n, sub.id)]), "full@example.com", "4.2.2", diagnostic="smtp; 452 4.2.2 mailbox full"))
    report = bounces.process(db, settings, tmp_path / "Maildir", clock)
    assert (report.soft, report.suspended) == (3, [])
    assert subscribers.get(db, "full@example.com").status == SubscriberStatus.active
    # edition 5 soft-bounces too, found only by the returned Message-ID (no VERP address): 4, 5 + ... still two
    box.add(make_dsn("postmaster@digest.test", "full@example.com", "5.2.2", message_id=f"<5.{sub.id}@digest.test>", returned="message"))
    assert bounces.process(db, settings, tmp_path / "Maildir", clock).suspended == []
    # and edition 3 bounces late after all: 1-5 are now five in a row
    box.add(make_dsn(verp.sender(ids[(3, sub.id)]), "full@example.com", "5.7.1", diagnostic="smtp; 554 5.7.1 spam"))
    report = bounces.process(db, settings, tmp_path / "Maildir", clock)
    assert report.suspended == ["full@example.com"]
    assert subscribers.get(db, "full@example.com").status == SubscriberStatus.suspended
    assert subscribers.get(db, "other@example.com").status == SubscriberStatus.active
    # reactivating starts the count afresh
    clock.now = clock.now + timedelta(days=30)
    subscribers.add(db, "full@example.com", clock)
    assert bounces.soft_bounces_in_a_row(db, subscribers.get(db, "full@example.com")) == 0


def test_mbox_and_what_cannot_be_read_is_reported_not_guessed(tmp_path, db, settings, clock, sent):
    deliveries, senders = sent
    forged = senders["bob@example.com"][:-15] + "000000000000@digest.test"
    box = mailbox.mbox(str(tmp_path / "bounces.mbox"), create=True)
    box.add(make_dsn(senders["bob@example.com"], "bob@example.com", "5.1.1"))
    box.add(make_dsn(forged, "cy@example.com", "5.1.1", message_id="<unknown@elsewhere>"))
    box.add(b"From: someone@example.com\r\nSubject: Re: your newsletter\r\n\r\nThanks!\r\n")
    box.add(make_dsn(senders["cy@example.com"], "cy@example.com", "4.4.1", action="delayed"))
    box.flush()
    proc = run_digest(settings._config_path, "bounces", "process", str(tmp_path / "bounces.mbox"), check=True)
    assert "Read 4 messages: 1 hard bounces, 0 soft bounces, 1 without effect, 2 not understood" in proc.stdout
    assert "bounced: bob@example.com" in proc.stdout
    assert "names no delivery of ours" in proc.stderr and "not a delivery status notification" in proc.stderr
    db.expire_all()
    assert subscribers.get(db, "bob@example.com").status == SubscriberStatus.bounced
    assert subscribers.get(db, "cy@example.com").status == SubscriberStatus.active
    missing = run_digest(settings._config_path, "bounces", "process", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "no such file or directory" in missing.stderr
