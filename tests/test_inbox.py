"""Inbox-ready: the headers bulk mail needs, short quoted-printable lines, HTML under Gmail's
clipping size for a 30-post edition, and a low SpamAssassin score on a real edition."""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import FIXTURES, write_config
from digest.config import load_settings
from digest.mail.mailer import SMTPMailer
from digest.service import pipeline as jobs
from digest.service import subscribers
from digest.store.database import make_engine, session
from digest.store.schema import create_schema

GMAIL_CLIP = 102 * 1024
WORDS = ["replication", "partition", "consumer", "producer", "warehouse", "cluster", "network", "interface", "subnet", "latency", "gateway", "schema", "registry", "throughput", "retries", "budget", "inference", "model", "platform", "team", "small", "large", "fast", "slow", "the", "a", "of", "and", "to", "in", "for", "with", "on", "at", "by", "from"]


def thirty_post_feed(path):
    """An Atom feed of 30 posts in five categories, with long titles, excerpts and URLs."""
    cats = ["Architecture", "Explained", "In Focus", "Data", "Cloud"]
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    entries = []
    for i in range(30):
        words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(170)]
        title = f"{cats[i % 5]}: " + " ".join(w.title() for w in words[:8])
        when = (now - timedelta(hours=5 * i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        slug = "-".join(words[:8])
        entries.append(
            f"<entry><id>tag:blog.example.com,2026:post-{i}</id><title>{title}</title>"
            f'<link rel="alternate" type="text/html" href="https://blog.example.com/2026/11/{i:02d}/{slug}.html"/>'
            f"<published>{when}</published><updated>{when}</updated><author><name>Author {i % 4}</name></author>"
            f"<content type=\"html\">&lt;p&gt;{' '.join(words)}.&lt;/p&gt;</content></entry>"
        )
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
        "<id>tag:blog.example.com,2026:feed</id><title>Example Blog</title>"
        f"<updated>{now:%Y-%m-%dT%H:%M:%SZ}</updated>{''.join(entries)}</feed>",
        encoding="utf-8",
    )


def send_one(tmp_path, smtp_server, clock, feed, **config):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "dkim.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path = write_config(tmp_path, feeds=[str(feed)], smtp_port=smtp_server.port, public_url="https://news.example.com",
                        name="Example Weekly", from_="Example Weekly <news@example.com>",
                        dkim={"domain": "example.com", "selector": "digest", "private_key_file": "dkim.pem"}, **config)
    path.write_text(path.read_text().replace('# feedback_id = "weekly:newsletter"', 'feedback_id = "weekly:example"'))
    settings = load_settings(path)
    engine = make_engine(settings.database_url)
    create_schema(engine)
    with session(engine) as db:
        subscribers.add(db, "ann.lee@gmail.com", clock, name="Ann Lee")
        jobs.send(db, settings, SMTPMailer(settings.smtp), clock)
    assert len(smtp_server.received) == 1
    return smtp_server.received[0].data


def test_headers_and_line_lengths(tmp_path, smtp_server, clock):
    raw = send_one(tmp_path, smtp_server, clock, FIXTURES / "blogger.atom")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    for name in ("Message-ID", "Date", "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post", "DKIM-Signature"):
        assert msg[name], name
    assert msg["Precedence"] == "bulk" and msg["Feedback-ID"] == "weekly:example"
    assert re.fullmatch(r"<\d+\.\d+\.[0-9a-f]+@example\.com>", msg["Message-ID"])
    text, html = msg.get_payload()
    for part in (text, html):
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
    _, body = raw.split(b"\r\n\r\n", 1)
    assert max(len(line) for line in body.split(b"\r\n")) <= 78
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")


def test_html_of_a_30_post_edition_stays_under_gmails_clipping_size(tmp_path, smtp_server, clock):
    thirty_post_feed(tmp_path / "thirty.atom")
    raw = send_one(tmp_path, smtp_server, clock, tmp_path / "thirty.atom")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "Example Weekly: 30 new posts"
    _, html = msg.get_payload()
    decoded = html.get_content().encode("utf-8")
    encoded = raw.split(b'Content-Type: text/html; charset="utf-8"', 1)[1]
    assert decoded.count(b"Read more") == 30
    assert len(decoded) < GMAIL_CLIP and len(encoded) < GMAIL_CLIP, (len(decoded), len(encoded))


def spamassassin_report(raw: bytes) -> tuple[float, dict[str, float]]:
    proc = subprocess.run(["spamassassin", "-L", "-t"], input=raw, capture_output=True, timeout=120)
    out = proc.stdout.decode("utf-8", "replace")
    m = re.search(r"Content analysis details:\s+\((-?\d+(?:\.\d+)?) points", out)
    assert m, out[-2000:] + proc.stderr.decode()[-2000:]
    table = out[m.end():]
    rules = {name: float(points) for points, name in re.findall(r"^\s*(-?\d+\.\d+)\s+([A-Z0-9_]+)\s", table, re.M)}
    return float(m.group(1)), rules


def test_spamassassin_scores_a_real_edition_at_most_1(tmp_path, smtp_server, clock):
    if shutil.which("spamassassin") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("spamassassin is not installed (.ci/run installs it from Debian)")
        pytest.skip("spamassassin not installed (apt-get install spamassassin)")
    raw = send_one(tmp_path, smtp_server, clock, FIXTURES / "blogger.atom")
    score, rules = spamassassin_report(raw)
    print("spamassassin:", score, rules)
    assert score <= 1.0, rules
    # and not thanks to the list-manager bonus alone: what counts against it stays small too
    assert sum(p for p in rules.values() if p > 0) <= 1.0, rules
