"""The email as a reader's mail program sees it: MIME structure, headers, both parts, links."""

from __future__ import annotations

import email
import email.policy
import os
import re
from datetime import UTC
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sqlmodel import select

from digest.content.render import Rendered
from digest.links import Links, PublicUrls
from digest.mail.mailer import SMTPMailer
from digest.mail.message import MessageTemplate, Recipient
from digest.mail.verp import VERP
from digest.service import pipeline as jobs
from digest.service import subscribers
from digest.store.models import Delivery

GOLDEN = Path(__file__).parent / "golden"


def send_to(db, settings, clock, smtp_server, people):
    for addr, name in people:
        subscribers.add(db, addr, clock, name=name)
    jobs.send(db, settings, SMTPMailer(settings.smtp), clock)
    return {r.recipients[0]: r for r in smtp_server.received}


def test_each_message_is_multipart_alternative_with_list_headers(db, settings, clock, smtp_server):
    got = send_to(db, settings, clock, smtp_server, [("ann@example.com", "Ann Lee"), ("bob@example.com", None)])
    assert set(got) == {"ann@example.com", "bob@example.com"}
    links = Links(settings.newsletter.secret_key, settings.newsletter.public_url)
    ids = set()
    for addr, received in got.items():
        msg = received.message
        # VERP: the envelope sender names this delivery, so a bounce can be traced back to it
        delivery = db.exec(select(Delivery).where(Delivery.message_id == msg["Message-ID"])).one()
        assert received.sender == VERP(settings.newsletter.secret_key, "digest.test").sender(delivery.id)
        assert VERP(settings.newsletter.secret_key, "digest.test").read(received.sender) == delivery.id
        assert msg.get_content_type() == "multipart/alternative"
        text, html = msg.get_payload()
        assert (text.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
        assert text.get_content_charset() == html.get_content_charset() == "utf-8"
        assert msg["From"] == "Test Weekly <news@digest.test>"
        assert msg["To"].addresses[0].addr_spec == addr
        assert msg["Subject"] == "Test Weekly: 5 new posts"
        assert msg["Date"] and msg["List-Id"] == "Test Weekly <test-weekly.digest.test>"
        assert re.fullmatch(r"<[^@<>]+@digest\.test>", msg["Message-ID"])
        ids.add(msg["Message-ID"])
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        url = msg["List-Unsubscribe"].strip("<>")
        assert url.startswith("http://127.0.0.1:8000/unsubscribe/")
        sid, _ = links.read_subscriber_token(url.rsplit("/", 1)[1])
        assert sid == subscribers.get(db, addr).id
        body_text, body_html = text.get_content(), html.get_content()
        assert url in body_text and url in body_html  # visible unsubscribe link in both parts
        assert "ARCHITECTURE" in body_text and "Snowflake" in body_html
        assert "http://127.0.0.1:8000/archive/1" in body_html
        # lines in the raw message stay short: nothing to clip or re-wrap
        assert max(len(line) for line in received.data.split(b"\r\n")) <= 998
    assert len(ids) == 2
    assert "Hi Ann Lee," in got["ann@example.com"].message.get_payload()[0].get_content()
    assert "Hi there," in got["bob@example.com"].message.get_payload()[0].get_content()


def test_quoted_printable_lines_are_short_and_decode_exactly():
    long_url = "https://news.example/unsubscribe/" + "x" * 150
    rendered = Rendered("S", "<p>" + "é" * 300 + "</p><a href=\"XDIGESTUNSUBSCRIBEURLX\">u</a> XDIGESTNAMEX!\n", "Hi XDIGESTNAMEX,\n" + "word " * 100 + "\nXDIGESTUNSUBSCRIBEURLX\n")
    from datetime import datetime
    message = MessageTemplate(rendered, from_="N <n@x.test>", list_id="<l.x.test>", date=datetime(2026, 11, 26, tzinfo=UTC))
    raw = message.for_recipient(Recipient("a@x.test", "<Zoë & Co>", long_url, "https://p", "<1@x.test>"))
    bodies = raw.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in bodies.split(b"\r\n")) <= 76
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    text, html = msg.get_payload()
    assert text.get_content().replace("\r\n", "\n") == "Hi <Zoë & Co>,\n" + "word " * 100 + "\n" + long_url + "\n"
    assert html.get_content().replace("\r\n", "\n") == "<p>" + "é" * 300 + f"</p><a href=\"{long_url}\">u</a> &lt;Zoë &amp; Co&gt;!\n"


