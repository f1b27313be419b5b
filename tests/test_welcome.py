"""The welcome mail: once per reader, when they confirm on the web or are added with `--welcome`,
through the outbox, with the latest edition's posts in their topics. A real app (FastAPI's
TestClient), a real SMTP server (aiosmtpd) and the real `digest` command."""

from __future__ import annotations

import re
import warnings
from datetime import timedelta

import pytest
from sqlmodel import select

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx's successor
    from fastapi.testclient import TestClient

from conftest import fetch, one_line_error, run_digest, settled, write_config
from digest.config import load_settings
from digest.content.render import Renderer
from digest.delivery import outbox
from digest.links import Links
from digest.mail.mailer import SMTPMailer
from digest.service import pipeline as jobs
from digest.service import signup, welcome
from digest.service import subscribers as subs
from digest.service.web import create_app
from digest.store.models import Outbox, Subscriber, SubscriberStatus

CONFIRM_LINK = re.compile(r"https?://[^\s\"<>]+(/confirm/[A-Za-z0-9._-]+)")
WELCOME_SUBJECT = "Welcome to Test Weekly"
# The fixture blog (tests/fixtures/blogger.atom): its posts by section, as `digest send` sorts them.
SECTIONS = ["ARCHITECTURE", "EXPLAINED", "IN FOCUS"]


def mails(smtp_server, address: str, subject: str) -> list:
    return [r.message for r in smtp_server.to(address) if r.message["Subject"] == subject]


def sections_of(message) -> list[str]:
    return re.findall(r"^== (.+) ==\r?$", message.get_body(("plain",)).get_content(), re.M)


def sign_up_and_confirm(client, db, smtp_server, address: str, **form) -> str:
    """Subscribe on the form, confirm with the link of the mail; the confirm path."""
    client.post("/subscribe", data={"email": address, **form})
    settled(db)
    [mail] = mails(smtp_server, address, "Confirm your subscription to Test Weekly")
    path = CONFIRM_LINK.search(mail.get_body(("plain",)).get_content()).group(1)
    assert client.post(path).status_code == 200
    settled(db)
    return path


def send_edition(db, settings, clock, smtp_server) -> None:
    """Edition 1 of the fixture blog's posts, sent to one reader (so it is published)."""
    subs.add(db, "first@example.com", clock)
    with SMTPMailer(settings.smtp) as mailer:
        jobs.send(db, settings, mailer, clock, fetch=False)
    smtp_server.received.clear()


def relay(db, settings, clock, sender: str = "test") -> outbox.Pass:
    """Send what the outbox holds now, as `digest worker` does."""
    links = Links(settings.newsletter.secret_key, settings.newsletter.public_url, clock)
    kinds = signup.outbox_kinds(settings, links, clock, Renderer.from_settings(settings))
    with SMTPMailer(settings.smtp) as mailer:
        return outbox.drain(db, mailer, kinds, clock, sender=sender, max_attempts=8)


@pytest.fixture
def posts(db, settings, clock):
    jobs.poll(db, settings, clock)


def test_a_reader_who_confirms_gets_one_welcome_with_the_latest_editions_posts_in_their_topics(
        db, settings, clock, smtp_server, posts):
    send_edition(db, settings, clock, smtp_server)
    clock.now += timedelta(days=1)
    with TestClient(create_app(settings, clock=clock)) as client:
        sign_up_and_confirm(client, db, smtp_server, "ann@example.com", name="Ann", categories=["In Focus"])

    [mail] = mails(smtp_server, "ann@example.com", WELCOME_SUBJECT)
    assert sections_of(mail) == ["IN FOCUS"]
    text = mail.get_body(("plain",)).get_content()
    html = mail.get_body(("html",)).get_content()
    assert "Hi Ann, welcome to Test Weekly!" in text and "Hi Ann, welcome to Test Weekly!" in html
    assert "here is what the latest edition (November 26, 2026) had for you" in text
    assert "View in browser: http://127.0.0.1:8000/archive/1" in text
    # its own unsubscribe and preferences links, as an edition has
    assert re.fullmatch(r"<http://127\.0\.0\.1:8000/unsubscribe/[^>]+>", mail["List-Unsubscribe"])
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail["List-Unsubscribe"][1:-1] in text and "/preferences/" in text
    sub = db.exec(select(Subscriber).where(Subscriber.email == "ann@example.com")).one()
    assert sub.welcomed_at is not None


