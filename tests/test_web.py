"""The web app readers use, through its HTTP endpoints (FastAPI's TestClient), with a real SQLite
file and a real SMTP server (aiosmtpd) receiving the confirmation mails."""

from __future__ import annotations

import re
import shutil
import time
import warnings
from datetime import timedelta
from html import unescape
from html.parser import HTMLParser
from xml.etree import ElementTree

import feedparser
import pytest
from sqlmodel import select

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx's successor
    from fastapi.testclient import TestClient

from conftest import settled, write_config
from digest.config import load_settings
from digest.content import editions, render
from digest.links import Links
from digest.mail.mailer import SMTPMailer
from digest.service import pipeline as jobs
from digest.service import subscribers as subs
from digest.service.web import create_app
from digest.store.database import make_engine, session
from digest.store.models import Outbox, OutboxStatus, Post, Subscriber, SubscriberStatus, as_utc
from digest.store.schema import create_schema

CONFIRM_LINK = re.compile(r"https?://[^\s\"<>]+/confirm/[A-Za-z0-9._-]+")


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def app(settings, clock):
    return create_app(settings, clock=clock)


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture
def links(settings, clock) -> Links:
    return Links(settings.newsletter.secret_key, settings.newsletter.public_url, clock)


@pytest.fixture
def posts(db, settings, clock):
    """The fixture blog's posts: sections Architecture, Explained and In Focus."""
    jobs.poll(db, settings, clock)


def subscriber(db, email: str) -> Subscriber | None:
    db.expire_all()
    return db.exec(select(Subscriber).where(Subscriber.email == email)).first()


def confirmation_mails(db, smtp_server, address: str):
    settled(db)
    return [r.message for r in smtp_server.to(address)]


def confirm_link(message) -> str:
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    in_text, in_html = CONFIRM_LINK.findall(text), CONFIRM_LINK.findall(html)
    assert in_text and in_html and in_text[0] == in_html[0]
    return in_text[0]


