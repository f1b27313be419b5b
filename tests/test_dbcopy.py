"""`digest db copy`: moving a publication to a new database (SQLite -> PostgreSQL under
`make test-pg`, SQLite -> SQLite otherwise) without losing a subscriber, a link or the history."""

from __future__ import annotations

import email
from datetime import UTC
from email import policy

import pytest
from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import SQLModel, select

from conftest import database_url, run_digest, subscribe, write_config
from digest.config import load_settings
from digest.links import Links
from digest.mail.mailer import SMTPMailer
from digest.service import pipeline as jobs
from digest.service import signup, subscribers
from digest.store.database import make_engine, session
from digest.store.models import Delivery, DeliveryStatus, Edition, Subscriber, SubscriberStatus
from digest.store.schema import create_schema


def counts(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t.name: conn.execute(sa_select(func.count()).select_from(t)).scalar_one() for t in SQLModel.metadata.sorted_tables}


def unsubscribe_token(received) -> str:
    msg = email.message_from_bytes(received.data, policy=policy.default)
    return msg["List-Unsubscribe"].strip("<>").rsplit("/", 1)[1]


def target_url(tmp_path) -> str:
    where = tmp_path / "target"
    where.mkdir()
    return database_url(where)  # a second database: on PostgreSQL a new one on the test server


def test_copy_keeps_subscribers_links_history_and_the_ledger(tmp_path, smtp_server, clock):
    # The source is always a SQLite file (what an install starts with).
    source_url = f"sqlite:///{tmp_path / 'old.db'}"
    config = write_config(tmp_path, smtp_port=smtp_server.port, database_url=source_url)
    settings = load_settings(config)
    src = make_engine(settings.database_url)
    create_schema(src)
    with session(src) as db:
        for a in ("ann@example.com", "bob@example.com", "cy@example.com"):
            subscribers.add(db, a, clock)
        bob = db.exec(select(Subscriber).where(Subscriber.email == "bob@example.com")).one()
        signup.save_preferences(db, bob, categories=["In Focus", "News, Events"], known=["Explained", "In Focus", "News, Events"])
        smtp_server.refuse["cy@example.com"] = "451 4.7.1 greylisted"
        r = jobs.send(db, settings, SMTPMailer(settings.smtp), clock).edition
        assert (r.sent, r.pending) == (2, 1)
    before = counts(src)
    ann_mail = smtp_server.to("ann@example.com")[0]

    target = target_url(tmp_path)
    done = run_digest(config, "db", "copy", target, check=True)
    assert "Copied to" in done.stdout and "subscriber 3," in done.stdout and "delivery 3," in done.stdout
    dst = make_engine(target)
    assert counts(dst) == before
    assert counts(src) == before  # the source is only read

    # Run the publication on the new database from here on.
    moved = load_settings(config).model_copy(update={"database": settings.database.model_copy(update={"url": target})})
    with session(dst) as db:
        # the unsubscribe link in the email Ann already has works against the new database
        assert signup.unsubscribe(db, clock, Links(settings.newsletter.secret_key, settings.newsletter.public_url, clock=clock),
                                  unsubscribe_token(ann_mail))
        assert db.exec(select(Subscriber).where(Subscriber.email == "ann@example.com")).one().status == SubscriberStatus.unsubscribed
        # Bob's topics came along, each name whole
        assert db.exec(select(Subscriber).where(Subscriber.email == "bob@example.com")).one().topics == ["In Focus", "News, Events"]
        # the deferred delivery kept its attempt count and next attempt
        deferred = db.exec(select(Delivery).where(Delivery.status == DeliveryStatus.pending)).one()
        assert deferred.attempts == 1 and "451" in deferred.last_error and deferred.claimed_by is None
        # a new subscriber gets a new id (sequences moved past the copied ids on PostgreSQL)
        dee, _ = subscribers.add(db, "dee@example.com", clock)
        assert dee.id == 4
        # nothing already sent goes out again; the retry does when it is due
        del smtp_server.refuse["cy@example.com"]
        clock.now = deferred.next_attempt_at
        again = jobs.send(db, moved, SMTPMailer(moved.smtp), clock)
        assert again.edition is None and again.resumed[0].sent == 1
        assert [e.number for e in db.exec(select(Edition)).all()] == [1]
    assert len(smtp_server.to("ann@example.com")) == 1 and len(smtp_server.to("cy@example.com")) == 1
    assert len(smtp_server.to("dee@example.com")) == 0
    src.dispose()
    dst.dispose()


@pytest.mark.slow
def test_copy_refuses_a_target_with_data_itself_and_a_bad_url(tmp_path, smtp_server, clock):
    config = write_config(tmp_path, smtp_port=smtp_server.port, database_url=f"sqlite:///{tmp_path / 'old.db'}")
    subscribe(config, "ann@example.com")
    target = target_url(tmp_path)
    run_digest(config, "db", "copy", target, check=True)
    dst = make_engine(target)
    before = counts(dst)

    again = run_digest(config, "db", "copy", target)
    assert again.returncode == 1 and "target database is not empty (table" in again.stderr
    assert counts(dst) == before  # untouched
    itself = run_digest(config, "db", "copy", f"sqlite:///{tmp_path / 'old.db'}")
    assert itself.returncode == 1 and "the target is the configured database itself" in itself.stderr
    bad = run_digest(config, "db", "copy", "not a url")
    assert bad.returncode == 1 and "not a database URL" in bad.stderr
    dst.dispose()


@pytest.mark.slow
def test_copy_waits_for_senders_still_at_work(tmp_path, smtp_server, clock):
    from datetime import datetime, timedelta

    config = write_config(tmp_path, smtp_port=smtp_server.port, database_url=f"sqlite:///{tmp_path / 'old.db'}")
    settings = load_settings(config)
    src = make_engine(settings.database_url)
    create_schema(src)
    with session(src) as db:
        subscribers.add(db, "ann@example.com", clock)
        smtp_server.refuse["ann@example.com"] = "451 4.7.1 later"
        jobs.send(db, settings, SMTPMailer(settings.smtp), clock)
        d = db.exec(select(Delivery)).one()
        d.claimed_by, d.claimed_until = "other-host:42:abc", datetime.now(UTC) + timedelta(minutes=5)
        db.add(d)
        db.commit()
    busy = run_digest(config, "db", "copy", target_url(tmp_path))
    assert busy.returncode == 1 and "1 deliveries are being sent right now" in busy.stderr
    src.dispose()