def test_nothing_a_subscriber_or_feed_controls_can_inject_a_header():
    from datetime import datetime
    rendered = Rendered("Weekly\r\nBcc: victim@example.com", "<p>x</p>", "x")
    message = MessageTemplate(rendered, from_="N <n@x.test>", list_id="<l.x.test>", date=datetime(2026, 11, 26, tzinfo=UTC))
    raw = message.for_recipient(Recipient("a@x.test", "Eve\r\nX-Injected: 1", "https://u", "https://p", "<1@x.test>"))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Bcc"] is None and msg["X-Injected"] is None
    assert msg["Subject"] == "Weekly Bcc: victim@example.com"
    assert "X-Injected" not in msg


def test_hostile_feed_is_inert_in_the_email(tmp_path, smtp_server, clock):
    from conftest import FIXTURES, write_config
    from digest.config import load_settings
    from digest.store.database import make_engine, session
    from digest.store.schema import create_schema
    cfg = load_settings(write_config(tmp_path, feeds=[str(FIXTURES / "hostile.atom")], smtp_port=smtp_server.port))
    engine = make_engine(cfg.database_url)
    create_schema(engine)
    with session(engine) as db:
        subscribers.add(db, "ann@example.com", clock)
        jobs.send(db, cfg, SMTPMailer(cfg.smtp), clock)
    msg = smtp_server.received[0].message
    assert msg["Bcc"] is None and msg["X-Injected"] is None
    html = msg.get_payload()[1].get_content()
    for bad in ("<script", "onerror=", "javascript:", "<iframe", "onclick=", "<form", "<b>bold</b>"):
        assert bad not in html
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &#34;quotes&#34;" in html or "&lt;b&gt;bold&lt;/b&gt; &amp; &quot;quotes&quot;" in html


UPDATE_GOLDEN = "UPDATE_GOLDEN"  # =1: write the golden files from this run (then review the diff)


def golden_text(name: str, actual: str) -> str:
    """The text of tests/golden/NAME, to compare `actual` with. A missing golden file is a failure,
    not a pass: it is written only on a deliberate run with UPDATE_GOLDEN=1, whose diff one
    then reviews."""
    golden = GOLDEN / name
    if os.environ.get(UPDATE_GOLDEN) == "1":
        golden.write_text(actual, encoding="utf-8")
    if not golden.exists():
        pytest.fail(f"{golden} is missing: run `{UPDATE_GOLDEN}=1 .venv/bin/python -m pytest tests/test_message.py`"
                    " to write it, review it, and commit it", pytrace=False)
    return golden.read_text(encoding="utf-8")


def sample_edition_parts(db, settings, clock) -> tuple[str, str]:
    """(html, text) of the sample blog's edition for the preview reader. Nothing in it varies from
    run to run: the date is the test clock's, the links carry "preview" instead of signed tokens,
    and the MIME boundary (random) is not part of a part."""
    p = jobs.preview(db, settings, clock)
    return p.message.parts_for(jobs.preview_recipient(PublicUrls(settings.newsletter.public_url)))


def test_text_part_matches_the_golden_file(db, settings, clock):
    _, text = sample_edition_parts(db, settings, clock)
    assert text == golden_text("edition.txt", text)


def test_html_part_matches_the_golden_file(db, settings, clock):
    html, _ = sample_edition_parts(db, settings, clock)
    # mjml writes the body on one 15 kB line; a line break between adjacent tags (no text there,
    # so nothing a reader sees) makes a failure or a review show the element that changed
    html = html.replace("><", ">\n<")
    assert html == golden_text("edition.html", html)