def wait_until(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def path_of(url: str, settings) -> str:
    assert url.startswith(settings.newsletter.public_url + "/")
    return url[len(settings.newsletter.public_url) :]


def active(db, clock, email: str, name: str | None = None) -> Subscriber:
    sub, _ = subs.add(db, email, clock, name=name)
    return sub


def sub_token(links: Links, sub: Subscriber) -> str:
    return links.subscriber_token(sub.id, sub.email)


def title(html: str) -> str:
    return re.search(r"<title>(.*?)</title>", html, re.S).group(1)


def altered(token: str) -> str:
    """The token with one character of its signature changed."""
    last = token[-2]
    return token[:-2] + ("A" if last != "A" else "B") + token[-1]


def token_from_days_ago(links: Links, clock, sub: Subscriber, days: int) -> str:
    """A confirmation token made `days` days before the clock's now."""
    now = clock.now
    clock.now = now - timedelta(days=days)
    try:
        return links.confirm_token(sub.id, sub.email)
    finally:
        clock.now = now


# --- subscribe --------------------------------------------------------------------------------


def test_subscribe_page_has_the_form_topics_and_honeypot(client, posts):
    r = client.get("/")
    assert r.status_code == 200
    assert "Test Weekly" in title(r.text)
    html = r.text
    assert 'action="/subscribe"' in html and 'method="post"' in html
    assert 'name="email"' in html and 'type="email"' in html
    assert 'name="name"' in html
    boxes = re.findall(r'<input type="checkbox" name="categories" value="([^"]+)"(?: checked)?>', html)
    assert boxes == ["Architecture", "Explained", "In Focus"]
    assert " checked" not in html  # none ticked = everything
    assert re.search(r'<div class="hp" aria-hidden="true">.*name="website".*tabindex="-1"', html, re.S)
    assert "<script" not in html


def test_subscribe_page_without_posts_has_no_topics(client):
    r = client.get("/")
    assert r.status_code == 200 and "Topics" not in r.text


def test_subscribe_stores_a_pending_subscriber_and_mails_a_confirmation(client, db, posts, smtp_server, settings, clock):
    r = client.post("/subscribe", data={"email": "Ann@Example.COM", "name": "Ann", "categories": ["Explained", "In Focus"]})
    assert r.status_code == 200
    assert "Check your inbox" in r.text and "Ann@Example.COM" in r.text

    sub = subscriber(db, "ann@example.com")
    assert sub.status == SubscriberStatus.pending
    assert sub.name == "Ann"
    assert sub.topics == ["Explained", "In Focus"]
    assert as_utc(sub.confirmation_sent_at) == clock.now

    [mail] = confirmation_mails(db, smtp_server, "ann@example.com")
    assert mail["Subject"] == "Confirm your subscription to Test Weekly"
    assert mail["From"] == "Test Weekly <news@digest.test>"
    assert mail["To"] == "ann@example.com"  # the name typed into a public form is not mailed
    assert "Ann" not in mail.get_body(("plain",)).get_content()
    assert mail["List-Unsubscribe"] is None  # not on the list yet
    link = confirm_link(mail)
    assert link.startswith(settings.newsletter.public_url + "/confirm/")
    assert "Confirm subscription" in mail.get_body(("html",)).get_content()


def test_unknown_topics_are_ignored_and_all_topics_means_everything(client, db, posts):
    client.post("/subscribe", data={"email": "a@example.com", "categories": ["Nope", "<b>x</b>"]})
    assert subscriber(db, "a@example.com").topics is None
    client.post("/subscribe", data={"email": "b@example.com", "categories": ["Architecture", "Explained", "In Focus"]})
    assert subscriber(db, "b@example.com").topics is None


@pytest.mark.parametrize("address", ["not-an-address", "ann@", "ann@@example.com", "", "a b@example.com", "ann@example.com\r\nBcc: x@y.z"])
def test_an_invalid_address_gets_the_form_again_and_nothing_is_stored(client, db, smtp_server, address):
    r = client.post("/subscribe", data={"email": address, "name": "Ann"})
    assert r.status_code == 400
    assert "doesn&#39;t look like an email address" in r.text
    assert 'name="email"' in r.text and 'value="Ann"' in r.text  # what was typed stays
    db.expire_all()
    assert db.exec(select(Subscriber)).all() == []
    assert smtp_server.received == []


def test_the_answer_is_the_same_for_new_pending_active_and_honeypot(client, db, smtp_server, links, clock):
    form = {"email": "ann@example.com", "name": "Ann"}
    new = client.post("/subscribe", data=form)
    pending = client.post("/subscribe", data=form)
    sub = subscriber(db, "ann@example.com")
    client.post(f"/confirm/{links.confirm_token(sub.id, sub.email)}")
    assert subscriber(db, "ann@example.com").status == SubscriberStatus.active
    clock.now += timedelta(hours=1)
    already = client.post("/subscribe", data=form)
    honeypot = client.post("/subscribe", data={**form, "website": "http://spam.example"})

    answers = [(r.status_code, r.text) for r in (new, pending, already, honeypot)]
    assert all(a == answers[0] for a in answers), "the answer must not tell who subscribes"
    settled(db)
    # only the first post mailed a confirmation; confirming mailed the welcome
    assert [r.message["Subject"] for r in smtp_server.received] == [
        "Confirm your subscription to Test Weekly", "Welcome to Test Weekly"]


def test_honeypot_stores_nothing_and_mails_nothing(client, db, smtp_server):
    r = client.post("/subscribe", data={"email": "bot@example.com", "website": "http://spam.example"})
    assert r.status_code == 200 and "Check your inbox" in r.text
    assert subscriber(db, "bot@example.com") is None
    assert smtp_server.received == []


def test_a_pending_address_gets_at_most_one_confirmation_per_ten_minutes(client, db, smtp_server, clock):
    form = {"email": "ann@example.com"}
    client.post("/subscribe", data=form)
    clock.now += timedelta(minutes=9, seconds=59)
    client.post("/subscribe", data=form)
    assert len(confirmation_mails(db, smtp_server, "ann@example.com")) == 1
    clock.now += timedelta(seconds=1)
    client.post("/subscribe", data=form)
    mails = confirmation_mails(db, smtp_server, "ann@example.com")
    assert len(mails) == 2


def test_posting_the_form_again_never_changes_a_pending_subscribers_name_or_topics(client, db, posts, smtp_server, settings, clock):
    client.post("/subscribe", data={"email": "ann@example.com", "name": "Ann", "categories": ["Explained"]})
    settled(db)
    clock.now += timedelta(minutes=11)  # past the resend limit: the repeat gets a mail of its own
    r = client.post("/subscribe", data={"email": "ann@example.com", "name": "Click evil.example now",
                                        "categories": ["In Focus"]})
    assert r.status_code == 200 and "Check your inbox" in r.text
    sub = subscriber(db, "ann@example.com")
    assert (sub.status, sub.name, sub.topics) == (SubscriberStatus.pending, "Ann", ["Explained"])
    mails = confirmation_mails(db, smtp_server, "ann@example.com")
    assert len(mails) == 2
    assert all("evil" not in m.get_body(("plain",)).get_content() for m in mails)

    # Confirmed, Ann's first digest greets her by her own name, with her own topics.
    client.post(path_of(confirm_link(mails[-1]), settings))
    settled(db)  # (her welcome mail)
    smtp_server.received.clear()
    with SMTPMailer(settings.smtp) as mailer:
        jobs.send(db, settings, mailer, clock, fetch=False)
    [digest] = [r.message for r in smtp_server.to("ann@example.com")]
    text = digest.get_body(("plain",)).get_content()
    assert "Hi Ann," in text and "evil" not in text
    assert re.findall(r"^== (.+) ==\r?$", text, re.M) == ["EXPLAINED"]


def test_a_name_from_the_form_is_stored_without_invisible_characters_and_capped(client, db):
    client.post("/subscribe", data={"email": "eve@example.com", "name": "\u202eEve\u2066 \u200bAdams\ufeff"})
    assert subscriber(db, "eve@example.com").name == "Eve Adams"
    client.post("/subscribe", data={"email": "long@example.com", "name": "Name " * 1000})
    name = subscriber(db, "long@example.com").name
    assert len(name) <= 200 and name.endswith("Name…")


def test_an_active_subscriber_gets_no_mail_and_nothing_about_them_changes(client, db, smtp_server, posts, clock):
    active(db, clock, "ann@example.com", name="Ann")
    r = client.post("/subscribe", data={"email": "ann@example.com", "name": "Mallory", "categories": ["Explained"]})
    assert r.status_code == 200 and "Check your inbox" in r.text
    sub = subscriber(db, "ann@example.com")
    assert (sub.status, sub.name, sub.topics) == (SubscriberStatus.active, "Ann", None)
    assert smtp_server.received == []


@pytest.mark.parametrize("status", [SubscriberStatus.bounced, SubscriberStatus.suspended])
def test_bounced_and_suspended_addresses_get_no_mail(client, db, smtp_server, clock, status):
    sub = active(db, clock, "ann@example.com")
    sub.status = status
    db.add(sub)
    db.commit()
    r = client.post("/subscribe", data={"email": "ann@example.com"})
    assert r.status_code == 200 and "Check your inbox" in r.text
    assert subscriber(db, "ann@example.com").status == status
    assert smtp_server.received == []


def test_too_many_posts_from_one_client_get_429(client, db, smtp_server, clock):
    for i in range(5):
        assert client.post("/subscribe", data={"email": f"u{i}@example.com"}).status_code == 200
    r = client.post("/subscribe", data={"email": "u5@example.com"})
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "60"
    assert "Too many tries" in r.text and "Test Weekly" in title(r.text)
    assert subscriber(db, "u5@example.com") is None
    settled(db)
    assert len(smtp_server.received) == 5

    # Other clients are not affected, and a minute later this one may post again.
    with TestClient(client.app, client=("192.0.2.7", 5000)) as other:
        assert other.post("/subscribe", data={"email": "u6@example.com"}).status_code == 200
    clock.now += timedelta(seconds=61)
    assert client.post("/subscribe", data={"email": "u5@example.com"}).status_code == 200


def test_the_rate_limit_is_configurable(tmp_path, smtp_server, clock):
    cfg = write_config(tmp_path, smtp_port=smtp_server.port)
    with TestClient(create_app(load_settings(cfg, web={"rate_limit_per_minute": 2}), clock=clock)) as c:
        codes = [c.post("/subscribe", data={"email": f"u{i}@example.com"}).status_code for i in range(3)]
    assert codes == [200, 200, 429]


def test_a_refused_confirmation_can_be_asked_for_again_at_once(client, db, smtp_server):
    smtp_server.refuse["ann@example.com"] = "550 5.1.1 no such user"
    r = client.post("/subscribe", data={"email": "ann@example.com"})
    assert r.status_code == 200 and "Check your inbox" in r.text
    settled(db)
    assert subscriber(db, "ann@example.com").confirmation_sent_at is None
    assert db.exec(select(Outbox)).one().status == OutboxStatus.failed  # refused: not retried
    del smtp_server.refuse["ann@example.com"]
    client.post("/subscribe", data={"email": "ann@example.com"})
    assert len(confirmation_mails(db, smtp_server, "ann@example.com")) == 1


def test_a_relay_that_answers_4xx_once_gets_the_mail_again_and_it_arrives_once(client, app, db, smtp_server, clock):
    smtp_server.data_hook = lambda n: "451 4.3.0 try again later" if n == 1 else None
    client.post("/subscribe", data={"email": "ann@example.com"})
    settled(db)
    [row] = db.exec(select(Outbox)).all()
    assert (row.status, row.attempts, row.last_error) == (OutboxStatus.pending, 1, "451 4.3.0 try again later")
    assert smtp_server.to("ann@example.com") == []

    clock.now += timedelta(minutes=1)  # the retry is due (after 10 s)
    app.state.relay.wake()
    wait_until(lambda: len(smtp_server.to("ann@example.com")) == 1)
    settled(db)
    assert len(confirmation_mails(db, smtp_server, "ann@example.com")) == 1
    db.expire_all()
    assert db.exec(select(Outbox)).one().status == OutboxStatus.sent


def test_when_the_smtp_server_is_down_the_mail_waits_and_goes_out_when_it_is_back(tmp_path, clock):
    from aiosmtpd.controller import Controller

    from conftest import SMTPServer, _Handler, free_port

    port = free_port()
    cfg = write_config(tmp_path, smtp_port=port)  # nothing listens there yet
    settings = load_settings(cfg)
    app = create_app(settings, clock=clock)
    engine = app.state.engine
    with TestClient(app) as c, session(engine) as s:
        r = c.post("/subscribe", data={"email": "ann@example.com"})
        assert r.status_code == 200 and "Check your inbox" in r.text
        settled(s)
        row = s.exec(select(Outbox)).one()
        assert row.status == OutboxStatus.pending and f"127.0.0.1:{port}" in row.last_error

        server = SMTPServer("127.0.0.1", port)
        controller = Controller(_Handler(server), hostname=server.host, port=port, decode_data=False)
        controller.start()
        try:
            clock.now += timedelta(seconds=10)
            app.state.relay.wake()
            wait_until(lambda: len(server.to("ann@example.com")) == 1)
        finally:
            controller.stop()
    assert len(server.received) == 1


# --- confirm ----------------------------------------------------------------------------------


def test_confirm_link_shows_a_button_and_only_the_post_activates(client, db, smtp_server, settings, clock):
    client.post("/subscribe", data={"email": "ann@example.com"})
    path = path_of(confirm_link(confirmation_mails(db, smtp_server, "ann@example.com")[0]), settings)

    page = client.get(path)  # what a link scanner does
    assert page.status_code == 200
    assert re.search(r'<form method="post">\s*<button type="submit">Confirm subscription</button>', page.text)
    assert subscriber(db, "ann@example.com").status == SubscriberStatus.pending

    clock.now += timedelta(minutes=3)
    done = client.post(path)
    assert done.status_code == 200 and "You're subscribed" in done.text
    sub = subscriber(db, "ann@example.com")
    assert sub.status == SubscriberStatus.active
    assert as_utc(sub.confirmed_at) == clock.now
    assert re.search(r'href="/preferences/[^"]+">Choose topics', done.text)

    again = client.post(path)  # a second press changes nothing and still says yes
    assert again.status_code == 200 and "You're subscribed" in again.text
    assert as_utc(subscriber(db, "ann@example.com").confirmed_at) == clock.now
    assert "You're subscribed" in client.get(path).text


def test_a_confirm_link_six_days_old_still_works(client, db, links, clock):
    client.post("/subscribe", data={"email": "ann@example.com"})
    sub = subscriber(db, "ann@example.com")

    token = token_from_days_ago(links, clock, sub, 6)
    assert client.post(f"/confirm/{token}").status_code == 200
    assert subscriber(db, "ann@example.com").status == SubscriberStatus.active


@pytest.mark.parametrize("kind", ["forged", "altered", "expired", "subscriber-token", "garbage"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_bad_confirm_links_get_400_with_the_form_and_change_nothing(client, db, links, clock, kind, method):
    client.post("/subscribe", data={"email": "ann@example.com"})
    sub = subscriber(db, "ann@example.com")
    token = {
        "forged": lambda: Links("an-attacker-secret-key-0123456789", links.public_url).confirm_token(sub.id, sub.email),
        "altered": lambda: altered(links.confirm_token(sub.id, sub.email)),
        "expired": lambda: token_from_days_ago(links, clock, sub, 8),
        "subscriber-token": lambda: links.subscriber_token(sub.id, sub.email),
        "garbage": lambda: "not-a-token",
    }[kind]()
    r = client.request(method, f"/confirm/{token}")
    assert r.status_code == 400
    assert "expired or is not valid" in r.text
    assert 'action="/subscribe"' in r.text and 'name="email"' in r.text  # the form, offered again
    assert subscriber(db, "ann@example.com").status == SubscriberStatus.pending


def test_a_confirm_link_for_another_address_with_a_reused_id_fails(client, db, links, clock):
    client.post("/subscribe", data={"email": "ann@example.com"})
    sub = subscriber(db, "ann@example.com")
    token = links.confirm_token(sub.id, "someone-else@example.com")
    assert client.post(f"/confirm/{token}").status_code == 400


def test_an_old_confirm_link_does_not_undo_an_unsubscribe(client, db, links, smtp_server, settings, clock):
    client.post("/subscribe", data={"email": "ann@example.com"})
    path = path_of(confirm_link(confirmation_mails(db, smtp_server, "ann@example.com")[0]), settings)
    client.post(path)
    sub = subscriber(db, "ann@example.com")
    clock.now += timedelta(days=1)
    client.post(f"/unsubscribe/{sub_token(links, sub)}")
    assert client.post(path).status_code == 400
    assert subscriber(db, "ann@example.com").status == SubscriberStatus.unsubscribed


def test_a_former_subscriber_comes_back_only_by_confirming(client, db, links, smtp_server, settings, clock):
    sub = active(db, clock, "ann@example.com")
    subs.unsubscribe(db, sub, clock)
    clock.now += timedelta(days=30)

    client.post("/subscribe", data={"email": "ann@example.com"})
    assert subscriber(db, "ann@example.com").status == SubscriberStatus.unsubscribed  # a form changes nothing
    [mail] = confirmation_mails(db, smtp_server, "ann@example.com")
    assert client.post(path_of(confirm_link(mail), settings)).status_code == 200
    sub = subscriber(db, "ann@example.com")
    assert sub.status == SubscriberStatus.active and sub.unsubscribed_at is None


# --- unsubscribe ------------------------------------------------------------------------------


def test_unsubscribe_page_asks_and_changes_nothing(client, db, links, clock):
    sub = active(db, clock, "ann@example.com")
    r = client.get(f"/unsubscribe/{sub_token(links, sub)}")
    assert r.status_code == 200
    assert re.search(r'<form method="post">.*<button type="submit" class="danger">Unsubscribe</button>', r.text, re.S)
    assert f'href="/preferences/{sub_token(links, sub)}"' in r.text
    assert subscriber(db, "ann@example.com").status == SubscriberStatus.active


@pytest.mark.parametrize(
    "body",
    [
        {"data": {"List-Unsubscribe": "One-Click"}},  # RFC 8058, application/x-www-form-urlencoded
        {"files": {"List-Unsubscribe": (None, "One-Click")}},  # RFC 8058, multipart/form-data
        {},  # no body at all
    ],
    ids=["urlencoded", "multipart", "empty"],
)
def test_one_click_unsubscribe(client, db, links, clock, body):
    sub = active(db, clock, "ann@example.com")
    client.cookies.clear()
    r = client.post(f"/unsubscribe/{sub_token(links, sub)}", follow_redirects=False, **body)
    assert r.status_code == 200
    assert "location" not in r.headers and "set-cookie" not in r.headers
    assert "You're unsubscribed" in r.text
    sub = subscriber(db, "ann@example.com")
    assert sub.status == SubscriberStatus.unsubscribed
    assert as_utc(sub.unsubscribed_at) == clock.now


def test_one_click_unsubscribe_is_idempotent(client, db, links, clock):
    sub = active(db, clock, "ann@example.com")
    url = f"/unsubscribe/{sub_token(links, sub)}"
    first_at = clock.now
    assert client.post(url, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    clock.now += timedelta(hours=2)
    again = client.post(url, data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200 and "You're unsubscribed" in again.text
    assert as_utc(subscriber(db, "ann@example.com").unsubscribed_at) == first_at
    assert "You're unsubscribed" in client.get(url).text


@pytest.mark.parametrize("kind", ["forged", "altered", "confirm-token", "garbage"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_bad_unsubscribe_links_get_400_without_detail(client, db, links, clock, kind, method):
    sub = active(db, clock, "ann@example.com")
    token = {
        "forged": lambda: Links("an-attacker-secret-key-0123456789", links.public_url).subscriber_token(sub.id, sub.email),
        "altered": lambda: altered(sub_token(links, sub)),
        "confirm-token": lambda: links.confirm_token(sub.id, sub.email),
        "garbage": lambda: "x",
    }[kind]()
    r = client.request(method, f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"} if method == "POST" else None)
    assert r.status_code == 400
    assert "This link doesn" in r.text
    for detail in ("signature", "Signature", "expired", "Traceback", "ann@example.com", "BadToken"):
        assert detail not in r.text
    assert subscriber(db, "ann@example.com").status == SubscriberStatus.active


def test_unsubscribing_an_erased_address_says_done(client, db, links, clock):
    sub = active(db, clock, "ann@example.com")
    token = sub_token(links, sub)
    subs.erase(db, sub)
    r = client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert r.status_code == 200 and "You're unsubscribed" in r.text
    assert client.get(f"/unsubscribe/{token}").status_code == 200


# --- preferences ------------------------------------------------------------------------------


def checked(html: str) -> dict[str, bool]:
    return {
        m.group(1): bool(m.group(2))
        for m in re.finditer(r'<input type="checkbox" name="categories" value="([^"]+)"( checked)?>', html)
    }


def test_preferences_choose_topics(client, db, links, clock, posts):
    sub = active(db, clock, "ann@example.com")
    url = f"/preferences/{sub_token(links, sub)}"
    page = client.get(url)
    assert page.status_code == 200 and "ann@example.com" in page.text
    assert checked(page.text) == {"Architecture": True, "Explained": True, "In Focus": True}

    saved = client.post(url, data={"action": "save", "categories": ["Explained", "In Focus"]})
    assert saved.status_code == 200 and "Saved." in saved.text
    assert checked(saved.text) == {"Architecture": False, "Explained": True, "In Focus": True}
    assert subscriber(db, "ann@example.com").topics == ["Explained", "In Focus"]

    client.post(url, data={"action": "save", "categories": ["Architecture", "Explained", "In Focus"]})
    assert subscriber(db, "ann@example.com").topics is None  # all ticked: new topics too


def test_preferences_pause_and_resume(client, db, links, clock, posts):
    sub = active(db, clock, "ann@example.com")
    url = f"/preferences/{sub_token(links, sub)}"
    paused = client.post(url, data={"action": "pause"})
    assert "Resume emails" in paused.text
    assert subscriber(db, "ann@example.com").paused is True
    resumed = client.post(url, data={"action": "resume"})
    assert "Pause emails" in resumed.text
    sub = subscriber(db, "ann@example.com")
    assert sub.paused is False and sub.status == SubscriberStatus.active and sub.topics is None


def test_preferences_subscribe_again_after_unsubscribing(client, db, links, clock):
    sub = active(db, clock, "ann@example.com")
    token = sub_token(links, sub)
    done = client.post(f"/unsubscribe/{token}")
    assert f'href="/preferences/{token}">Subscribe again' in done.text
    page = client.get(f"/preferences/{token}")
    assert "You're unsubscribed" in page.text
    client.post(f"/preferences/{token}", data={"action": "resubscribe"})
    assert subscriber(db, "ann@example.com").status == SubscriberStatus.active


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_bad_preferences_links_get_400(client, db, links, clock, method):
    sub = active(db, clock, "ann@example.com")
    r = client.request(method, f"/preferences/{altered(sub_token(links, sub))}", data={"action": "pause"} if method == "POST" else None)
    assert r.status_code == 400
    assert subscriber(db, "ann@example.com").paused is False


def test_send_honours_the_preferences_set_on_the_web(client, db, links, clock, posts, settings, smtp_server, monkeypatch):
    active(db, clock, "all@example.com")
    focus = active(db, clock, "focus@example.com")
    two = active(db, clock, "two@example.com")
    resting = active(db, clock, "resting@example.com")
    client.post(f"/preferences/{sub_token(links, focus)}", data={"action": "save", "categories": ["In Focus"]})
    client.post(f"/preferences/{sub_token(links, two)}", data={"action": "save", "categories": ["In Focus", "Architecture"]})
    client.post(f"/preferences/{sub_token(links, resting)}", data={"action": "pause"})

    compiled = []
    real = render.compile_mjml
    monkeypatch.setattr(render, "compile_mjml", lambda src: compiled.append(1) or real(src))

    def send() -> dict[str, list[str]]:
        smtp_server.received.clear()
        with SMTPMailer(settings.smtp) as mailer:
            jobs.send(db, settings, mailer, clock, fetch=False)
        return {
            r.recipients[0]: re.findall(r"^== (.+) ==\r?$", r.message.get_body(("plain",)).get_content(), re.M)
            for r in smtp_server.received
        }

    got = send()
    assert got == {
        "all@example.com": ["ARCHITECTURE", "EXPLAINED", "IN FOCUS"],
        "focus@example.com": ["IN FOCUS"],
        "two@example.com": ["ARCHITECTURE", "IN FOCUS"],
    }
    assert len(compiled) == 3  # once per distinct choice, not per subscriber

    # An edition with none of their topics: nothing at all for them.
    clock.now += timedelta(days=7)
    db.add(Post(source_id=1, guid="new-1", url="https://blog.example/new", title="Explained: Queues",
                category="Explained", display_title="Queues", excerpt="How queues work.", content_hash="x",
                first_seen_at=clock.now, updated_at=clock.now))
    db.commit()
    assert send() == {"all@example.com": ["EXPLAINED"]}


def test_a_category_with_a_comma_is_one_topic_from_the_forms_to_the_inbox(tmp_path, smtp_server, clock, monkeypatch):
    """"News, Events" is one topic: chosen on the subscribe form or the preferences page, the
    reader gets that section, not "News" and "Events" (phantoms made by splitting on the comma)."""
    feed = tmp_path / "club.atom"
    when = "2026-11-25T08:00:00Z"
    titles = ["News, Events: Spring fair", "News: Printer fixed", "Events: Book club", "Tech: New laptops"]
    feed.write_text(
        "<?xml version='1.0' encoding='UTF-8'?><feed xmlns='http://www.w3.org/2005/Atom'>"
        f"<id>urn:test:club</id><title>Club</title><updated>{when}</updated>"
        + "".join(f"<entry><id>urn:test:{i}</id><title>{t}</title><link rel='alternate' href='https://club.test/{i}'/>"
                  f"<published>{when}</published><updated>{when}</updated><summary>Body {i}.</summary></entry>"
                  for i, t in enumerate(titles))
        + "</feed>",
        encoding="utf-8",
    )
    settings = load_settings(write_config(tmp_path, feeds=[str(feed)], smtp_port=smtp_server.port))
    links = Links(settings.newsletter.secret_key, settings.newsletter.public_url, clock)
    engine = make_engine(settings.database_url)
    create_schema(engine)
    with session(engine) as db, TestClient(create_app(settings, clock=clock)) as client:
        jobs.poll(db, settings, clock)
        form = client.get("/").text
        assert re.findall(r'name="categories" value="([^"]+)"', form) == ["Events", "News", "News, Events", "Tech"]

        # the subscribe form (the address then confirmed: made active keeping its choice)
        client.post("/subscribe", data={"email": "ann@example.com", "categories": ["News, Events"]})
        assert subscriber(db, "ann@example.com").topics == ["News, Events"]
        active(db, clock, "ann@example.com")
        # the preferences page; two readers tick the same two topics in a different order
        for address, ticked in (("bob@example.com", ["Tech", "News, Events"]), ("cy@example.com", ["News, Events", "Tech"])):
            url = f"/preferences/{sub_token(links, active(db, clock, address))}"
            saved = client.post(url, data={"action": "save", "categories": ticked})
            assert checked(saved.text) == {"Events": False, "News": False, "News, Events": True, "Tech": True}
            assert checked(client.get(url).text) == checked(saved.text)
        active(db, clock, "all@example.com")

        compiled = []
        real = render.compile_mjml
        monkeypatch.setattr(render, "compile_mjml", lambda src: compiled.append(1) or real(src))
        smtp_server.received.clear()  # (Ann's confirmation mail)
        with SMTPMailer(settings.smtp) as mailer:
            jobs.send(db, settings, mailer, clock, fetch=False)
    engine.dispose()
    got = {
        r.recipients[0]: re.findall(r"^== (.+) ==\r?$", r.message.get_body(("plain",)).get_content(), re.M)
        for r in smtp_server.received
    }
    assert got == {
        "ann@example.com": ["NEWS, EVENTS"],
        "bob@example.com": ["NEWS, EVENTS", "TECH"],
        "cy@example.com": ["NEWS, EVENTS", "TECH"],
        "all@example.com": ["EVENTS", "NEWS", "NEWS, EVENTS", "TECH"],
    }
    assert "Spring fair" in smtp_server.to("ann@example.com")[0].message.get_body(("plain",)).get_content()
    assert len(compiled) == 3  # one per distinct choice: Bob's and Cy's are the same one


# --- archive ----------------------------------------------------------------------------------


def sent_editions(db, settings, clock, smtp_server, n: int = 2) -> None:
    """Edition 1 from the fixture blog, then edition 2 with one new post, each sent to one reader."""
    active(db, clock, "ann@example.com", name="Ann")
    with SMTPMailer(settings.smtp) as mailer:
        jobs.send(db, settings, mailer, clock, fetch=False)
        if n > 1:
            clock.now += timedelta(days=7)
            db.add(Post(source_id=1, guid="new-1", url="https://blog.example/new", title="Explained: Queues",
                        category="Explained", display_title="Queues", excerpt="How queues work.",
                        content_hash="x", first_seen_at=clock.now, updated_at=clock.now))
            db.commit()
            jobs.send(db, settings, mailer, clock, fetch=False)


def test_archive_lists_sent_editions_newest_first(client, db, settings, clock, smtp_server, posts):
    sent_editions(db, settings, clock, smtp_server)
    r = client.get("/archive")
    assert r.status_code == 200 and "Test Weekly" in title(r.text)
    assert re.findall(r'href="/archive/(\d+)"', r.text) == ["2", "1"]
    assert "Test Weekly: 5 new posts" in r.text and "December 3, 2026" in r.text


def test_an_archived_edition_is_the_email_without_personal_links(client, db, settings, clock, smtp_server, posts):
    sent_editions(db, settings, clock, smtp_server, n=1)
    [mail] = smtp_server.to("ann@example.com")
    html = mail.message.get_body(("html",)).get_content()
    assert f'href="{settings.newsletter.public_url}/archive/1"' in html  # "View in browser"

    r = client.get("/archive/1")
    assert r.status_code == 200
    page = r.text
    assert "Confluent Cloud Gateway" in page and "Model Distillation Attacks" in page
    for personal in ("/unsubscribe/", "/preferences/", "XDIGEST", "Hi Ann", "ann@example.com", "You are receiving this"):
        assert personal not in page
    assert f'href="{settings.newsletter.public_url}/"' in page  # how to subscribe
    assert "<script" not in page
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]


def test_unknown_and_unsent_editions_are_not_found(client, db, settings, clock, posts):
    editions.create(db, clock, subject_template=settings.newsletter.subject, newsletter_name=settings.newsletter.name)
    assert client.get("/archive/1").status_code == 404  # built, but nobody has it yet
    assert 'href="/archive/1"' not in client.get("/archive").text
    r = client.get("/archive/99")
    assert r.status_code == 404 and "Page not found" in r.text and "Test Weekly" in title(r.text)
    for path in ("/archive/abc", "/archive/0", "/archive/99999999999999999999999"):
        assert client.get(path).status_code == 404, path


ATOM = "{http://www.w3.org/2005/Atom}"


def atom_entries(r) -> list:
    """The entries of an /archive.atom response, after checking what every feed must have."""
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/atom+xml; charset=utf-8"
    parsed = feedparser.parse(r.content)  # what feed readers run into, independent of ElementTree
    assert not parsed.bozo and parsed.version == "atom10", parsed.get("bozo_exception")
    feed = ElementTree.fromstring(r.content)
    assert feed.tag == f"{ATOM}feed"
    assert feed.findtext(f"{ATOM}title") == "Test Weekly"
    assert feed.findtext(f"{ATOM}author/{ATOM}name") == "Test Weekly"
    assert feed.findtext(f"{ATOM}id") and feed.findtext(f"{ATOM}updated")
    links = {link.get("rel"): link.get("href") for link in feed.findall(f"{ATOM}link")}
    assert links == {"self": "http://127.0.0.1:8000/archive.atom", "alternate": "http://127.0.0.1:8000/archive"}
    return feed.findall(f"{ATOM}entry")


def test_the_archive_feed_has_the_sent_editions_newest_first_without_personal_links(
        client, db, settings, clock, smtp_server, posts):
    sent_editions(db, settings, clock, smtp_server)
    db.add(Post(source_id=1, guid="new-2", url="https://blog.example/stacks", title="<b>Stacks</b> & <img src=x>",
                category="Explained", display_title="<b>Stacks</b> & <img src=x>", excerpt="<i>LIFO</i>",
                content_hash="y", first_seen_at=clock.now, updated_at=clock.now))
    db.commit()
    editions.create(db, clock, subject_template=settings.newsletter.subject, newsletter_name=settings.newsletter.name)

    r = client.get("/archive.atom")
    entries = atom_entries(r)
    assert [e.findtext(f"{ATOM}title") for e in entries] == ["Test Weekly: 1 new post", "Test Weekly: 5 new posts"]
    assert [e.find(f"{ATOM}link").get("href") for e in entries] == [
        "http://127.0.0.1:8000/archive/2", "http://127.0.0.1:8000/archive/1"]
    assert [e.findtext(f"{ATOM}id") for e in entries] == [
        "http://127.0.0.1:8000/archive/2", "http://127.0.0.1:8000/archive/1"]
    assert [e.findtext(f"{ATOM}published") for e in entries] == ["2026-12-03T09:00:00Z", "2026-11-26T09:00:00Z"]
    feed = ElementTree.fromstring(r.content)
    assert feed.findtext(f"{ATOM}updated") == "2026-12-03T09:00:00Z"  # the newest edition's
    newest, oldest = (e.find(f"{ATOM}content") for e in entries)
    assert newest.get("type") == "html" and len(newest) == 0  # HTML as text, not as XML elements
    assert "Queues" in newest.text and "How queues work." in newest.text
    assert "Confluent Cloud Gateway" in oldest.text and "Model Distillation Attacks" in oldest.text
    assert "Queues" not in oldest.text
    # the body of the archive page, not the document with its head
    assert newest.text.startswith("<div") and "<head" not in newest.text and "<style" not in newest.text
    assert newest.text in client.get("/archive/2").text
    for personal in ("/unsubscribe/", "/preferences/", "/confirm/", "XDIGEST", "Hi Ann", "ann@example.com"):
        assert personal not in r.text, personal
    assert "Stacks" not in r.text  # edition 3 is built but nobody has it yet


def test_markup_in_a_post_title_stays_text_in_the_feed(client, db, settings, clock, smtp_server, posts):
    db.add(Post(source_id=1, guid="new-2", url="https://blog.example/stacks", title="<b>Stacks</b> & <img src=x>",
                category="Explained", display_title="<b>Stacks</b> & <img src=x>", excerpt="<i>LIFO</i> order",
                content_hash="y", first_seen_at=clock.now, updated_at=clock.now))
    db.commit()
    sent_editions(db, settings, clock, smtp_server, n=1)
    [entry] = atom_entries(client.get("/archive.atom"))
    html = entry.findtext(f"{ATOM}content")  # what a feed reader renders
    assert "&lt;b&gt;Stacks&lt;/b&gt; &amp; &lt;img src=x&gt;" in html
    assert "&lt;i&gt;LIFO&lt;/i&gt; order" in html
    assert "<b>" not in html and "<img src=x" not in html and "<i>" not in html


def test_an_empty_archive_is_a_feed_without_entries(client):
    r = client.get("/archive.atom")
    assert atom_entries(r) == []
    assert ElementTree.fromstring(r.content).findtext(f"{ATOM}updated") == "2026-11-26T09:00:00Z"  # now


def test_the_feed_answers_304_to_a_reader_that_has_it_and_changes_with_a_new_edition(
        client, db, settings, clock, smtp_server, posts):
    sent_editions(db, settings, clock, smtp_server, n=1)
    first = client.get("/archive.atom")
    etag = first.headers["etag"]
    assert first.headers["last-modified"] == "Thu, 26 Nov 2026 09:00:00 GMT"
    assert first.headers["cache-control"] == "public, max-age=300"
    again = client.get("/archive.atom", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert client.get("/archive.atom", headers={"If-None-Match": f'"other", W/{etag}'}).status_code == 304
    assert client.get("/archive.atom", headers={"If-None-Match": '"other"'}).status_code == 200

    db.add(Post(source_id=1, guid="new-1", url="https://blog.example/new", title="Explained: Queues",
                category="Explained", display_title="Queues", excerpt="How queues work.",
                content_hash="x", first_seen_at=clock.now, updated_at=clock.now))
    db.commit()
    with SMTPMailer(settings.smtp) as mailer:
        jobs.send(db, settings, mailer, clock, fetch=False)
    changed = client.get("/archive.atom", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert len(atom_entries(changed)) == 2


def test_the_pages_name_the_feed_for_feed_readers(client, db, settings, clock, smtp_server, posts):
    sent_editions(db, settings, clock, smtp_server, n=1)
    feed_link = '<link rel="alternate" type="application/atom+xml" title="Test Weekly" href="{}">'
    for path in ("/archive", "/"):
        head = client.get(path).text.split("</head>")[0]
        assert feed_link.format("/archive.atom") in head, path
    head = client.get("/archive/1").text.split("</head>")[0]
    assert feed_link.format("http://127.0.0.1:8000/archive.atom") in head


# --- health, headers, pages -------------------------------------------------------------------


def test_healthz_reports_the_database(tmp_path, smtp_server, clock):
    cfg = write_config(tmp_path, smtp_port=smtp_server.port)
    (tmp_path / "data").mkdir()
    settings = load_settings(cfg, database={"url": f"sqlite:///{tmp_path / 'data' / 'digest.db'}"})
    app = create_app(settings, clock=clock)
    with TestClient(app) as c:
        ok = c.get("/healthz")
        assert ok.status_code == 200 and ok.json() == {"status": "ok"}
        app.state.engine.dispose()
        shutil.rmtree(tmp_path / "data")  # the database's volume is gone
        down = c.get("/healthz")
        assert down.status_code == 503


def test_every_page_has_the_security_headers_and_no_cookie_or_script(client, db, links, clock, settings, smtp_server, posts):
    sent_editions(db, settings, clock, smtp_server, n=1)
    sub = subscriber(db, "ann@example.com")
    token = sub_token(links, sub)
    requests = [
        ("GET", "/"), ("POST", "/subscribe"), ("GET", "/archive"), ("GET", "/archive/1"), ("GET", "/archive.atom"),
        ("GET", "/healthz"),
        ("GET", "/nope"), ("GET", f"/unsubscribe/{token}"), ("GET", f"/preferences/{token}"),
        ("GET", f"/confirm/{links.confirm_token(sub.id, sub.email)}"), ("GET", "/confirm/forged"),
        ("GET", "/static/style.css"), ("POST", f"/preferences/{token}"), ("POST", f"/unsubscribe/{token}"),
    ]
    for method, path in requests:
        r = client.request(method, path, data={"email": "x@example.com"} if path == "/subscribe" else None)
        csp = r.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'none'" in csp, path
        assert "unsafe-inline" not in csp or path == "/archive/1", path
        assert r.headers["X-Content-Type-Options"] == "nosniff", path
        assert r.headers["Referrer-Policy"] == "no-referrer", path
        assert "set-cookie" not in r.headers, path
        if r.headers["content-type"].startswith("text/html"):
            assert "<script" not in r.text.lower(), path
            assert "Test Weekly" in title(r.text), path
        if path.startswith(("/unsubscribe/", "/preferences/", "/confirm/")):
            assert r.headers["Cache-Control"] == "no-store", path
            assert "noindex" in r.headers["X-Robots-Tag"], path
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert client.get("/docs").status_code == 404 and client.get("/openapi.json").status_code == 404


def test_page_text_is_escaped(tmp_path, smtp_server, clock):
    cfg = write_config(tmp_path, smtp_port=smtp_server.port, name="<script>alert(1)</script> Weekly")
    with TestClient(create_app(load_settings(cfg), clock=clock)) as c:
        r = c.post("/subscribe", data={"email": "<b>@example.com", "name": "<i>"})
    assert "<script>" not in r.text and "&lt;script&gt;" in r.text
    assert "&lt;b&gt;@example.com" in r.text


def test_links_follow_a_public_url_with_a_path(tmp_path, smtp_server, clock):
    cfg = write_config(tmp_path, smtp_port=smtp_server.port, public_url="https://blog.example.org/news")
    settings = load_settings(cfg)
    engine = make_engine(settings.database_url)
    create_schema(engine)
    with TestClient(create_app(settings, clock=clock, engine=engine)) as c:
        home = c.get("/")
        assert 'action="/news/subscribe"' in home.text and 'href="/news/static/style.css"' in home.text
        c.post("/subscribe", data={"email": "ann@example.com"})
        with session(engine) as s:
            settled(s)
    [mail] = [r.message for r in smtp_server.to("ann@example.com")]
    assert confirm_link(mail).startswith("https://blog.example.org/news/confirm/")
    with session(engine) as s:
        assert s.exec(select(Subscriber)).one().status == SubscriberStatus.pending
    engine.dispose()


def test_templates_of_ones_own_still_get_base_and_public_url(tmp_path, smtp_server, clock, db, posts):
    """Pages and emails build their links from links.PublicUrls (`urls`, `subscribe_url`, ...);
    an overriding template written with `base` or `newsletter.public_url` keeps working."""
    own = tmp_path / "own"
    (own / "web").mkdir(parents=True)
    (own / "web" / "invalid_link.html").write_text(
        '<a id="old" href="{{ base }}/archive">a</a><a id="new" href="{{ urls.archive_index_path }}">b</a>')
    (own / "edition.txt.j2").write_text("past: {{ newsletter.public_url }}/archive and {{ archive_index_url }}\n")
    cfg = write_config(tmp_path, smtp_port=smtp_server.port, public_url="https://blog.example.org/news/")
    settings = load_settings(cfg, edition={"templates_dir": str(own)})
    with TestClient(create_app(settings, clock=clock)) as c:
        page = c.get("/unsubscribe/forged").text
    assert 'id="old" href="/news/archive"' in page and 'id="new" href="/news/archive"' in page
    preview = jobs.preview(db, settings, clock, latest=1, fetch=False)
    assert preview.message.rendered.text == (
        "past: https://blog.example.org/news/archive and https://blog.example.org/news/archive\n")


# --- the form on the blog (/embed) --------------------------------------------------------------


class FormFields(HTMLParser):
    """What a browser would send from a page's first form: its action, and each named input."""

    def __init__(self):
        super().__init__()
        self.action: str | None = None
        self.inputs: dict[str, list[str]] = {}
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "form" and self.action is None:
            self.action = a["action"]
        if tag == "input" and a.get("name"):
            self.inputs.setdefault(a["name"], []).append(a.get("value") or "")


def embedded_form(html: str) -> str:
    """The HTML /embed gives to copy: the text of its textarea, as the operator's clipboard has it."""
    m = re.search(r'<textarea id="snippet"[^>]*>(.*?)</textarea>', html, re.S)
    assert m, "no snippet on /embed"
    return unescape(m.group(1))


def test_embed_shows_the_form_for_the_blog_escaped_posting_to_public_url(config_path, clock, db, posts):
    db.add(Post(source_id=1, guid="odd-1", url="https://blog.example/odd", title='Q&A "live" <now>',
                category='Q&A "live" <now>', display_title="odd", excerpt="odd", content_hash="x",
                first_seen_at=clock.now, updated_at=clock.now))
    db.commit()
    settings = load_settings(config_path, newsletter={"public_url": "https://news.example.org/letter"})
    with TestClient(create_app(settings, clock=clock)) as c:
        r = c.get("/embed")
        home = c.get("/").text
    assert r.status_code == 200
    snippet = embedded_form(r.text)
    fields = FormFields()
    fields.feed(snippet)
    # absolute: it is pasted into a page on another site
    assert fields.action == "https://news.example.org/letter/subscribe"
    assert set(fields.inputs) == {"email", "name", "categories", "website"}  # as the app's own form
    assert fields.inputs["categories"] == ["Architecture", "Explained", "In Focus", 'Q&A "live" <now>']
    assert 'value="Q&amp;A &#34;live&#34; &lt;now&gt;"' in snippet  # the feed's text stays text
    assert {"script", "style", "iframe"}.isdisjoint(fields.tags) and " id=" not in snippet
    assert 'style="display:none"' in snippet.split('name="website"')[0].rsplit("<div", 1)[1]  # the honeypot hidden
    assert snippet in r.text  # the preview is the same form
    assert "<now>" not in r.text.replace(snippet, "")  # and shown as text in the textarea
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "form-action 'self' https://news.example.org;" in csp
    assert "noindex" in r.headers["X-Robots-Tag"]
    assert "/embed" not in home  # for the operator: the readers' pages don't link it


def test_the_embedded_form_posted_from_the_blog_lands_on_check_your_inbox_with_a_way_back(
        config_path, smtp_server, clock, db, posts):
    settings = load_settings(config_path, newsletter={"site_url": "https://blog.example.com/"})
    blog = {"Origin": "https://blog.example.com", "Referer": "https://blog.example.com/p/subscribe.html"}
    with TestClient(create_app(settings, clock=clock)) as c:
        fields = FormFields()
        fields.feed(embedded_form(c.get("/embed").text))
        sent = {"email": "reader@example.com", "name": "Rea", "categories": ["Explained"], "website": ""}
        assert set(sent) == set(fields.inputs)
        r = c.post(path_of(fields.action, settings), data=sent, headers=blog, follow_redirects=False)
        assert r.status_code == 200 and "Check your inbox" in title(r.text)
        assert '<a href="https://blog.example.com">Back to the blog</a>' in r.text
        assert "set-cookie" not in r.headers
        [mail] = confirmation_mails(db, smtp_server, "reader@example.com")
        assert mail["Subject"] == "Confirm your subscription to Test Weekly"
        assert subscriber(db, "reader@example.com").status == SubscriberStatus.pending  # double opt-in

        bot = c.post("/subscribe", data={**sent, "email": "bot@example.com", "website": "https://spam.example"},
                     headers=blog)
        assert bot.text.replace("bot@example.com", "reader@example.com") == r.text  # the same answer
        settled(db)
        assert subscriber(db, "bot@example.com") is None and smtp_server.to("bot@example.com") == []


def test_without_site_url_check_your_inbox_has_no_link_back(client):
    r = client.post("/subscribe", data={"email": "reader@example.com"})
    assert "Check your inbox" in title(r.text) and "Back to the blog" not in r.text
