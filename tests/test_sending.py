"""The delivery engine at work: sender processes, dropped connections, rate limits, retries,
addresses that do not exist."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from datetime import timedelta

import pytest
from sqlmodel import select

from conftest import DIGEST, run_digest, subscribe, write_config
from digest.config import load_settings
from digest.content import render
from digest.mail.mailer import Pacer, SMTPMailer
from digest.service import pipeline as jobs
from digest.service import signup, subscribers
from digest.store.database import make_engine, session
from digest.store.models import Delivery, DeliveryStatus, Edition, EditionStatus, SubscriberStatus
from digest.store.schema import create_schema


def open_db(config):
    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    create_schema(engine)
    return settings, session(engine)


def add(db, clock, n, domain="example.com"):
    addrs = [f"reader{i:05d}@{domain}" for i in range(n)]
    for a in addrs:
        subscribers.add(db, a, clock)
    return addrs


def per_address(server) -> Counter:
    return Counter(r.recipients[0] for r in server.received)


def test_a_small_edition_starts_no_sender_processes(tmp_path, smtp_server, clock, monkeypatch):
    from digest.delivery import pool
    monkeypatch.setattr(pool, "run_processes", lambda *a, **k: pytest.fail("no sender process needed"))
    config = write_config(tmp_path, smtp_port=smtp_server.port, connections=4)  # batch_size 200
    settings, db = open_db(config)
    with db:
        add(db, clock, 150)
        assert jobs.send(db, settings, SMTPMailer(settings.smtp), clock).edition.sent == 150


def test_four_sender_processes_mail_everyone_once_and_render_once(tmp_path, smtp_server, clock, monkeypatch):
    calls = []
    real = render.compile_mjml
    monkeypatch.setattr(render, "compile_mjml", lambda src: calls.append(1) or real(src))
    config = write_config(tmp_path, smtp_port=smtp_server.port, connections=4, extra="batch_size = 25\n")
    settings, db = open_db(config)
    with db:
        addrs = add(db, clock, 150)
        # 40 readers chose two of the three sections (ticked in either order: one choice)
        known = ["Architecture", "Explained", "In Focus"]
        for i, a in enumerate(addrs[100:140]):
            ticked = ["In Focus", "Explained"] if i % 2 else ["Explained", "In Focus"]
            signup.save_preferences(db, subscribers.get(db, a), categories=ticked, known=known)
        smtp_server.refuse[addrs[7]] = "550 5.1.1 <x>: no such user"
        smtp_server.refuse[addrs[8]] = "451 4.7.1 greylisted, try later"
        r = jobs.send(db, settings, SMTPMailer(settings.smtp), clock).edition
        assert (r.sent, r.failed, r.pending, r.bounced) == (148, 1, 1, 1)
        assert per_address(smtp_server) == Counter({a: 1 for a in addrs if a not in (addrs[7], addrs[8])})
        assert len(calls) == 2  # the parent rendered each distinct choice; the senders only personalized
        assert "ARCHITECTURE" not in smtp_server.to(addrs[101])[0].message.get_body(("plain",)).get_content()
        rows = db.exec(select(Delivery)).all()
        assert Counter(d.status for d in rows) == {DeliveryStatus.sent: 148, DeliveryStatus.failed: 1, DeliveryStatus.pending: 1}
        assert all(d.claimed_by is None for d in rows)
        # a "no such user" reply (5.1.1) marks the address bounced: it is not mailed again
        assert subscribers.get(db, addrs[7]).status == SubscriberStatus.bounced
    assert not any((tmp_path / ".digest-journal").glob("*.log"))


@pytest.mark.slow
def test_cli_send_with_sender_processes_and_an_unreachable_server(tmp_path, smtp_server):
    from conftest import free_port
    port = free_port()
    config = write_config(tmp_path, smtp_port=port, connections=3, extra="batch_size = 30\n")
    subscribe(config, *(f"r{i}@example.com" for i in range(90)))
    proc = run_digest(config, "send")
    assert proc.returncode == 1 and f"127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    config.write_text(config.read_text().replace(f"port = {port}", f"port = {smtp_server.port}"))
    proc = run_digest(config, "send", check=True)
    assert "Resumed edition 1: 90 delivered, 0 failed" in proc.stdout
    assert per_address(smtp_server) == Counter({f"r{i}@example.com": 1 for i in range(90)})


@pytest.mark.parametrize("connections", [1, 3])
def test_dropped_connections_are_reopened_and_the_messages_resent(tmp_path, smtp_server, clock, connections):
    config = write_config(tmp_path, smtp_port=smtp_server.port, connections=connections, extra="batch_size = 10\n")
    settings, db = open_db(config)
    smtp_server.data_hook = lambda n: "drop" if n in (5, 20, 30) else ("421 4.3.2 shutting down" if n == 50 else None)
    with db:
        addrs = add(db, clock, 80)
        r = jobs.send(db, settings, SMTPMailer(settings.smtp), clock).edition
        assert (r.sent, r.failed, r.pending) == (80, 0, 0)
    # the dropped messages were never accepted, so each address got exactly one
    assert per_address(smtp_server) == Counter({a: 1 for a in addrs})
    assert 1 + 4 <= smtp_server.connections <= connections + 4  # one new connection per drop and per 421


def test_a_message_that_keeps_breaking_the_connection_is_deferred_not_lost(tmp_path, smtp_server, clock):
    config = write_config(tmp_path, smtp_port=smtp_server.port)
    settings, db = open_db(config)
    with db:
        addrs = add(db, clock, 10)
        victim = addrs[3]
        def hook(n):
            return "drop" if smtp_server.current == victim else None
        smtp_server.current = None
        real_refuse = smtp_server.refuse
        class Watch(dict):  # note who is being sent to (RCPT comes before DATA)
            def get(self, address, default=None):
                smtp_server.current = address
                return real_refuse.get(address, default)
        smtp_server.refuse = Watch()
        smtp_server.data_hook = hook
        r = jobs.send(db, settings, SMTPMailer(settings.smtp), clock).edition
        assert (r.sent, r.failed, r.pending) == (9, 0, 1)
        d = db.exec(select(Delivery).where(Delivery.status == DeliveryStatus.pending)).one()
        # one attempt, retried after the first back-off step (300 s), and the reason is the drop
        assert d.attempts == 1
        assert d.next_attempt_at == clock.now + timedelta(seconds=300)
        assert "connection closed" in d.last_error
    assert per_address(smtp_server) == Counter({a: 1 for a in addrs if a != victim})


def test_temporary_failures_back_off_then_fail_after_max_attempts(tmp_path, smtp_server, clock):
    config = write_config(tmp_path, smtp_port=smtp_server.port, extra="")
    config.write_text(config.read_text().replace("# max_attempts = 8 ", "max_attempts = 3 "))
    settings, db = open_db(config)
    assert settings.smtp.max_attempts == 3
    with db:
        addrs = add(db, clock, 2)
        smtp_server.refuse[addrs[0]] = "452 4.2.2 mailbox full"
        waits = []
        for _ in range(3):
            jobs.send(db, settings, SMTPMailer(settings.smtp), clock)
            db.expire_all()
            d = db.exec(select(Delivery).where(Delivery.id == 1)).one()
            if d.next_attempt_at:
                waits.append(d.next_attempt_at - clock.now)
                clock.now = d.next_attempt_at
        assert [w.total_seconds() for w in waits] == [300, 1800]
        assert d.status == DeliveryStatus.failed and d.attempts == 3 and "452 4.2.2" in d.last_error
        assert db.exec(select(Edition)).one().status == EditionStatus.sent
        # the operator retries it on demand once the mailbox has room
        del smtp_server.refuse[addrs[0]]
    proc = run_digest(config, "retry", "1", check=True)
    assert "Edition 1: retried 1: 1 delivered, 0 failed" in proc.stdout
    assert per_address(smtp_server)[addrs[0]] == 1
    with session(make_engine(settings.database_url)) as db2:
        assert db2.exec(select(Edition)).one().status == EditionStatus.sent


def test_editions_show_lists_failures_and_deferred_deliveries_with_replies(tmp_path, smtp_server, clock):
    config = write_config(tmp_path, smtp_port=smtp_server.port)
    settings, db = open_db(config)
    with db:
        addrs = add(db, clock, 3)
        smtp_server.refuse[addrs[0]] = "554 5.7.1 rejected by policy"
        smtp_server.refuse[addrs[1]] = "421 4.7.0 too many messages, slow down"
        jobs.send(db, settings, SMTPMailer(settings.smtp), clock)
    show = run_digest(config, "editions", "show", "1", check=True).stdout
    assert "Failures:" in show and addrs[0] in show and "554 5.7.1 rejected by policy" in show
    assert "Deferred" in show and addrs[1] in show and "too many messages" in show and "next attempt" in show


def test_rate_limit_spaces_messages_over_all_connections(tmp_path, smtp_server, clock):
    config = write_config(tmp_path, smtp_port=smtp_server.port, connections=2, extra="batch_size = 10\n")
    config.write_text(config.read_text().replace("# rate_limit = 0 ", "rate_limit = 40 "))
    settings, db = open_db(config)
    stamps = []
    smtp_server.on_message = lambda _r: stamps.append(time.monotonic())
    with db:
        add(db, clock, 40)
        r = jobs.send(db, settings, SMTPMailer(settings.smtp), clock).edition
    assert r.sent == 40
    span = stamps[-1] - stamps[0]
    assert span >= 0.8, span  # 40 messages at 40/s: about one second, never a burst


def test_pacer_spaces_evenly_and_stops():
    now = [0.0]
    slept = []

    def sleep(dt):
        slept.append(dt)
        now[0] += dt

    pacer = Pacer(10, monotonic=lambda: now[0], sleep=sleep)
    times = []
    for _ in range(5):
        assert pacer.wait()
        times.append(round(now[0], 3))
    assert times == [0.0, 0.1, 0.2, 0.3, 0.4]
    slow = Pacer(0.1, monotonic=lambda: now[0], sleep=sleep)
    assert slow.wait() and not slow.wait(stop=lambda: True)


def _spawn_send(config, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    return subprocess.Popen([*DIGEST, "--config", str(config), "send"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _import(config, tmp_path, n):
    subscribe(config, *(f"r{i:04d}@example.com" for i in range(n)))


def _settled(config, timeout=10.0):
    """Wait until no delivery is claimed (the sender processes have finished and released)."""
    _, db = open_db(config)
    deadline = time.monotonic() + timeout
    with db:
        while True:
            db.expire_all()
            rows = db.exec(select(Delivery)).all()
            if all(d.claimed_by is None for d in rows) or time.monotonic() > deadline:
                return rows


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_the_sender_stops_every_sender_process_between_messages(tmp_path, smtp_server, sig):
    """SIGTERM: `digest send` tells its sender processes to stop, waits for them, exits 143.
    SIGKILL of `digest send` alone: its sender processes notice their parent is gone and stop the
    same way. Either way every message that went out is in the ledger and the rest is pending."""
    n = 400
    config = write_config(tmp_path, smtp_port=smtp_server.port, connections=4, extra="batch_size = 20\n")
    _import(config, tmp_path, n)
    proc = _spawn_send(config, tmp_path)
    smtp_server.on_message = lambda _m: len(smtp_server.received) == 60 and os.kill(proc.pid, sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == (143 if sig == signal.SIGTERM else -signal.SIGKILL)
    if sig == signal.SIGTERM:
        assert b"Stopped by SIGTERM" in stderr
    rows = _settled(config)
    smtp_server.on_message = None
    got = len(smtp_server.received)
    assert got < n
    assert sum(d.status == DeliveryStatus.sent for d in rows) == got
    assert all(d.claimed_by is None for d in rows)
    resume = run_digest(config, "send", check=True)
    assert "Resumed edition 1" in resume.stdout
    assert per_address(smtp_server) == Counter({f"r{i:04d}@example.com": 1 for i in range(n)})
    assert not any((tmp_path / ".digest-journal").glob("*.log"))


@pytest.mark.slow
def test_sigkill_of_every_sender_process_resends_at_most_one_message_per_connection(tmp_path, smtp_server):
    n, connections = 300, 3
    config = write_config(tmp_path, smtp_port=smtp_server.port, connections=connections, extra="batch_size = 50\n")
    _import(config, tmp_path, n)
    proc = _spawn_send(config, tmp_path)

    def kill_all(_m):
        if len(smtp_server.received) == 100:
            os.killpg(proc.pid, signal.SIGKILL)

    smtp_server.on_message = kill_all
    proc.wait(timeout=60)
    time.sleep(0.3)
    smtp_server.on_message = None
    assert len(smtp_server.received) < n
    resume = run_digest(config, "send", check=True)
    assert "Resumed edition 1" in resume.stdout
    counts = per_address(smtp_server)
    assert len(counts) == n
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates <= connections, f"{duplicates} duplicates"
    assert not any((tmp_path / ".digest-journal").glob("*.log"))


def _slow_relay_setup(tmp_path, smtp_server, clock, n):
    """One connection, one batch of n, a 30 s lease; the relay takes 5 s (of the test's clock)
    per message. Returns settings, the sender's session, a rival's session and the addresses."""
    config = write_config(tmp_path, smtp_port=smtp_server.port, extra=f"batch_size = {n}\nlease_seconds = 30\n")
    settings, db = open_db(config)
    rival = session(make_engine(settings.database_url))
    addrs = add(db, clock, n)
    return settings, db, rival, addrs


def _rival_claim(rival, clock):
    from datetime import timedelta

    from digest.delivery.ledger import SQLLedger

    edition = rival.exec(select(Edition)).one()
    return SQLLedger(rival).claim(edition.id, "rival-host:1:abc", now=clock.now, until=clock.now + timedelta(seconds=30), limit=100)


def test_a_batch_that_outlasts_its_lease_keeps_it_and_is_not_taken_over(tmp_path, smtp_server, clock):
    settings, db, rival, addrs = _slow_relay_setup(tmp_path, smtp_server, clock, 20)
    taken = []

    def slow(_m):
        clock.now += timedelta(seconds=5)
        if len(smtp_server.received) in (8, 15):  # 40 s and 75 s into a batch leased for 30 s
            taken.append(_rival_claim(rival, clock))

    smtp_server.on_message = slow
    with db, rival:
        r = jobs.send(db, settings, SMTPMailer(settings.smtp), clock).edition
    assert taken == [[], []]  # the sender's lease was renewed as it went: nothing to take over
    assert r.sent == 20 and per_address(smtp_server) == Counter({a: 1 for a in addrs})


def test_a_sender_that_lost_its_claims_stops_sending_them(tmp_path, smtp_server, clock, caplog):
    settings, db, rival, _ = _slow_relay_setup(tmp_path, smtp_server, clock, 20)
    taken = []

    def stall(_m):
        clock.now += timedelta(seconds=5)
        if len(smtp_server.received) == 5:
            clock.now += timedelta(seconds=60)  # the sender hangs for two leases; a rival takes over
            taken.extend(_rival_claim(rival, clock))

    smtp_server.on_message = stall
    with db, rival:
        r = jobs.send(db, settings, SMTPMailer(settings.smtp), clock).edition
        rival_ids = {c.delivery_id for c in taken}
        assert len(rival_ids) == 16  # all that had no outcome recorded yet, the message being received included
        rows = db.exec(select(Delivery).where(Delivery.id.in_(rival_ids))).all()
    mailed = per_address(smtp_server)
    assert all(n == 1 for n in mailed.values())
    # the sender let go of the batch: only what was already on the wire (the message being
    # received, and the next one's commands) went to addresses the rival now holds
    assert sum(1 for d in rows if d.status == DeliveryStatus.sent) <= 2
    assert r.sent == len(mailed) <= 6
    assert all(d.claimed_by == "rival-host:1:abc" for d in rows if d.status == DeliveryStatus.pending)
    assert "outlived its lease" in caplog.text


def test_a_clock_that_cannot_go_to_another_process_falls_back_to_one_connection(tmp_path, smtp_server, clock, caplog):
    # the test process has threads (the SMTP server), so sender processes would start by forkserver,
    # which pickles the job; a lambda clock cannot be pickled
    config = write_config(tmp_path, smtp_port=smtp_server.port, connections=4, extra="batch_size = 2\n")
    settings, db = open_db(config)
    with db:
        addrs = add(db, clock, 5)
        r = jobs.send(db, settings, SMTPMailer(settings.smtp), lambda: clock.now).edition
    assert r.sent == 5 and per_address(smtp_server) == Counter({a: 1 for a in addrs})
    assert "sending from this process over one connection" in caplog.text


def test_delivery_settings_defaults_and_environment(tmp_path, monkeypatch):
    from digest.config import render_config
    path = tmp_path / "digest.toml"
    path.write_text(render_config(feeds=["feed.xml"]))
    s = load_settings(path)
    assert (s.smtp.connections, s.smtp.rate_limit, s.smtp.max_attempts, s.smtp.bounce_domain) == (4, 0, 8, None)
    assert s.bounce_domain == "example.com" and s.newsletter.feedback_id is None and not s.dkim.enabled
    monkeypatch.setenv("DIGEST_SMTP__BOUNCE_DOMAIN", "Bounces.Example.com")
    monkeypatch.setenv("DIGEST_SMTP__CONNECTIONS", "8")
    s = load_settings(path)
    assert s.bounce_domain == "bounces.example.com" and s.smtp.connections == 8
    monkeypatch.setenv("DIGEST_SMTP__BOUNCE_DOMAIN", "not a domain")
    from digest.errors import ConfigError
    with pytest.raises(ConfigError, match=re.escape("invalid setting 'smtp.bounce_domain'")):
        load_settings(path)