def test_wire_bytes_are_exactly_the_dot_stuffed_message_and_tokens_match_itsdangerous():
    from datetime import datetime

    from itsdangerous import URLSafeSerializer

    from digest.links import _fingerprint
    from digest.mail.smtp import dot_stuff

    html = "<style>\n.post a { color: red }\n</style>\n<p>100% sure</p>\n.\n..dots\n<a href=\"XDIGESTUNSUBSCRIBEURLX\">u</a>\n"
    rendered = Rendered("S", html, ".leading dot\nXDIGESTNAMEX\n%s %b %%\n")
    message = MessageTemplate(rendered, from_="N <n@x.test>", list_id="<l.x.test>", date=datetime(2026, 11, 26, tzinfo=UTC))
    for name in (".dotty", "Ann", None, "x" * 200):
        r = Recipient("a@x.test", name, "https://u.test/unsubscribe/tok", "https://p", "<1@x.test>")
        assert message.wire_for(r) == dot_stuff(message.for_recipient(r))
    links = Links("s3cret-s3cret-s3cret", "https://news.example")
    reference = URLSafeSerializer("s3cret-s3cret-s3cret", salt="digest.subscriber")
    for sid, addr in [(1, "a@b.test"), (123456789, "Ann.Lee@Example.com"), (42, "ü@example.com")]:
        token = links.subscriber_token(sid, addr)
        assert token == reference.dumps([sid, _fingerprint(addr)])
        assert links.read_subscriber_token(token) == (sid, _fingerprint(addr))


# --- invisible characters and sizes: what a hostile feed cannot do to an email ----------------

# The code points the hostile trial used, and their kin (independent of plaintext.py's rules).
INVISIBLE = [chr(cp) for cp in (0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069,
                                0x200E, 0x200F, 0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF, 0x00AD)]


def atom(entries: list[str]) -> str:
    return ("<?xml version='1.0' encoding='UTF-8'?><feed xmlns='http://www.w3.org/2005/Atom'>"
            "<id>urn:test:blog</id><title>Test blog</title><updated>2026-11-25T00:00:00Z</updated>"
            + "".join(entries) + "</feed>")


def entry(n: int, title: str, link: str, body: str, *, author: str = "Ann", day: int = 25) -> str:
    from xml.sax.saxutils import escape, quoteattr
    when = f"2026-11-{day:02d}T10:00:{n % 60:02d}Z"
    return (f"<entry><id>urn:test:post:{n}</id><title>{escape(title)}</title><link rel='alternate' href={quoteattr(link)}/>"
            f"<published>{when}</published><updated>{when}</updated><content type='html'>{escape(body)}</content>"
            f"<author><name>{escape(author)}</name></author></entry>")


def send_feed(tmp_path, smtp_server, clock, feed: str, people, *, max_bytes: int = 10 * 1024 * 1024,
              images: str = "lead", templates_dir: Path | None = None):
    """Send the edition of `feed` to `people` [(address, name, categories)] over real SMTP;
    names are written to the database as they are, as a row stored by an older version would be."""
    from conftest import write_config
    from digest.config import load_settings
    from digest.store.database import make_engine, session
    from digest.store.models import Subscriber, SubscriberStatus
    from digest.store.schema import create_schema
    path = tmp_path / "blog.atom"
    path.write_text(feed, encoding="utf-8")
    cfg = load_settings(write_config(tmp_path, feeds=[str(path)], smtp_port=smtp_server.port))
    cfg.feeds.max_bytes = max_bytes
    cfg.edition.images = images
    cfg.edition.templates_dir = templates_dir
    engine = make_engine(cfg.database_url)
    create_schema(engine)
    with session(engine) as db:
        for addr, name, categories in people:
            db.add(Subscriber(email=addr, name=name, topics=[categories] if categories else None, status=SubscriberStatus.active, created_at=clock()))
        db.commit()
        preview = jobs.preview(db, cfg, clock)
        result = jobs.send(db, cfg, SMTPMailer(cfg.smtp), clock)
        assert result.edition.failures == []
    engine.dispose()
    return cfg, preview, {r.recipients[0]: r for r in smtp_server.received}