def test_a_reader_of_every_topic_gets_every_section_of_the_latest_edition(
        db, settings, clock, smtp_server, posts):
    send_edition(db, settings, clock, smtp_server)
    with TestClient(create_app(settings, clock=clock)) as client:
        sign_up_and_confirm(client, db, smtp_server, "ann@example.com")
    [mail] = mails(smtp_server, "ann@example.com", WELCOME_SUBJECT)
    assert sections_of(mail) == SECTIONS
    assert "Hi there, welcome to Test Weekly!" in mail.get_body(("plain",)).get_content()


def test_a_second_confirmation_sends_no_second_welcome(db, settings, clock, smtp_server, posts):
    with TestClient(create_app(settings, clock=clock)) as client:
        path = sign_up_and_confirm(client, db, smtp_server, "ann@example.com")
        assert client.post(path).status_code == 200  # the button pressed again
        settled(db)
        # She leaves, comes back through the form and confirms again: still her one welcome.
        sub = db.exec(select(Subscriber).where(Subscriber.email == "ann@example.com")).one()
        subs.unsubscribe(db, sub, clock)
        clock.now += timedelta(hours=1)
        smtp_server.received.clear()
        sign_up_and_confirm(client, db, smtp_server, "ann@example.com")
        assert db.exec(select(Subscriber).where(Subscriber.email == "ann@example.com")).one().status \
            == SubscriberStatus.active
    assert mails(smtp_server, "ann@example.com", WELCOME_SUBJECT) == []
    assert len(db.exec(select(Outbox).where(Outbox.kind == welcome.WELCOME)).all()) == 1


def test_no_welcome_when_it_is_turned_off(tmp_path, db, clock, smtp_server, posts):
    settings = load_settings(tmp_path / "digest.toml", welcome={"enabled": False})
    with TestClient(create_app(settings, clock=clock)) as client:
        sign_up_and_confirm(client, db, smtp_server, "ann@example.com")
    assert [r.message["Subject"] for r in smtp_server.received] == ["Confirm your subscription to Test Weekly"]
    assert db.exec(select(Subscriber)).one().welcomed_at is None


def test_on_a_new_list_the_welcome_shows_the_newest_posts_of_the_readers_topics(
        tmp_path, db, clock, smtp_server, posts):
    settings = load_settings(tmp_path / "digest.toml", welcome={"newest_posts": 2, "subject": "{name}: {n} to start"})
    with TestClient(create_app(settings, clock=clock)) as client:
        sign_up_and_confirm(client, db, smtp_server, "ann@example.com", categories=["Explained", "In Focus"])
    [mail] = mails(smtp_server, "ann@example.com", "Test Weekly: 2 to start")
    text = mail.get_body(("plain",)).get_content()
    assert "To start, here are the newest posts." in text and "View in browser" not in text
    assert set(sections_of(mail)) <= {"EXPLAINED", "IN FOCUS"}
    assert len(re.findall(r"^Read more: ", text, re.M)) == 2


def test_a_topic_the_latest_edition_lacks_gets_the_greeting_alone(db, settings, clock, smtp_server, posts):
    send_edition(db, settings, clock, smtp_server)
    sub, _ = subs.add(db, "ann@example.com", clock)
    sub.topics = ["Gardening"]
    db.add(sub)
    db.commit()
    welcome.queue(db, sub.id, sub.email, clock.now)
    db.commit()
    relay(db, settings, clock)
    [mail] = mails(smtp_server, "ann@example.com", WELCOME_SUBJECT)
    assert sections_of(mail) == []
    assert "Your first digest comes with the next edition." in mail.get_body(("plain",)).get_content()


