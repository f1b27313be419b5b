"""/admin in `digest serve`: `digest admin add/remove/list`, signing in, sessions, CSRF, the
overview and the next edition (preview, test mail, send now). Through the app's HTTP endpoints
(FastAPI's TestClient) on a real database, with a real SMTP server receiving the mail."""

from __future__ import annotations

import os
import re
import subprocess
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx's successor
    from fastapi.testclient import TestClient

from conftest import DIGEST, one_line_error, run_digest, write_config
from digest.config import load_settings
from digest.mail.mailer import SMTPMailer
from digest.service import pipeline as jobs
from digest.service import subscribers as subs
from digest.service.admin import accounts, overview
from digest.service.web import create_app
from digest.store.models import Delivery, Edition, EditionStatus, SendRequest, Subscriber, SubscriberStatus

PASSWORD = "correct horse battery staple"
BOSS = "boss@example.com"


@pytest.fixture
def admin(db, clock):
    accounts.add(db, BOSS, PASSWORD, clock)
    return BOSS


@pytest.fixture
def client(settings, clock, admin):
    with TestClient(create_app(settings, clock=clock)) as c:
        yield c


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]*)"', html).group(1)


def sign_in(client, email: str = BOSS, password: str = PASSWORD):
    form = client.get("/admin/login")
    return client.post("/admin/login", data={"email": email, "password": password, "csrf": csrf_of(form.text)},
                       follow_redirects=False)


@pytest.fixture
def signed_in(client):
    assert sign_in(client).status_code == 303
    return client