def test_invisible_characters_never_reach_an_email_and_links_hiding_one_are_dropped(tmp_path, smtp_server, clock):
    feed = atom([
        entry(1, "News: Invoice \u202egpj.exe", "https://blog.test/invoice", "<p>Pay \u2066now\u2069 or\u00ad else.</p>",
              author="Mal\u200blory"),
        entry(2, "News: Zero\u200bwidth link", "https://blog.test/\u200bphish", "<p>Second body.</p>"),
        entry(3, "News: Encoded override link", "https://blog.test/x%E2%80%AEgpj.exe", "<p>Third body.</p>"),
        entry(4, "\ufeffNews: \u200fPlain\u200e title", "https://blog.test/plain", "<p>Fourth body.</p>"),
    ])
    _, _, got = send_feed(tmp_path, smtp_server, clock, feed, [("eve@example.com", "\u202eEve\u2069 \u200bAdams", None)])
    received = got["eve@example.com"]
    msg = received.message
    text, html = (part.get_content().replace("\r\n", "\n") for part in msg.get_payload())
    for part in (text, html, received.data.decode("utf-8", "replace")):
        assert not [c for c in INVISIBLE if c in part], [hex(ord(c)) for c in INVISIBLE if c in part]
    assert "Hi Eve Adams," in text and "Hi Eve Adams," in html
    assert "Invoice gpj.exe" in text and "Invoice gpj.exe" in html and "by Mallory" in text
    assert "Pay now or else." in text and "Plain title" in html
    # The two posts whose links hide a character keep their title, without a link.
    assert "Zerowidth link" in html and "Encoded override link" in html
    assert "phish" not in html and "phish" not in text and "gpj.exe\"" not in html and "%E2%80%AE" not in text
    links = re.findall(r"^Read more: (\S+)$", text, re.M)
    assert sorted(links) == ["https://blog.test/invoice", "https://blog.test/plain"]
    assert html.count("Read more") == 2


def test_a_huge_feed_gives_emails_under_gmails_clipping_limit_with_the_rest_on_the_web(tmp_path, smtp_server, clock):
    """The hostile trial: a 100 KB title and 500 posts of 20 KB each made a 340 KB email, which
    Gmail clips at 102 KB, unsubscribe link and all."""
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "latency", "and", "throughput", "argue"]
    body = "<p>" + " ".join(words[i % len(words)] for i in range(3700)) + "</p>"  # 20 KB
    assert len(body) > 20_000
    huge_title = "News: " + " ".join(f"word{i}" for i in range(17_000))  # 100 KB, the newest post
    assert len(huge_title) > 100_000
    entries = [entry(0, huge_title, "https://blog.test/huge", body, day=26)]
    entries += [entry(n, f"News: Post {n}", f"https://blog.test/{n}", body) for n in range(1, 497)]
    entries += [entry(n, f"Tiny: Post {n}", f"https://blog.test/{n}", body) for n in range(497, 500)]
    longest_name = "\U0001F4EC" * 200  # 12 bytes a character in quoted-printable
    people = [("ann@example.com", "Ann", None), ("bob@example.com", longest_name, None), ("cy@example.com", "Cy", "Tiny")]
    cfg, preview, got = send_feed(tmp_path, smtp_server, clock, atom(entries), people, max_bytes=50 * 1024 * 1024)
    assert set(got) == {"ann@example.com", "bob@example.com", "cy@example.com"}
    archive = f"{cfg.newsletter.public_url}/archive/1"
    for addr, received in got.items():
        msg = received.message
        text, html = (part.get_content().replace("\r\n", "\n") for part in msg.get_payload())
        assert len(received.data) < 102_000, (addr, len(received.data))  # the whole message, as sent
        assert len(html.encode("utf-8")) < 102_000
        unsubscribe = msg["List-Unsubscribe"].strip("<>")
        assert unsubscribe in text and f'href="{unsubscribe}"' in html
        titles = re.findall(r"^(?:Post \d+|word0 .*)$", text, re.M)
        more = re.findall(r"^\.\.\.and (\d+) more on the web: (\S+)$", text, re.M)
        if addr == "cy@example.com":  # chose Tiny: 3 posts, they fit
            assert len(titles) == 3 and more == [] and "more on the web" not in html
            continue
        [(n, url)] = more
        assert url == archive and f'href="{archive}"' in html
        assert 0 < len(titles) < 500 and int(n) == 500 - len(titles)  # every post is shown or counted
        assert f"and {n} more on the web" in html
        huge = titles[0]
        assert len(huge) <= 300 and huge.endswith("…")
    # `digest send --preview` showed what was sent: the same text, with the same reader's links.
    sent = got["ann@example.com"].message
    unsubscribe = sent["List-Unsubscribe"].strip("<>")
    sent_text = sent.get_payload()[0].get_content().replace("\r\n", "\n")
    prefs = re.search(r"^Choose topics: (\S+)$", sent_text, re.M).group(1)
    reader = Recipient("ann@example.com", "Ann", unsubscribe, prefs, "<x@digest.test>")
    assert preview.message.parts_for(reader)[1] == sent_text


