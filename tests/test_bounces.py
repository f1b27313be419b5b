"""Bounces: DSNs (RFC 3464) read from a Maildir, an mbox or .eml files, traced back to their
delivery by the VERP envelope sender; hard bounce -> bounced, three soft in a row -> suspended."""

from __future__ import annotations

import mailbox
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from conftest import run_digest
from digest.delivery import bounces
from digest.mail import dsn
from digest.mail.mailer import SMTPMailer
from digest.mail.verp import VERP
from digest.service import pipeline as jobs
from digest.service import subscribers
from digest.store.models import Delivery, DeliveryStatus, Edition, EditionStatus, SubscriberStatus


def verp_of(settings) -> VERP:
    return VERP(settings.newsletter.secret_key, settings.bounce_domain)


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
    report = bounces.process(db, verp_of(settings), path, clock)
    assert (report.read, report.hard, report.soft, report.bounced) == (1, 1, 0, ["ann@example.com"])
    assert subscribers.get(db, "ann@example.com").status == SubscriberStatus.bounced
    d = db.get(Delivery, deliveries["ann@example.com"].id)
    assert d.status == DeliveryStatus.failed and d.last_error.startswith("bounced (hard): 5.1.1")
    # idempotent: the same mailbox again changes nothing
    again = bounces.process(db, verp_of(settings), path, clock)
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
    from digest.store.models import Post, Source
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
    report = bounces.process(db, verp_of(settings), tmp_path / "Maildir", clock)
    assert (report.soft, report.suspended) == (3, [])
    assert subscribers.get(db, "full@example.com").status == SubscriberStatus.active
    # edition 5 soft-bounces too, found only by the returned Message-ID (no VERP address): 4, 5 + ... still two
    box.add(make_dsn("postmaster@digest.test", "full@example.com", "5.2.2", message_id=f"<5.{sub.id}@digest.test>", returned="message"))
    assert bounces.process(db, verp_of(settings), tmp_path / "Maildir", clock).suspended == []
    # and edition 3 bounces late after all: 1-5 are now five in a row
    box.add(make_dsn(verp.sender(ids[(3, sub.id)]), "full@example.com", "5.7.1", diagnostic="smtp; 554 5.7.1 spam"))
    report = bounces.process(db, verp_of(settings), tmp_path / "Maildir", clock)
    assert report.suspended == ["full@example.com"]
    assert subscribers.get(db, "full@example.com").status == SubscriberStatus.suspended
    assert subscribers.get(db, "other@example.com").status == SubscriberStatus.active
    # reactivating starts the count afresh
    clock.now = clock.now + timedelta(days=30)
    subscribers.add(db, "full@example.com", clock)
    assert bounces.soft_bounces_in_a_row(db, subscribers.get(db, "full@example.com")) == 0


