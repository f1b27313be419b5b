"""Delivering an edition: the ledger, failures, unreachable servers, crash and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import pytest
from sqlmodel import select

from conftest import DIGEST, free_port, run_digest, subscribe
from digest.content import render
from digest.mail.mailer import SMTPMailer
from digest.service import pipeline as jobs
from digest.service import subscribers
from digest.store.models import Delivery, DeliveryStatus, Edition, EditionStatus


def add_subscribers(db, clock, n: int, domain: str = "example.com") -> list[str]:
    addrs = [f"reader{i:05d}@{domain}" for i in range(n)]
    for a in addrs:
        subscribers.add(db, a, clock)
    return addrs


@pytest.mark.slow
def test_permanent_refusal_marks_one_failed_and_the_run_goes_on(db, settings, clock, smtp_server):
    addrs = add_subscribers(db, clock, 5)
    smtp_server.refuse[addrs[2]] = "550 5.1.1 <reader00002@example.com>: mailbox unknown"
    result = jobs.send(db, settings, SMTPMailer(settings.smtp), clock)
    r = result.edition
    assert (r.sent, r.failed, r.pending) == (4, 1, 0)
    assert sorted(x.recipients[0] for x in smtp_server.received) == sorted(set(addrs) - {addrs[2]})
    failed = db.exec(select(Delivery).where(Delivery.status == DeliveryStatus.failed)).one()
    assert "550 5.1.1" in failed.last_error and "mailbox unknown" in failed.last_error
    sent = db.exec(select(Delivery).where(Delivery.status == DeliveryStatus.sent)).all()
    assert all(d.message_id and d.sent_at for d in sent)
    assert db.exec(select(Edition)).one().status == EditionStatus.sent
    # the CLI shows the failure with the server's reply
    show = run_digest(settings._config_path, "editions", "show", "1", check=True)
    assert "reader00002@example.com" in show.stdout and "mailbox unknown" in show.stdout


def test_temporary_refusal_stays_pending_for_a_later_run(db, settings, clock, smtp_server):
    addrs = add_subscribers(db, clock, 3)
    smtp_server.refuse[addrs[0]] = "451 4.3.0 try again later"
    r = jobs.send(db, settings, SMTPMailer(settings.smtp), clock).edition
    assert (r.sent, r.failed, r.pending) == (2, 0, 1)
    d = db.exec(select(Delivery).where(Delivery.status == DeliveryStatus.pending)).one()
    assert d.attempts == 1 and "451" in d.last_error and d.next_attempt_at > clock.now
    del smtp_server.refuse[addrs[0]]
    clock.now = d.next_attempt_at
    again = jobs.send(db, settings, SMTPMailer(settings.smtp), clock)
    assert again.resumed[0].sent == 1 and again.edition is None
    assert db.exec(select(Edition)).one().status == EditionStatus.sent
    assert len(smtp_server.to(addrs[0])) == 1


@pytest.mark.slow
def test_unreachable_server_is_a_clear_error_and_nothing_is_lost(tmp_path, smtp_server):
    from conftest import write_config
    port = free_port()  # nothing listens here
    config = write_config(tmp_path, smtp_port=port)
    subscribe(config, "ann@example.com", "bob@example.com")
    proc = run_digest(config, "send")
    assert proc.returncode != 0
    assert f"127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr
    listing = run_digest(config, "editions", check=True).stdout
    assert "sending" in listing  # the edition waits, its deliveries pending
    # the server comes back: the next run delivers the same edition, and builds no new one
    config.write_text(config.read_text().replace(f"port = {port}", f"port = {smtp_server.port}"))
    proc = run_digest(config, "send", check=True)
    assert "Resumed edition 1: 2 delivered, 0 failed" in proc.stdout and "Nothing new" in proc.stdout
    assert sorted(r.recipients[0] for r in smtp_server.received) == ["ann@example.com", "bob@example.com"]


def test_subscribers_who_join_after_the_edition_was_created_do_not_get_it(db, settings, clock, smtp_server):
    from digest.content import editions
    add_subscribers(db, clock, 2)
    jobs.poll(db, settings, clock)
    edition = editions.create(db, clock, subject_template=settings.newsletter.subject, newsletter_name=settings.newsletter.name)
    subscribers.add(db, "late@example.com", clock)
    result = jobs.send(db, settings, SMTPMailer(settings.smtp), clock, fetch=False)
    assert result.resumed[0].edition_number == edition.number and result.resumed[0].sent == 2
    assert smtp_server.to("late@example.com") == []


def test_unsubscribed_before_sending_is_skipped(db, settings, clock, smtp_server):
    from digest.content import editions
    addrs = add_subscribers(db, clock, 2)
    jobs.poll(db, settings, clock)
    editions.create(db, clock, subject_template=settings.newsletter.subject, newsletter_name=settings.newsletter.name)
    subscribers.unsubscribe(db, subscribers.get(db, addrs[0]), clock)
    r = jobs.send(db, settings, SMTPMailer(settings.smtp), clock, fetch=False).resumed[0]
    assert (r.sent, r.skipped) == (1, 1) and smtp_server.to(addrs[0]) == []


def test_mjml_is_compiled_once_per_edition_not_per_subscriber(db, settings, clock, smtp_server, monkeypatch):
    calls = []
    real = render.compile_mjml
    monkeypatch.setattr(render, "compile_mjml", lambda src: calls.append(1) or real(src))
    add_subscribers(db, clock, 40)
    r = jobs.send(db, settings, SMTPMailer(settings.smtp), clock).edition
    assert r.sent == 40 and len(calls) == 1


@pytest.mark.slow
def test_sigkill_mid_send_then_resume_mails_everyone_and_duplicates_at_most_in_flight(tmp_path, smtp_server):
    from conftest import write_config
    n = 300
    config = write_config(tmp_path, smtp_port=smtp_server.port)
    config.write_text(config.read_text().replace("# batch_size = 200", "batch_size = 100"))
    subscribe(config, *(f"reader{i:04d}@example.com" for i in range(n)))

    killed = threading.Event()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    proc = subprocess.Popen([*DIGEST, "--config", str(config), "send"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def kill_midway(_msg):
        if len(smtp_server.received) == 120 and not killed.is_set():
            killed.set()
            os.kill(proc.pid, signal.SIGKILL)

    smtp_server.on_message = kill_midway
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    smtp_server.on_message = None
    got_before = len(smtp_server.received)
    assert got_before < n

    resume = run_digest(config, "send", check=True)
    assert "Resumed edition 1" in resume.stdout
    per_address: dict[str, int] = {}
    for r in smtp_server.received:
        per_address[r.recipients[0]] = per_address.get(r.recipients[0], 0) + 1
    assert len(per_address) == n  # nobody lost
    duplicates = sum(c - 1 for c in per_address.values())
    # only the message in flight when the process died can go twice (the journal keeps the rest)
    assert duplicates <= 1, f"{duplicates} duplicates"
    assert not any((tmp_path / ".digest-journal").glob("*.log"))
    assert "sent" in run_digest(config, "editions", check=True).stdout