def test_an_edition_a_little_too_large_keeps_every_post_with_shorter_excerpts(tmp_path, smtp_server, clock):
    body = "<p>" + " ".join(f"w{i}" for i in range(200)) + "</p>"
    entries = [entry(n, f"News: Post {n}", f"https://blog.test/{n}", body) for n in range(1, 81)]
    _, _, got = send_feed(tmp_path, smtp_server, clock, atom(entries), [("ann@example.com", "Ann", None)])
    received = got["ann@example.com"]
    text = received.message.get_payload()[0].get_content().replace("\r\n", "\n")
    assert len(received.data) < 102_000
    assert len(re.findall(r"^Post \d+$", text, re.M)) == 80 and "more on the web" not in text
    excerpts = re.findall(r"^(w0 .*?…)$", text, re.M | re.S)
    assert excerpts and all(len(e.split()) < 60 for e in excerpts)


def test_a_30_post_edition_is_sent_whole(tmp_path, smtp_server, clock):
    body = "<p>" + " ".join(f"w{i}" for i in range(200)) + "</p>"
    entries = [entry(n, f"News: Post {n}", f"https://blog.test/{n}", body) for n in range(1, 31)]
    _, _, got = send_feed(tmp_path, smtp_server, clock, atom(entries), [("ann@example.com", "Ann", None)])
    text = got["ann@example.com"].message.get_payload()[0].get_content().replace("\r\n", "\n")
    assert len(re.findall(r"^Post \d+$", text, re.M)) == 30 and "more on the web" not in text
    assert len(re.search(r"^(w0 .*?…)$", text, re.M | re.S).group(1).split()) == 60  # excerpt_words


# --- lead images ------------------------------------------------------------------------------

class ImgTags(HTMLParser):
    """Each <img> of an HTML part: its attributes and the href of the link around it."""

    def __init__(self):
        super().__init__()
        self.images, self.href = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.href = dict(attrs).get("href")
        elif tag == "img":
            self.images.append({**dict(attrs), "link": self.href})

    def handle_endtag(self, tag):
        if tag == "a":
            self.href = None


def img_tags(html: str) -> list[dict]:
    parser = ImgTags()
    parser.feed(html)
    return parser.images


def parts(received) -> tuple[str, str]:
    text, html = (part.get_content().replace("\r\n", "\n") for part in received.message.get_payload())
    return text, html


def test_each_post_shows_its_lead_image_as_wide_as_the_card_linked_to_the_post(tmp_path, smtp_server, clock):
    from conftest import FIXTURES
    feed = (FIXTURES / "images.rss").read_text(encoding="utf-8")
    _, _, got = send_feed(tmp_path, smtp_server, clock, feed, [("ann@example.com", "Ann", None)])
    _, html = parts(got["ann@example.com"])
    shown = [(i["src"], i["alt"], i["width"], i.get("height"), i["link"]) for i in img_tags(html)]
    post = "https://pictures.example/2026/11/"
    assert shown == [  # sections Cities, Coast, Garden; newest post first
        ("https://static.pictures.example/2026/11/night-market-large.jpg", "Night market", "552", "368",
         post + "night-market.html"),
        ("https://cdn.pictures.example/upload/v1764/bridges-cover.png", "Bridges of the old town", "552", None,
         post + "bridges.html"),
        ("https://blogger.googleusercontent.com/img/b/R29vZ2xl/AVvXsEhTestLighthouse0Qm9Zx7Yk2/w600-h450-c/lighthouse-dusk.jpg",
         "The lighthouse at dusk", "552", "414", post + "lighthouse.html"),
        ("https://blogger.googleusercontent.com/img/a/AVvXsEgTestTidePools8Lw3Rn5Kd1=w600-h338-c", "Tide pools", "552", "311",
         post + "tide-pools.html"),
        ("https://pictures.example/wp-content/uploads/2026/11/frost-on-dahlias.jpg", "First frost", "552", "368",
         post + "first-frost.html"),
    ]
    # on a phone as wide as the card, on a desktop never wider than its width: the height follows
    assert all("width:100%;max-width:552px;height:auto" in i["style"] for i in img_tags(html))
    for bad in ("javascript:", "data:", "onerror", "pixel.gif", "\u202e"):
        assert bad not in html.lower()


