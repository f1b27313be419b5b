"""The email as a reader's mail program sees it: MIME structure, headers, both parts, links."""

from __future__ import annotations

import email
import email.policy
import os
import re
from pathlib import Path

import pytest
from sqlmodel import select

from digest import jobs, subscribers
from digest.models import Delivery
from digest.verp import VERP
from digest.links import Links
from digest.mailer import SMTPMailer
from digest.message import Message, Recipient
from digest.render import Rendered

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
    from datetime import datetime, timezone
    message = Message(rendered, from_="N <n@x.test>", list_id="<l.x.test>", date=datetime(2026, 11, 26, tzinfo=timezone.utc))
    raw = message.for_recipient(Recipient("a@x.test", "<Zoë & Co>", long_url, "https://p", "<1@x.test>"))
    bodies = raw.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in bodies.split(b"\r\n")) <= 76
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    text, html = msg.get_payload()
    assert text.get_content().replace("\r\n", "\n") == "Hi <Zoë & Co>,\n" + "word " * 100 + "\n" + long_url + "\n"
    assert html.get_content().replace("\r\n", "\n") == "<p>" + "é" * 300 + f"</p><a href=\"{long_url}\">u</a> &lt;Zoë &amp; Co&gt;!\n"


def test_nothing_a_subscriber_or_feed_controls_can_inject_a_header():
    from datetime import datetime, timezone
    rendered = Rendered("Weekly\r\nBcc: victim@example.com", "<p>x</p>", "x")
    message = Message(rendered, from_="N <n@x.test>", list_id="<l.x.test>", date=datetime(2026, 11, 26, tzinfo=timezone.utc))
    raw = message.for_recipient(Recipient("a@x.test", "Eve\r\nX-Injected: 1", "https://u", "https://p", "<1@x.test>"))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Bcc"] is None and msg["X-Injected"] is None
    assert msg["Subject"] == "Weekly Bcc: victim@example.com"
    assert "X-Injected" not in [k for k in msg.keys()]


def test_hostile_feed_is_inert_in_the_email(tmp_path, smtp_server, clock):
    from conftest import FIXTURES, write_config
    from digest.config import load_settings
    from digest.store import create_schema, make_engine, session
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


UPDATE_GOLDEN = "DIGEST_UPDATE_GOLDEN"  # =1: write the golden files from this run (then review the diff)


def golden_text(name: str, actual: str) -> str:
    """The text of tests/golden/NAME, to compare `actual` with. A missing golden file is a failure,
    not a pass: it is written only on a deliberate run with DIGEST_UPDATE_GOLDEN=1, whose diff one
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
    return p.message.parts_for(jobs.preview_recipient(settings))


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
    from datetime import datetime, timezone

    from itsdangerous import URLSafeSerializer

    from digest.links import _fingerprint
    from digest.smtp_client import dot_stuff

    html = "<style>\n.post a { color: red }\n</style>\n<p>100% sure</p>\n.\n..dots\n<a href=\"XDIGESTUNSUBSCRIBEURLX\">u</a>\n"
    rendered = Rendered("S", html, ".leading dot\nXDIGESTNAMEX\n%s %b %%\n")
    message = Message(rendered, from_="N <n@x.test>", list_id="<l.x.test>", date=datetime(2026, 11, 26, tzinfo=timezone.utc))
    for name in (".dotty", "Ann", None, "x" * 200):
        r = Recipient("a@x.test", name, "https://u.test/unsubscribe/tok", "https://p", "<1@x.test>")
        assert message.wire_for(r) == dot_stuff(message.for_recipient(r))
    links = Links("s3cret-s3cret-s3cret", "https://news.example")
    reference = URLSafeSerializer("s3cret-s3cret-s3cret", salt="digest.subscriber")
    for sid, addr in [(1, "a@b.test"), (123456789, "Ann.Lee@Example.com"), (42, "ü@example.com")]:
        token = links.subscriber_token(sid, addr)
        assert token == reference.dumps([sid, _fingerprint(addr)])
        assert links.read_subscriber_token(token) == (sid, _fingerprint(addr))