def wait_until(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# --- digest admin add / remove / list -----------------------------------------------------------


def digest(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    return subprocess.run([*DIGEST, "--config", str(config), *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=60, cwd=config.parent, stdin=None if stdin is not None else subprocess.DEVNULL)


def test_admin_add_list_remove_from_the_command_line(config_path, db):
    added = digest(config_path, "admin", "add", "Boss@Example.com", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "Added admin boss@example.com"
    stored = accounts.find(db, BOSS)
    assert stored.password_hash.startswith("$argon2id$") and PASSWORD not in stored.password_hash
    listed = run_digest(config_path, "admin", "list", check=True).stdout
    assert "boss@example.com" in listed and "never signed in" in listed and "1 admin" in listed
    again = digest(config_path, "admin", "add", BOSS, "--password-stdin", stdin="another long password\n")
    assert again.stdout.strip() == "New password for admin boss@example.com"
    assert run_digest(config_path, "admin", "remove", BOSS, check=True).stdout.strip() == "Removed admin boss@example.com"
    db.expire_all()
    assert accounts.find(db, BOSS) is None


def test_admin_add_without_a_terminal_or_with_bad_input_is_a_one_line_error(config_path, db):
    no_tty = digest(config_path, "admin", "add", BOSS)
    assert no_tty.returncode == 1
    assert one_line_error(no_tty) == "error: no terminal to ask for the password on; pipe it in with --password-stdin"
    short = digest(config_path, "admin", "add", BOSS, "--password-stdin", stdin="short\n")
    assert one_line_error(short) == "error: the password must have at least 12 characters"
    bad = digest(config_path, "admin", "add", "not an address", "--password-stdin", stdin=PASSWORD + "\n")
    assert one_line_error(bad).startswith("error: not a valid email address: 'not an address'")
    missing = run_digest(config_path, "admin", "remove", "nobody@example.com")
    assert one_line_error(missing) == "error: no admin nobody@example.com (see `digest admin list`)"
    assert accounts.listing(db) == []


# --- signing in ---------------------------------------------------------------------------------


def test_admin_pages_need_a_sign_in(client):
    for path in ("/admin", "/admin/next", "/admin/next/preview"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/admin/login", path
    assert client.post("/admin/next/send/confirm", data={"csrf": "x"}, follow_redirects=False).status_code == 303


def test_sign_in_sets_a_strict_http_only_session_cookie_for_admin_paths_only(client):
    r = sign_in(client)
    assert r.status_code == 303 and r.headers["location"] == "/admin"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("digest_admin="))
    flags = {f.strip().lower() for f in cookie.split(";")[1:]}
    assert {"httponly", "path=/admin", "samesite=strict"} <= flags
    assert "secure" not in flags  # public_url is http here
    assert not any(f.startswith(("max-age", "expires")) for f in flags)  # ends with the browser; idle: the server
    page = client.get("/admin")
    assert page.status_code == 200 and "Overview" in page.text


def test_the_cookie_is_secure_when_public_url_is_https(tmp_path, smtp_server, clock):
    config = write_config(tmp_path, smtp_port=smtp_server.port, public_url="https://news.example.com")
    settings = load_settings(config)
    with TestClient(create_app(settings, clock=clock), base_url="https://news.example.com") as c:
        from digest.store.database import make_engine, session

        engine = make_engine(settings.database_url)
        with session(engine) as s:
            accounts.add(s, BOSS, PASSWORD, clock)
        engine.dispose()
        form = c.get("/admin/login")
        assert "secure" in form.headers["set-cookie"].lower()
        r = sign_in(c)
        cookie = next(x for x in r.headers.get_list("set-cookie") if x.startswith("digest_admin="))
        assert "secure" in {f.strip().lower() for f in cookie.split(";")}


def test_a_wrong_password_or_address_is_refused_alike(client):
    wrong = sign_in(client, password="not the password at all")
    unknown = sign_in(client, email="who@example.com")
    for r in (wrong, unknown):
        assert r.status_code == 400
        assert "That address and password do not match an admin." in r.text
        assert not any(c.startswith("digest_admin=") for c in r.headers.get_list("set-cookie"))
    assert client.get("/admin", follow_redirects=False).status_code == 303


def test_sign_in_attempts_are_limited_per_account_and_per_client(client, clock):
    for _ in range(5):
        assert sign_in(client, password="wrong password, again").status_code == 400
    limited = sign_in(client)  # the right password now: not even checked
    assert limited.status_code == 429 and "Too many sign-in attempts" in limited.text
    assert sign_in(client, email="other@example.com", password="x" * 12).status_code == 400  # another account
    clock.now += timedelta(minutes=16)
    assert sign_in(client).status_code == 303
    for i in range(10):  # ten more from this client within the minute: the client's limit
        sign_in(client, email=f"guess{i}@example.com", password="x" * 12)
    assert sign_in(client).status_code == 429


def test_the_login_form_needs_its_own_csrf_token(client):
    client.get("/admin/login")
    r = client.post("/admin/login", data={"email": BOSS, "password": PASSWORD, "csrf": "forged"}, follow_redirects=False)
    assert r.status_code == 403


def test_a_session_ends_after_12_hours_idle(signed_in, clock):
    clock.now += timedelta(hours=11, minutes=59)
    assert signed_in.get("/admin").status_code == 200  # used: the 12 hours start again
    clock.now += timedelta(hours=11, minutes=59)
    assert signed_in.get("/admin").status_code == 200
    clock.now += timedelta(hours=12)
    r = signed_in.get("/admin", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin/login"


def test_logout_ends_the_session_for_good(signed_in):
    cookie = signed_in.cookies.get("digest_admin", path="/admin")
    page = signed_in.get("/admin")
    r = signed_in.post("/admin/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin/login"
    signed_in.cookies.set("digest_admin", cookie, path="/admin")  # the old cookie, kept by someone
    assert signed_in.get("/admin", follow_redirects=False).status_code == 303


def test_a_form_without_this_sessions_csrf_token_is_refused(signed_in, smtp_server, db, settings, clock):
    jobs.poll(db, settings, clock)
    for data in ({}, {"csrf": "wrong"}):
        for path in ("/admin/next/test", "/admin/next/send", "/admin/next/send/confirm", "/admin/logout"):
            assert signed_in.post(path, data=data, follow_redirects=False).status_code == 403, (path, data)
    assert signed_in.get("/admin").status_code == 200  # not logged out
    assert db.exec(select(Edition)).all() == []


def test_admin_pages_are_never_cached_and_reader_pages_stay_cookie_free(signed_in, db, settings, clock):
    jobs.poll(db, settings, clock)
    for path in ("/admin", "/admin/next", "/admin/next/preview", "/admin/login"):
        r = signed_in.get(path)
        assert r.status_code == 200, path
        assert r.headers["cache-control"] == "no-store", path
        assert "script-src 'none'" in r.headers["content-security-policy"], path
    for path in ("/", "/archive", "/archive.atom"):
        r = signed_in.get(path)
        assert "set-cookie" not in r.headers, path
        assert "/admin" not in r.text, path


# --- overview -----------------------------------------------------------------------------------


def test_the_overview_shows_the_list_the_editions_the_next_send_and_the_feeds(signed_in, db, settings, clock, smtp_server):
    for i in range(3):
        subs.add(db, f"reader{i}@example.com", clock)
    subs.unsubscribe(db, subs.get(db, "reader2@example.com"), clock)
    jobs.send(db, settings, SMTPMailer(settings.smtp), clock)
    page = signed_in.get("/admin").text
    assert re.search(r"<dt>active</dt><dd>2</dd>", page) and re.search(r"<dt>unsubscribed</dt><dd>1</dd>", page)
    assert "<svg" in page and "Subscribers over the last 26 weeks" in page
    # the last week of the table: 3 joined, 1 left, list of 2
    assert re.search(r"<td>3</td><td>1</td><td>0</td><td>2</td></tr>\s*</tbody>", page)
    edition = db.exec(select(Edition)).one()
    assert re.search(rf"<th scope=\"row\"><a href=\"/admin/editions/1\">{edition.number}</a></th>.*?<td>sent</td><td>2</td><td>0</td><td>0</td><td>0</td>", page, re.S)
    assert "Nothing new yet: no edition would be sent." in page
    assert "<strong>Mon 2026-11-30 09:00 UTC</strong>" in page  # the clock says Thu 2026-11-26 09:00
    assert "blogger.atom" in page and "<td>never</td>" not in page.split('id="feeds"')[1].split("</tr>")[1]


def test_weeks_count_joins_departures_and_bounces_and_work_the_size_back(db, clock):
    now = clock()
    for i in range(4):
        clock.now = now - timedelta(weeks=3)
        subs.add(db, f"old{i}@example.com", clock)
    clock.now = now - timedelta(weeks=1)
    subs.unsubscribe(db, subs.get(db, "old0@example.com"), clock)
    bounced = subs.get(db, "old1@example.com")
    bounced.status, bounced.bounced_at = SubscriberStatus.bounced, clock.now
    db.add(bounced)
    db.commit()
    clock.now = now
    subs.add(db, "new@example.com", clock)
    counts = overview.subscriber_counts(db)
    weeks = overview.weeks(db, now, counts["active"])
    assert len(weeks) == 26 and weeks[-1].start == overview.week_start(now)
    assert [(w.joined, w.left, w.bounced, w.size) for w in weeks[-4:]] == [(4, 0, 0, 4), (0, 0, 0, 4), (0, 1, 1, 2),
                                                                           (1, 0, 0, 3)]
    assert all(w.size == 0 for w in weeks[:-4])



def test_joins_at_different_times_of_one_week_count_together(db, clock):
    """Three sign-ups on Monday, Wednesday and Sunday of one week are 3 joins of that week."""
    now = clock()
    monday = overview.week_start(now) - timedelta(weeks=2)
    for i, offset in enumerate((timedelta(hours=1), timedelta(days=2, minutes=7), timedelta(days=6, hours=23))):
        clock.now = monday + offset
        subs.add(db, f"week{i}@example.com", clock)
    clock.now = now
    weeks = overview.weeks(db, now, overview.subscriber_counts(db)["active"])
    assert [(w.start, w.joined, w.size) for w in weeks[-3:]] == [(monday, 3, 3), (monday + timedelta(weeks=1), 0, 3),
                                                                 (overview.week_start(now), 0, 3)]


def test_the_charts_axes_are_labelled_with_the_values_at_their_grid_lines():
    """Labels are whole steps (0, 25, 50, 75, 100; not 0, 2, 5, 7, 10 placed a quarter apart), and
    the newest week's date is shown without another date on top of it."""
    from digest.service.admin import chart

    monday = overview.week_start(datetime(2026, 11, 26, tzinfo=UTC))
    weeks = [overview.Week(monday - timedelta(weeks=25 - i), joined=92 if i == 20 else 10, left=3, bounced=1,
                           size=1250 + i % 4) for i in range(26)]
    svg = str(chart.weekly_chart(weeks))
    left = re.findall(r'text-anchor="end" fill="#57606a">([\d,]+)</text>', svg)
    right = re.findall(r'fill="#0b5cad">([\d,]+)</text>', svg)
    assert left == ["0", "25", "50", "75", "100"] and right == ["1,250", "1,251", "1,252", "1,253", "1,254"]
    dates = re.findall(r'text-anchor="middle" fill="#57606a">([^<]+)</text>', svg)
    assert dates[-1] == "23 Nov" and dates == [f"{w.start:%d %b}" for w in weeks[1::4]]


def test_recent_editions_count_each_outcome_and_the_bounces_among_the_failed(db, clock):
    """The delivered count is worked out (recipients less the rest); bounces are counted from
    their own partial index (ix_delivery_bounced), on SQLite and PostgreSQL alike."""
    for i in range(7):
        subs.add(db, f"r{i}@example.com", clock)
    edition = Edition(number=1, created_at=clock(), subject="One", status=EditionStatus.sending, recipients=7)
    db.add(edition)
    db.commit()
    outcomes = [("sent", None), ("sent", None), ("failed", "bounced (550 5.1.1 unknown user)"),
                ("failed", "554 5.7.1 refused"), ("skipped", None), ("pending", "451 4.7.1 later"),
                ("failed", "bounced (552 mailbox full)")]
    for sub, (status, error) in zip(db.exec(select(Subscriber).order_by(Subscriber.id)).all(), outcomes, strict=True):
        db.add(Delivery(edition_id=edition.id, subscriber_id=sub.id, status=status, last_error=error))
    db.commit()
    (line,) = overview.recent_editions(db)
    assert (line.recipients, line.delivered, line.failed, line.pending, line.skipped, line.bounced) == (7, 2, 3, 1, 1, 2)


def test_an_editions_failures_come_a_page_at_a_time_in_delivery_order(db, clock):
    """editions.undelivered reads the page's ids from the undelivered index, then their rows."""
    from digest.content import editions

    older = Edition(number=1, created_at=clock(), subject="Older", status=EditionStatus.sent, recipients=0)
    edition = Edition(number=2, created_at=clock(), subject="Newest", status=EditionStatus.sending, recipients=0)
    db.add_all([older, edition])
    db.commit()
    for i in range(130):
        sub, _ = subs.add(db, f"r{i:03d}@example.com", clock)
        db.add(Delivery(edition_id=older.id, subscriber_id=sub.id, status="failed", last_error="554 no"))
        status, attempts = ("failed", 1) if i % 2 else ("pending", 1 if i % 4 == 0 else 0)
        db.add(Delivery(edition_id=edition.id, subscriber_id=sub.id, status=status, attempts=attempts,
                        last_error=f"error {i}"))
    db.commit()
    first = editions.undelivered(db, edition, limit=51)
    assert [r.email for r in first] == [f"r{i:03d}@example.com" for i in range(1, 102, 2)]
    assert [r.id for r in first] == sorted(r.id for r in first)
    rest = editions.undelivered(db, edition, after=first[49].id, limit=51)
    assert [r.last_error for r in rest] == [f"error {i}" for i in range(101, 130, 2)]
    deferred = editions.undelivered(db, edition, deferred=True, limit=51)
    assert [r.email for r in deferred] == [f"r{i:03d}@example.com" for i in range(0, 130, 4)]

# --- the next edition ---------------------------------------------------------------------------


def test_the_preview_is_framed_sandboxed_and_runs_no_script(signed_in, db, settings, clock):
    jobs.poll(db, settings, clock)
    page = signed_in.get("/admin/next")
    frame = re.search(r"<iframe[^>]*>", page.text).group(0)
    assert re.search(r"\ssandbox[\s>]", frame) and 'src="/admin/next/preview"' in frame
    assert "frame-src 'self'" in page.headers["content-security-policy"]
    preview = signed_in.get("/admin/next/preview")
    csp = preview.headers["content-security-policy"]
    assert csp.startswith("sandbox;") and "script-src 'none'" in csp and "frame-ancestors 'self'" in csp
    assert preview.headers["x-frame-options"] == "SAMEORIGIN"
    assert "<script" not in preview.text.lower()
    assert jobs.preview(db, settings, clock, fetch=False).subject in preview.text


def test_send_a_test_to_me_mails_the_next_edition_to_the_admin_only(signed_in, db, settings, clock, smtp_server):
    jobs.poll(db, settings, clock)
    subs.add(db, "reader@example.com", clock)
    page = signed_in.get("/admin/next")
    r = signed_in.post("/admin/next/test", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin/next?notice=test"
    assert "A test of this edition is on its way to boss@example.com." in signed_in.get(r.headers["location"]).text
    wait_until(lambda: smtp_server.to(BOSS))
    message = smtp_server.to(BOSS)[0].message
    assert message["Subject"].startswith("[Preview] ")
    assert [r.recipients for r in smtp_server.received] == [[BOSS]]
    assert db.exec(select(Edition)).all() == []


def test_send_now_asks_first_then_the_background_sends_the_edition(signed_in, db, settings, clock, smtp_server):
    jobs.poll(db, settings, clock)
    for address in ("a@example.com", "b@example.com"):
        subs.add(db, address, clock)
    page = signed_in.get("/admin/next")
    asked = signed_in.post("/admin/next/send", data={"csrf": csrf_of(page.text)})
    assert asked.status_code == 200 and "Send the next edition now?" in asked.text and "up to 2 active" in asked.text
    assert db.exec(select(Edition)).all() == [] and smtp_server.received == []
    r = signed_in.post("/admin/next/send/confirm", data={"csrf": csrf_of(asked.text)}, follow_redirects=False)
    assert r.status_code == 303 and re.fullmatch(r"/admin/send/\d+", r.headers["location"])

    def finished() -> bool:
        db.expire_all()
        edition = db.exec(select(Edition)).first()
        db.rollback()
        return edition is not None and edition.status == EditionStatus.sent

    wait_until(finished)
    assert sorted(x for m in smtp_server.received for x in m.recipients) == ["a@example.com", "b@example.com"]
    wait_until(lambda: "Done at" in signed_in.get(r.headers["location"]).text)
    status = signed_in.get(r.headers["location"]).text
    assert "edition 1: " in status and "2 delivered, 0 failed, 0 pending" in status
    assert db.exec(select(Delivery)).all() and db.exec(select(Subscriber)).all()


def test_a_send_now_left_running_by_a_killed_server_does_not_block_the_next(db, settings, clock, admin, smtp_server):
    # What a `digest serve` killed mid-send leaves behind: its request still says "running", and
    # "send now" would show that request for ever instead of making a new one.
    left = SendRequest(requested_by=BOSS, requested_at=clock.now, status="running", started_at=clock.now)
    db.add(left)
    db.commit()
    with TestClient(create_app(settings, clock=clock)) as c:
        assert sign_in(c).status_code == 303

        def closed() -> bool:
            db.expire_all()
            row = db.get(SendRequest, left.id)
            db.rollback()
            return row.status == "failed"

        wait_until(closed)
        assert "interrupted" in c.get(f"/admin/send/{left.id}").text
        page = c.get("/admin/next")
        asked = c.post("/admin/next/send", data={"csrf": csrf_of(page.text)})
        r = c.post("/admin/next/send/confirm", data={"csrf": csrf_of(asked.text)}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] != f"/admin/send/{left.id}"