def test_images_none_shows_no_image_and_the_text_part_is_the_same_either_way(tmp_path, smtp_server, clock):
    from conftest import FIXTURES
    feed = (FIXTURES / "images.rss").read_text(encoding="utf-8")
    (tmp_path / "lead").mkdir()
    (tmp_path / "none").mkdir()
    _, _, got = send_feed(tmp_path / "lead", smtp_server, clock, feed, [("ann@example.com", "Ann", None)])
    _, _, got_none = send_feed(tmp_path / "none", smtp_server, clock, feed, [("bob@example.com", "Ann", None)],
                               images="none")
    text, html = parts(got["ann@example.com"])
    text_none, html_none = parts(got_none["bob@example.com"])
    assert len(img_tags(html)) == 5 and img_tags(html_none) == [] and "<img" not in html_none
    assert "Night market" in html_none
    # the same reader's text, but for the links signed for each address
    unsubscribe = [re.search(r"^Unsubscribe: (\S+)$", t, re.M).group(1) for t in (text, text_none)]
    prefs = [re.search(r"^Choose topics: (\S+)$", t, re.M).group(1) for t in (text, text_none)]
    assert text.replace(unsubscribe[0], "U").replace(prefs[0], "P") == \
        text_none.replace(unsubscribe[1], "U").replace(prefs[1], "P")
    assert "blogger" not in text and "img" not in text


def test_a_30_post_edition_with_an_image_each_is_sent_whole_under_102_kb(tmp_path, smtp_server, clock):
    """Blogger's URLs are long (~200 characters); 30 posts of them and full excerpts still fit."""
    body = "<p>" + " ".join(f"w{i}" for i in range(200)) + "</p>"
    token = "AVvXsEh" + "Qm9ZxLk2Rn5Kd1Tp7Vb3Wc8Yf4Hg6Js0Ma" * 5  # the length of Blogger's tokens
    thumbnail = ("<media:thumbnail xmlns:media='http://search.yahoo.com/mrss/' url='https://blogger.googleusercontent.com"
                 "/img/b/R29vZ2xl/{token}{n}/s72-w640-h360-c/a-picture-of-post-{n}.png' height='72' width='72'/>")
    entries = [entry(n, f"News: Post {n}", f"https://blog.test/2026/11/a-long-post-name-{n}.html", body)
               .replace("</entry>", thumbnail.format(token=token, n=n) + "</entry>") for n in range(1, 31)]
    _, _, got = send_feed(tmp_path, smtp_server, clock, atom(entries), [("ann@example.com", "\U0001F4EC" * 200, None)])
    received = got["ann@example.com"]
    text, html = parts(received)
    assert len(re.findall(r"^Post \d+$", text, re.M)) == 30 and "more on the web" not in text
    assert len(re.search(r"^(w0 .*?…)$", text, re.M | re.S).group(1).split()) == 60  # excerpt_words
    shown = img_tags(html)
    assert len(shown) == 30 and {(i["width"], i["height"]) for i in shown} == {("552", "311")}
    assert len(html.encode("utf-8")) < 102_000 and len(received.data) < 102_000, (len(html), len(received.data))


def test_a_template_of_ones_own_gets_the_setting_and_each_posts_image(tmp_path, smtp_server, clock):
    from conftest import FIXTURES
    own = tmp_path / "templates"
    own.mkdir()
    (own / "edition.mjml.j2").write_text(
        "<mjml><mj-body><mj-section><mj-column>{% for s in sections %}{% for post in s.posts %}"
        "<mj-text>[{{ images }} {{ post.display_title }}: {% if post.image %}{{ post.image.url }} {{ post.image.width }}"
        "x{{ post.image.height }}{% else %}none{% endif %}]</mj-text>{% endfor %}{% endfor %}"
        "<mj-text>{{ unsubscribe_url }}</mj-text></mj-column></mj-section></mj-body></mjml>", encoding="utf-8")
    feed = (FIXTURES / "images.rss").read_text(encoding="utf-8")
    _, _, got = send_feed(tmp_path, smtp_server, clock, feed, [("ann@example.com", "Ann", None)], images="none",
                          templates_dir=own)
    _, html = parts(got["ann@example.com"])
    assert "[none Night market: https://static.pictures.example/2026/11/night-market-large.jpg 552x368]" in html
    assert "[none Tide pools: https://blogger.googleusercontent.com/img/a/AVvXsEgTestTidePools8Lw3Rn5Kd1=w600-h338-c 552x311]" in html
    assert "[none Seed catalogue: none]" in html