def test_a_sent_welcome_is_not_sent_again_and_a_dead_senders_claim_waits_for_its_lease(
        db, settings, clock, smtp_server, posts):
    subs.add(db, "ann@example.com", clock, welcome_mail=True)

    def drain(sender: str) -> outbox.Pass:
        return relay(db, settings, clock, sender)

    # A sender claims the row and dies before sending: nobody else sends it while its lease holds.
    assert len(outbox.claim(db, "dead", clock.now, ["welcome"])) == 1
    assert drain("alive").claimed == 0
    clock.now += outbox.LEASE + timedelta(seconds=1)
    assert drain("alive").sent == 1
    assert drain("alive").claimed == 0  # sent: a relay going over it again sends nothing
    clock.now += timedelta(days=1)
    assert drain("later").claimed == 0
    assert len(mails(smtp_server, "ann@example.com", WELCOME_SUBJECT)) == 1


def test_a_welcome_queued_in_a_transaction_that_never_commits_leaves_nothing(db, clock):
    sub, _ = subs.add(db, "ann@example.com", clock)
    assert welcome.queue(db, sub.id, sub.email, clock.now)
    db.rollback()  # the process died before its commit
    assert db.exec(select(Outbox)).all() == []
    assert db.get(Subscriber, sub.id).welcomed_at is None
    assert welcome.queue(db, sub.id, sub.email, clock.now)  # the next confirmation queues it
    db.commit()
    assert not welcome.queue(db, sub.id, sub.email, clock.now)
    db.commit()
    assert len(db.exec(select(Outbox)).all()) == 1


def test_a_welcome_of_ones_own(tmp_path, db, clock, smtp_server, posts):
    own = tmp_path / "own"
    own.mkdir()
    (own / "welcome.txt.j2").write_text("Glad you are here, {{ name }}: {{ edition.post_count }} posts.\n"
                                        "Leave: {{ unsubscribe_url }}\n")
    settings = load_settings(tmp_path / "digest.toml", edition={"templates_dir": str(own)})
    with TestClient(create_app(settings, clock=clock)) as client:
        sign_up_and_confirm(client, db, smtp_server, "ann@example.com", name="Ann")
    [mail] = mails(smtp_server, "ann@example.com", WELCOME_SUBJECT)
    text = mail.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert re.fullmatch(r"Glad you are here, Ann: 5 posts\.\nLeave: http://127\.0\.0\.1:8000/unsubscribe/\S+\n",
                        text), text


def test_subscribers_add_welcome_queues_one_welcome_that_a_worker_sends(tmp_path, smtp_server):
    config = write_config(tmp_path, smtp_port=smtp_server.port)
    fetch(config)  # in this process: the subject is `subscribers add --welcome`
    added = run_digest(config, "subscribers", "add", "ann@example.com", "--name", "Ann", "--welcome", check=True)
    assert "Welcome mail queued" in added.stdout
    again = run_digest(config, "subscribers", "add", "ann@example.com", "--welcome", check=True)
    assert "ann@example.com had their welcome mail already: none queued" in again.stdout
    run_digest(config, "subscribers", "add", "bob@example.com", check=True)  # without: none
    run_digest(config, "worker", "--once", check=True)
    [mail] = mails(smtp_server, "ann@example.com", WELCOME_SUBJECT)
    assert "Hi Ann, welcome to Test Weekly!" in mail.get_body(("plain",)).get_content()
    assert sections_of(mail) == SECTIONS
    assert smtp_server.to("bob@example.com") == []
    run_digest(config, "worker", "--once", check=True)
    assert len(smtp_server.received) == 1


def test_subscribers_add_welcome_when_welcomes_are_off_is_an_error(tmp_path, smtp_server):
    config = write_config(tmp_path, smtp_port=smtp_server.port)
    proc = run_digest(config, "subscribers", "add", "ann@example.com", "--welcome",
                      env={"DIGEST_WELCOME__ENABLED": "false"})
    assert proc.returncode != 0
    assert "welcome.enabled is false" in one_line_error(proc)
    assert "ann@example.com" not in run_digest(config, "subscribers", "list", check=True).stdout


def test_a_reader_who_leaves_before_their_welcome_goes_out_does_not_get_it(db, settings, clock, smtp_server):
    sub, _ = subs.add(db, "ann@example.com", clock, welcome_mail=True)
    subs.unsubscribe(db, sub, clock)
    done = relay(db, settings, clock)
    assert (done.skipped, done.sent) == (1, 0)
    assert smtp_server.received == []