def test_mbox_and_what_cannot_be_read_is_reported_not_guessed(tmp_path, db, settings, clock, sent):
    _, senders = sent
    forged = senders["bob@example.com"][:-15] + "000000000000@digest.test"
    box = mailbox.mbox(str(tmp_path / "bounces.mbox"), create=True)
    box.add(make_dsn(senders["bob@example.com"], "bob@example.com", "5.1.1"))
    box.add(make_dsn(forged, "cy@example.com", "5.1.1", message_id="<unknown@elsewhere>"))
    box.add(b"From: someone@example.com\r\nSubject: Re: your newsletter\r\n\r\nThanks!\r\n")
    box.add(make_dsn(senders["cy@example.com"], "cy@example.com", "4.4.1", action="delayed"))
    box.flush()
    proc = run_digest(settings._config_path, "bounces", "process", str(tmp_path / "bounces.mbox"), check=True)
    assert "Read 4 messages: 1 hard bounce, 0 soft bounces, 1 without effect, 2 not understood" in proc.stdout
    assert "bounced: bob@example.com" in proc.stdout
    assert "names no delivery of ours" in proc.stderr and "not a delivery status notification" in proc.stderr
    db.expire_all()
    assert subscribers.get(db, "bob@example.com").status == SubscriberStatus.bounced
    assert subscribers.get(db, "cy@example.com").status == SubscriberStatus.active
    missing = run_digest(settings._config_path, "bounces", "process", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "no such file or directory" in missing.stderr


# One file per mail system's shape, written for the project (invented hosts and addresses),
# modelled on real DSNs. "{{VERP}}" stands for the VERP address the bounce came back to.
# name: (the subscriber's address it bounces, the verdict: hard / soft / None (not a bounce) /
# "unparseable")
FIXTURES = Path(__file__).parent / "fixtures" / "bounces"
VERDICTS = {
    "postfix-user-unknown.eml": ("ann.lee@example.org", "hard"),
    "postfix-sender-domain.eml": ("bo.chen@example.net", "soft"),  # 5.1.8: *our* sender's domain
    "sendmail-headers-too-large.eml": ("cara.diaz@example.com", "soft"),  # 5.6.0: the message, not the address
    "sendmail-two-recipients.eml": ("dev.ng@example.org", "soft"),  # the block naming dev decides (5.2.2), not fran's 5.1.1
    "exim-no-such-user.eml": ("eli.park@example.net", "hard"),  # generic 5.0.0, "No such user here"
    "exim-quota.eml": ("gus.ruiz@example.com", "soft"),  # generic 5.0.0, the remote server's 5.2.2
    "office365-recipient-not-found.eml": ("hana.sato@example.org", "hard"),  # 5.1.10
    "gmail-no-such-account.eml": ("ivan.petrov@example.com", "hard"),
    "gmail-delayed.eml": ("jo.kim@example.net", None),
    "yahoo-policy.eml": ("kai.tan@example.org", "soft"),  # 5.7.9 policy
    "yahoo-free-text.eml": ("lea.moreau@example.com", "unparseable"),  # neither RFC 3464 nor QSBMF
    "ses-user-unknown.eml": ("max.braun@example.net", "hard"),
    "qmail-no-mailbox.eml": ("nia.osei@example.org", "hard"),  # QSBMF, (#5.1.1)
    "qmail-remote-full.eml": ("omar.haddad@example.com", "soft"),  # QSBMF, remote 552 5.2.2
    "gateway-action-comment.eml": ("pia.lund@example.net", "hard"),  # "Action: failed (Bad destination mailbox address)"
    "gateway-disk-quota.eml": ("quinn.ives@example.org", "soft"),  # "Status: 5.0.0 (recipient reached disk quota)"
}


def fixture_for(name: str, verp_address: str) -> bytes:
    return (FIXTURES / name).read_bytes().replace(b"{{VERP}}", verp_address.encode())


def test_every_fixture_has_a_verdict():
    assert sorted(p.name for p in FIXTURES.glob("*.eml")) == sorted(VERDICTS)


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_each_mail_systems_bounce_is_judged(name):
    address, verdict = VERDICTS[name]
    raw = fixture_for(name, "bounce+1f-0123456789ab@digest.test")
    if verdict == "unparseable":
        with pytest.raises(dsn.NotADSN):
            dsn.parse(raw)
        return
    notice = dsn.parse(raw)
    assert "bounce+1f-0123456789ab@digest.test" in " ".join(notice.addresses)
    assert notice.status_for(address).kind == verdict


def test_action_and_status_comments_and_case():
    raw = make_dsn("bounce+1-000000000000@digest.test", "a@example.org", "5.1.1", action="Failed (Bad destination mailbox address)")
    r = dsn.parse(raw).recipients[0]
    assert (r.action, r.status, r.kind) == ("failed", "5.1.1", "hard")
    assert "Bad destination mailbox address" in r.diagnostic
    raw = make_dsn("bounce+1-000000000000@digest.test", "a@example.org", "5.0.0 (recipient reached disk quota)", diagnostic=" ")
    r = dsn.parse(raw).recipients[0]
    assert (r.status, r.diagnostic, r.kind) == ("5.0.0", "recipient reached disk quota", "soft")


@pytest.mark.parametrize("status, diagnostic, kind", [
    ("5.1.1", "550 5.1.1 mailbox unavailable", "hard"),
    ("5.1.2", "550 5.1.2 bad destination system", "hard"),
    ("5.1.3", "501 5.1.3 bad address syntax", "hard"),
    ("5.1.6", "550 5.1.6 recipient no longer on server", "hard"),
    ("5.1.10", "550 5.1.10 RecipientNotFound", "hard"),
    ("5.0.0", "550 user unknown", "hard"),
    ("5.0.0", "550 Recipient address rejected: User unknown in local recipient table", "hard"),
    ("5.0.0", "550 The mailbox does not exist", "hard"),
    ("5.0.0", "550 Invalid recipient", "hard"),
    ("5.0.0", "550 <ann@space.example>: user unknown", "hard"),  # the address is not the reason
    (None, "No such user here", "hard"),  # a 5xx reply without an enhanced code
    ("5.0.0", "recipient reached disk quota", "soft"),
    ("5.0.0", "552 user unknown or mailbox full", "soft"),  # says both: not clearly dead
    ("5.0.0", "550 Domain of sender address does not exist", "soft"),
    ("5.0.0", "550 5.7.1 <x>: user unknown to our spam filter", "soft"),  # the quoted 5.7.1 decides
    ("5.0.0", "550 Requested action not taken: mailbox unavailable", "soft"),  # RFC 5321's generic text
    (None, None, "soft"),
    ("5.1.8", "553 5.1.8 Domain of sender address does not exist", "soft"),
    ("5.6.0", "552 5.6.0 Headers too large", "soft"),
    ("5.2.2", "552 5.2.2 Mailbox full", "soft"),
    ("5.2.1", "550 5.2.1 account disabled", "soft"),
    ("5.4.4", "550 5.4.4 unable to route", "soft"),
    ("5.7.1", "550 5.7.1 user unknown", "soft"),  # a policy code: the words do not overrule it
    ("4.2.2", "452 4.2.2 user unknown", "soft"),
])
def test_one_rule_for_hard_and_soft(status, diagnostic, kind):
    assert dsn.failure_kind(status, diagnostic) == kind


def test_several_recipients_are_judged_for_the_subscribers_address():
    def block(recipient, status, action="failed", original=None):
        return dsn.RecipientStatus(recipient=recipient, action=action, status=status, original_recipient=original)
    notice = dsn.DSN(recipients=(block("x@example.org", "5.1.1"), block("ann@example.org", "5.2.2")))
    assert notice.status_for("Ann@Example.org").kind == "soft"  # the block that names her
    notice = dsn.DSN(recipients=(block("ann@store-daemon", "5.1.1", original="ann@example.org"),))
    assert notice.status_for("ann@example.org").kind == "hard"  # Original-Recipient names her
    notice = dsn.DSN(recipients=(block("internal-7@store", "5.1.1"),))
    assert notice.status_for("ann@example.org").kind == "hard"  # one block: VERP named the delivery
    # an alias expanded to two mailboxes, neither named: dead only if every one is
    notice = dsn.DSN(recipients=(block("a@example.org", "5.1.1"), block("b@example.org", "5.2.2")))
    assert notice.status_for("team@example.org").kind == "soft"
    notice = dsn.DSN(recipients=(block("a@example.org", "5.1.1"), block("b@example.org", "4.4.1", action="delayed")))
    assert notice.status_for("team@example.org").kind is None


def _editions_for(db, clock, addresses, n):
    """n sent editions, each delivered to every address; {(edition number, address): delivery id}."""
    subs = {a: subscribers.add(db, a, clock)[0] for a in addresses}
    ids = {}
    for number in range(1, n + 1):
        e = Edition(number=number, created_at=clock() + timedelta(days=number), status=EditionStatus.sent, subject=f"#{number}")
        db.add(e)
        db.flush()
        for a, s in subs.items():
            d = Delivery(edition_id=e.id, subscriber_id=s.id, status=DeliveryStatus.sent, attempts=1, message_id=f"<{number}.{s.id}@digest.test>")
            db.add(d)
            db.flush()
            ids[(number, a)] = d.id
    db.commit()
    return ids


def test_bounces_process_marks_exactly_the_dead_addresses(tmp_path, db, settings, clock):
    verp = VERP(settings.newsletter.secret_key, settings.bounce_domain)
    ids = _editions_for(db, clock, [a for a, _ in VERDICTS.values()] + ["fran.ortiz@example.org"], 1)
    box = tmp_path / "bounces"
    box.mkdir()
    for name, (address, _) in VERDICTS.items():
        (box / name).write_bytes(fixture_for(name, verp.sender(ids[(1, address)])))
    proc = run_digest(settings._config_path, "bounces", "process", str(box), check=True)
    hard = sorted(a for a, v in VERDICTS.values() if v == "hard")
    soft = [a for a, v in VERDICTS.values() if v == "soft"]
    assert f"Read {len(VERDICTS)} messages: {len(hard)} hard bounces, {len(soft)} soft bounces, 1 without effect, 1 not understood" in proc.stdout
    assert "yahoo-free-text.eml" in proc.stderr and "Traceback" not in proc.stderr
    db.expire_all()
    status = {a: subscribers.get(db, a).status for a, _ in VERDICTS.values()}
    assert sorted(a for a, s in status.items() if s == SubscriberStatus.bounced) == hard
    assert all(status[a] == SubscriberStatus.active for a in status if a not in hard)
    # fran's 5.1.1 was in dev's bounce, about another message: fran stays active
    assert subscribers.get(db, "fran.ortiz@example.org").status == SubscriberStatus.active
    for a in soft:
        d = db.get(Delivery, ids[(1, a)])
        assert d.status == DeliveryStatus.failed and d.last_error.startswith("bounced (soft): ")


def test_the_once_misjudged_soft_bounces_suspend_after_three_in_a_row(tmp_path, db, settings, clock):
    """5.0.0 disk quota, 5.6.0 headers too large, 5.1.8 bad sender domain: each soft (they used to
    mark a live reader bounced); three editions in a row of them suspend."""
    verp = VERP(settings.newsletter.secret_key, settings.bounce_domain)
    reader = "quinn.ives@example.org"
    ids = _editions_for(db, clock, [reader], 3)
    box = mailbox.Maildir(str(tmp_path / "Maildir"), create=True)
    for number, name in enumerate(["gateway-disk-quota.eml", "sendmail-headers-too-large.eml", "postfix-sender-domain.eml"], 1):
        box.add(fixture_for(name, verp.sender(ids[(number, reader)])))
        report = bounces.process(db, verp_of(settings), tmp_path / "Maildir", clock)
        assert (report.hard, report.soft, report.bounced) == (0, 1, [])
        assert report.suspended == ([reader] if number == 3 else [])
    assert subscribers.get(db, reader).status == SubscriberStatus.suspended


SEND_TIME_REPLIES = {  # address: (the server's reply at RCPT, dead?)
    "gone@example.com": ("550 5.1.1 <gone@example.com>: no such user", True),
    "plain@example.com": ("550 No such user here", True),  # no enhanced code: the words decide
    "generic@example.com": ("550 5.0.0 <generic@example.com>: user unknown", True),
    "quota@example.com": ("550 5.0.0 recipient reached disk quota", False),
    "headers@example.com": ("552 5.6.0 Headers too large", False),
    "sender@example.com": ("553 5.1.8 Domain of sender address does not exist", False),
    "spam@example.com": ("554 5.7.1 Message refused as spam", False),
}


def test_send_time_reply_and_bounce_are_judged_by_one_rule(tmp_path, db, settings, clock, smtp_server):
    for address, (reply, _) in SEND_TIME_REPLIES.items():
        subscribers.add(db, address, clock)
        smtp_server.refuse[address] = reply
    subscribers.add(db, "fine@example.com", clock)
    r = jobs.send(db, settings, SMTPMailer(settings.smtp), clock).edition
    dead = sorted(a for a, (_, d) in SEND_TIME_REPLIES.items() if d)
    assert (r.sent, r.failed, r.bounced) == (1, len(SEND_TIME_REPLIES), len(dead))
    db.expire_all()
    assert sorted(a for a in SEND_TIME_REPLIES if subscribers.get(db, a).status == SubscriberStatus.bounced) == dead
    # the same replies coming back later in a DSN get the same verdict
    for address, (reply, is_dead) in SEND_TIME_REPLIES.items():
        code, text = reply.split(" ", 1)
        status = dsn.reply_status(int(code), text) or "5.0.0"
        notice = dsn.parse(make_dsn("bounce+1-000000000000@digest.test", address, status, diagnostic=f"smtp; {reply}"))
        assert notice.status_for(address).kind == ("hard" if is_dead else "soft"), address
