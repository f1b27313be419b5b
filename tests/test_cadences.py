"""Cadences: each reader picks how often they get the digest. Each cadence has its own numbered
editions and schedule slots; a reader gets only their cadence's editions; changing cadence loses
no post and repeats none.

Real SQLite (or PostgreSQL), the real send over SMTP to the aiosmtpd test server; the posts a
reader got are read back from the mails that server received."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

import pytest
from sqlmodel import select

from conftest import FixedClock, write_config
from digest.config import load_settings
from digest.mail.mailer import SMTPMailer
from digest.service import cadences as cadences_svc
from digest.service import pipeline as jobs
from digest.service import slots as schedule
from digest.service import subscribers as subs
from digest.service.cadences import Cadences
from digest.store.database import make_engine, session
from digest.store.models import Edition
from digest.store.schema import create_schema
from feedgen import write_feed

MON_9 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday


class Publication:
    """A blog whose feed the test extends post by post, weekly as the main cadence and daily as
    another, sending for real to `smtp_server`."""

    def __init__(self, tmp_path, smtp_server, **schedule_settings):
        self.tmp_path, self.server = tmp_path, smtp_server
        self.posts = [1, 2]
        self.feed = write_feed(tmp_path / "blog.atom", self.posts)
        path = write_config(tmp_path, feeds=[str(self.feed)], smtp_port=smtp_server.port)
        self.settings = load_settings(path, schedule={"cron": "0 9 * * mon", "cadences": {"daily": "0 7 * * *"},
                                                      **schedule_settings})
        self.cadences = Cadences(self.settings.schedule)
        self.engine = make_engine(self.settings.database_url)
        create_schema(self.engine)
        self.session = session(self.engine)
        self.clock = FixedClock(MON_9)

    def reader(self, email: str, cadence: str | None = None) -> None:
        subs.add(self.session, email, self.clock, cadence=None if cadence is None else self.cadences.named(cadence))

    def change(self, email: str, cadence: str) -> None:
        sub = subs.get(self.session, email)
        assert cadences_svc.choose(sub, self.cadences.named(cadence), self.clock())
        self.session.add(sub)
        self.session.commit()

    def new_post(self) -> int:
        self.posts.append(self.posts[-1] + 1)
        write_feed(self.feed, self.posts)
        return self.posts[-1]

    def send(self, cadence: str | None = None) -> jobs.SendResult:
        self.clock.now += timedelta(hours=1)
        return jobs.send(self.session, self.settings, SMTPMailer(self.settings.smtp), self.clock, cadence=cadence)

    def got(self, email: str) -> list[list[int]]:
        """The posts of each mail `email` received, in order (from the links in the text part)."""
        mails = []
        for r in self.server.to(email):
            text = r.message.get_body(("plain",)).get_content()
            mails.append(sorted(int(n) for n in re.findall(r"https://blog\.test/(\d+)", text)))
        return mails

    def close(self):
        self.session.close()
        self.engine.dispose()


@pytest.fixture
def blog(tmp_path, smtp_server):
    b = Publication(tmp_path, smtp_server)
    yield b
    b.close()


def received_once(mails: list[list[int]]) -> Counter:
    return Counter(n for mail in mails for n in mail)


def test_each_cadence_numbers_its_editions_and_its_readers_get_only_those(blog):
    blog.reader("weekly@example.com")
    blog.reader("daily@example.com", "daily")
    daily = blog.send("daily")
    assert (daily.edition.edition_number, daily.post_count, daily.edition.sent) == (1, 2, 1)
    weekly = blog.send()
    assert (weekly.edition.edition_number, weekly.post_count, weekly.edition.sent) == (1, 2, 1)
    blog.new_post()
    assert blog.send("daily").edition.edition_number == 2
    blog.new_post()
    assert blog.send("daily").edition.edition_number == 3
    assert blog.send().edition.edition_number == 2

    assert blog.got("daily@example.com") == [[1, 2], [3], [4]]
    assert blog.got("weekly@example.com") == [[1, 2], [3, 4]]
    numbers = {(e.cadence, e.number) for e in blog.session.exec(select(Edition)).all()}
    assert numbers == {("", 1), ("", 2), ("daily", 1), ("daily", 2), ("daily", 3)}


def test_changing_cadence_either_way_gets_every_post_exactly_once(blog):
    blog.reader("stays-weekly@example.com")
    blog.reader("stays-daily@example.com", "daily")
    blog.reader("to-daily@example.com")  # weekly, then daily
    blog.reader("to-weekly@example.com", "daily")  # daily, then weekly
    blog.send("daily")  # daily 1: posts 1, 2
    blog.send()  # weekly 1: posts 1, 2
    blog.new_post()
    blog.send("daily")  # daily 2: 3
    blog.new_post()
    blog.send("daily")  # daily 3: 4
    blog.change("to-daily@example.com", "daily")  # had weekly 1 (1, 2): 3 and 4 are in daily editions they missed
    blog.change("to-weekly@example.com", "weekly")  # had daily 3 (1-4)
    blog.new_post()
    blog.send("daily")  # daily 4: 5; to-daily catches up on 3, 4, 5
    blog.new_post()
    blog.send("daily")  # daily 5: 6
    blog.send()  # weekly 2: 3-6; to-weekly gets only 5, 6
    blog.new_post()
    blog.send()  # weekly 3: 7, as it is for everyone
    blog.send("daily")  # daily 6: 7

    assert blog.got("to-daily@example.com") == [[1, 2], [3, 4, 5], [6], [7]]
    assert blog.got("to-weekly@example.com") == [[1, 2], [3], [4], [5, 6], [7]]
    every_post = Counter(blog.posts)
    for reader in ("to-daily", "to-weekly", "stays-daily", "stays-weekly"):
        assert received_once(blog.got(f"{reader}@example.com")) == every_post, reader
    assert blog.got("stays-weekly@example.com") == [[1, 2], [3, 4, 5, 6], [7]]


def test_changing_back_before_an_edition_of_the_new_cadence_misses_nothing(blog):
    blog.reader("ann@example.com")
    blog.reader("dan@example.com", "daily")
    blog.send()  # weekly 1: 1, 2
    blog.change("ann@example.com", "daily")
    blog.new_post()
    blog.send()  # weekly 2: 3, without ann
    blog.change("ann@example.com", "weekly")  # back, before any daily edition
    blog.new_post()
    blog.send()  # weekly 3: 4, and for ann 3 as well
    assert blog.got("ann@example.com") == [[1, 2], [3, 4]]


def test_a_reader_who_had_everything_already_gets_no_empty_mail(blog):
    blog.reader("ann@example.com", "daily")
    blog.reader("bob@example.com")
    blog.send("daily")  # daily 1: 1, 2
    blog.change("ann@example.com", "weekly")
    blog.send()  # weekly 1: 1, 2, which ann had
    assert blog.got("ann@example.com") == [[1, 2]]
    blog.new_post()
    blog.send()  # weekly 2: 3, for ann too
    assert blog.got("ann@example.com") == [[1, 2], [3]]


def test_a_cadence_nobody_chose_makes_no_edition_and_its_posts_wait(blog):
    blog.reader("ann@example.com")
    result = blog.send("daily")
    assert result.edition is None and result.new_queued is None
    blog.send()  # weekly 1: 1, 2
    blog.new_post()
    blog.reader("dan@example.com", "daily")
    first = blog.send("daily")  # starts where the weekly edition ended
    assert first.post_count == 1 and blog.got("dan@example.com") == [[3]]


def test_the_schedule_sends_each_cadence_at_its_own_slots_once(blog):
    blog.reader("ann@example.com")
    blog.reader("dan@example.com", "daily")
    mailer = SMTPMailer(blog.settings.smtp)
    clock = FixedClock(MON_9 - timedelta(days=1))  # Sunday: the first start records the baselines
    first = jobs.scheduled(blog.session, blog.settings, mailer, clock)
    assert [r.due.slot for r in first.runs] == [None, None] and not first.sends
    clock.now = MON_9.replace(hour=7, minute=1)  # Monday 07:01: daily's slot, not weekly's
    result = jobs.scheduled(blog.session, blog.settings, mailer, clock)
    assert [(r.cadence, r.due.slot) for r in result.runs] == [("weekly", None), ("daily", MON_9.replace(hour=7))]
    assert result.runs[1].send.edition.sent == 1
    again = jobs.scheduled(blog.session, blog.settings, mailer, clock)  # another process, same moment
    assert not again.sends
    blog.new_post()
    clock.now = MON_9 + timedelta(minutes=1)
    result = jobs.scheduled(blog.session, blog.settings, mailer, clock)
    assert [r.cadence for r in result.runs if r.send] == ["weekly"]
    # Down from Monday to Thursday: the missed daily slots are caught up once, with one edition.
    blog.new_post()
    clock.now = MON_9 + timedelta(days=3, hours=-1)  # Thursday 08:00
    result = jobs.scheduled(blog.session, blog.settings, mailer, clock)
    assert [r.cadence for r in result.runs if r.send] == ["daily"]
    assert not jobs.scheduled(blog.session, blog.settings, mailer, clock).sends
    assert blog.got("dan@example.com") == [[1, 2], [3, 4]]
    assert blog.got("ann@example.com") == [[1, 2, 3]]
    runs = {(r.cadence, r.outcome) for r in blog.session.exec(select(schedule.ScheduleRun)).all()}
    assert ("daily", schedule.EDITION) in runs and ("", schedule.EDITION) in runs


# --- the reader's choice: sign-up form, preferences page, archive -------------------------------


@pytest.fixture
def client(blog):
    from fastapi.testclient import TestClient

    from digest.service.web import create_app

    with TestClient(create_app(blog.settings, clock=blog.clock, engine=blog.engine)) as c:
        yield c


def radios(html: str) -> dict[str, bool]:
    """The cadence radio buttons of a page: value -> checked."""
    return {m.group(1): bool(m.group(2)) for m in re.finditer(r'name="cadence" value="([^"]+)"( checked)?', html)}


def test_the_sign_up_form_offers_each_cadence_the_main_one_first_and_chosen(blog, client):
    assert radios(client.get("/").text) == {"weekly": True, "daily": False}
    r = client.post("/subscribe", data={"email": "dan@example.com", "cadence": "daily"})
    assert r.status_code == 200
    assert subs.get(blog.session, "dan@example.com").cadence == "daily"
    r = client.post("/subscribe", data={"email": "eve@example.com", "cadence": "hourly"})
    assert r.status_code == 400 and "how often" in r.text and subs.find(blog.session, "eve@example.com") is None


def test_the_embedded_form_offers_each_cadence_and_the_choice_is_stored(blog, client):
    """The form for the blog (/embed) asks "How often" as our own form does, with the field
    POST /subscribe reads."""
    from test_web import FormFields, embedded_form

    snippet = embedded_form(client.get("/embed").text)
    assert radios(snippet) == {"weekly": True, "daily": False}
    assert "How often" in snippet
    fields = FormFields()
    fields.feed(snippet)
    assert set(fields.inputs) == {"email", "name", "cadence", "website"}  # no post yet: no topics
    r = client.post("/subscribe", data={"email": "fay@example.com", "name": "", "cadence": "daily", "website": ""},
                    headers={"Origin": "https://blog.example.com"})
    assert r.status_code == 200 and "Check your inbox" in r.text
    assert subs.get(blog.session, "fay@example.com").cadence == "daily"


def test_a_publication_with_one_cadence_asks_nothing(tmp_path, smtp_server):
    from fastapi.testclient import TestClient

    from digest.service.web import create_app

    b = Publication(tmp_path, smtp_server, cadences={})
    try:
        with TestClient(create_app(b.settings, clock=b.clock, engine=b.engine)) as c:
            assert radios(c.get("/").text) == {} and "How often" not in c.get("/").text
            assert radios(c.get("/embed").text) == {} and "How often" not in c.get("/embed").text
            assert c.post("/subscribe", data={"email": "ann@example.com"}).status_code == 200
    finally:
        b.close()


def test_the_preferences_page_changes_the_cadence_and_the_next_edition_catches_up(blog, client):
    from digest.links import Links

    blog.reader("ann@example.com")
    blog.reader("dan@example.com", "daily")
    blog.send()  # weekly 1: 1, 2
    blog.new_post()
    blog.send("daily")  # daily 1: 3 (daily starts where weekly 1 ended)
    sub = subs.get(blog.session, "ann@example.com")
    links = Links(blog.settings.newsletter.secret_key, blog.settings.newsletter.public_url)
    path = links.preferences_path(links.subscriber_token(sub.id, sub.email))
    assert radios(client.get(path).text) == {"weekly": True, "daily": False}
    r = client.post(path, data={"action": "cadence", "cadence": "daily"})
    assert "the daily digest" in r.text and radios(r.text) == {"weekly": False, "daily": True}
    blog.session.expire_all()
    blog.new_post()
    blog.send("daily")  # daily 2: 4, and for ann 3 as well
    assert blog.got("ann@example.com") == [[1, 2], [3, 4]]
    [_, catch_up] = blog.server.to("ann@example.com")
    html = catch_up.message.get_body(("html",)).get_content()
    assert f'href="{blog.settings.newsletter.public_url}/archive/daily/2"' in html  # "View in browser"


def test_each_cadence_has_its_archive(blog, client):
    blog.reader("ann@example.com")
    blog.reader("dan@example.com", "daily")
    blog.send()  # weekly 1: 1, 2
    blog.new_post()
    blog.send("daily")  # daily 1: 3
    assert re.findall(r'href="/archive/(\d+)"', client.get("/archive").text) == ["1"]
    daily = client.get("/archive/daily")
    assert daily.status_code == 200 and re.findall(r'href="/archive/daily/(\d+)"', daily.text) == ["1"]
    assert "https://blog.test/3" in client.get("/archive/daily/1").text
    assert "https://blog.test/3" not in client.get("/archive/1").text
    for path in ("/archive/hourly", "/archive/daily/2", "/archive/hourly/1", "/archive/hourly.atom",
                 "/archive/weekly.atom"):
        assert client.get(path).status_code == 404, path

    # Each cadence's archive is a feed of its own, named by its pages for a feed reader to find.
    atom = "{http://www.w3.org/2005/Atom}"
    public = blog.settings.newsletter.public_url
    feeds = {}
    for path in ("/archive.atom", "/archive/daily.atom"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/atom+xml"), path
        feeds[path] = ElementTree.fromstring(r.content)
    main, daily_feed = feeds["/archive.atom"], feeds["/archive/daily.atom"]
    assert [e.findtext(f"{atom}id") for e in main.findall(f"{atom}entry")] == [f"{public}/archive/1"]
    assert [e.findtext(f"{atom}id") for e in daily_feed.findall(f"{atom}entry")] == [f"{public}/archive/daily/1"]
    assert "https://blog.test/3" in daily_feed.find(f"{atom}entry").findtext(f"{atom}content")
    assert {link.get("rel"): link.get("href") for link in daily_feed.findall(f"{atom}link")} == {
        "self": f"{public}/archive/daily.atom", "alternate": f"{public}/archive/daily"}
    assert daily_feed.findtext(f"{atom}title").endswith("(daily)")
    assert 'href="/archive/daily.atom"' in daily.text
    assert f'href="{public}/archive/daily.atom"' in client.get("/archive/daily/1").text
    assert 'href="/archive.atom"' in client.get("/archive").text


# --- the command line -----------------------------------------------------------------------------


@pytest.mark.slow
def test_send_cadence_sends_one_and_schedule_shows_every_cadence(tmp_path, smtp_server):
    from conftest import one_line_error, run_digest, subscribe

    feed = write_feed(tmp_path / "blog.atom", [1, 2])
    path = write_config(tmp_path, feeds=[str(feed)], smtp_port=smtp_server.port)
    path.write_text(path.read_text() + '\n[schedule.cadences]\ndaily = "0 7 * * *"\n')
    subscribe(path, "ann@example.com")  # in this process; dan's cadence is given as a reader gives it
    run_digest(path, "subscribers", "add", "dan@example.com", "--cadence", "daily", check=True)
    sent = run_digest(path, "send", "--cadence", "daily", check=True)
    assert "Daily edition 1: 2 posts, 1 delivered, 0 failed" in sent.stdout
    assert [r.recipients for r in smtp_server.received] == [["dan@example.com"]]
    assert "Weekly edition 1: 2 posts, 1 delivered" in run_digest(path, "send", check=True).stdout

    shown = run_digest(path, "schedule", check=True).stdout
    assert 'Schedule weekly (the main cadence): "0 9 * * mon" in UTC' in shown
    assert 'Schedule daily: "0 7 * * *" in UTC' in shown and shown.count("Last edition: 1,") == 2
    listed = run_digest(path, "subscribers", "list", check=True).stdout
    assert re.search(r"dan@example\.com.*daily", listed) and re.search(r"ann@example\.com.*weekly", listed)

    wrong = run_digest(path, "send", "--cadence", "hourly")
    assert wrong.returncode != 0
    assert one_line_error(wrong).endswith("no cadence 'hourly' (schedule.cadences offers: weekly, daily)")


def welcomed(blog, email: str, cadence: str | None = None) -> list[int]:
    """Add a reader with their welcome mail, send the outbox as `digest worker` does, and return
    the posts their welcome shows."""
    from digest.content.render import Renderer
    from digest.delivery import outbox
    from digest.links import Links
    from digest.service import signup

    subs.add(blog.session, email, blog.clock, welcome_mail=True,
             cadence=None if cadence is None else blog.cadences.named(cadence))
    links = Links(blog.settings.newsletter.secret_key, blog.settings.newsletter.public_url, blog.clock)
    kinds = signup.outbox_kinds(blog.settings, links, blog.clock, Renderer.from_settings(blog.settings))
    with SMTPMailer(blog.settings.smtp) as mailer:
        outbox.drain(blog.session, mailer, kinds, blog.clock, sender="test", max_attempts=8)
    [mail] = blog.got(email)
    return mail


def test_the_welcome_shows_the_latest_edition_of_the_readers_cadence(blog):
    blog.reader("bob@example.com")
    blog.send()  # weekly 1: posts 1, 2
    assert welcomed(blog, "dan@example.com", "daily") == [1, 2]  # no daily edition yet: the weekly one
    blog.reader("ann@example.com", "daily")
    blog.new_post()
    blog.send("daily")  # daily 1: post 3 (the daily cadence starts where the weekly one ended)
    assert welcomed(blog, "eve@example.com", "daily") == [3]
    assert welcomed(blog, "fred@example.com") == [1, 2]
