"""Polling feeds over HTTP from a real local server: conditional GET, size cap, timeouts, errors."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from conftest import FIXTURES, run_digest, subscribe, write_config
from digest.config import load_settings
from digest.service import pipeline
from feedserver import TRICKLE_SECONDS, FeedServer

BODY = (FIXTURES / "blogger.atom").read_bytes()


class Handler(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict]] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        Handler.requests.append(dict(self.headers))
        if self.path == "/slow.atom":
            time.sleep(3)
        if self.path == "/missing.atom":
            self.send_response(404)
            self.end_headers()
            return
        if self.path == "/huge.atom":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(BODY * 20)
            return
        if self.headers.get("If-None-Match") == '"v1"':
            self.send_response(304)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/atom+xml")
        self.send_header("ETag", '"v1"')
        self.send_header("Last-Modified", "Thu, 26 Nov 2026 08:00:00 GMT")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)


@pytest.fixture
def http_base():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Handler.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_conditional_get_then_not_modified(tmp_path, db, clock, http_base):
    cfg = load_settings(write_config(tmp_path, feeds=[f"{http_base}/feed.atom"]))
    first = pipeline.poll(db, cfg, clock)[0]
    assert first.ok and first.new == 5
    second = pipeline.poll(db, cfg, clock)[0]
    assert second.ok and second.not_modified
    assert Handler.requests[1]["If-None-Match"] == '"v1"'
    assert Handler.requests[1]["If-Modified-Since"] == "Thu, 26 Nov 2026 08:00:00 GMT"
    assert Handler.requests[0]["User-Agent"].startswith("digest/")


def test_http_failures_are_reported_with_url_and_reason(tmp_path, db, clock, http_base):
    extra = ""
    cfg = load_settings(write_config(tmp_path, feeds=[f"{http_base}/missing.atom", f"{http_base}/huge.atom",
                                                        f"{http_base}/slow.atom", f"{http_base}/feed.atom"], extra=extra),
                        feeds={"timeout": 1, "max_bytes": len(BODY) * 2})
    missing, huge, slow, good = pipeline.poll(db, cfg, clock)
    assert missing.error == f"{http_base}/missing.atom: HTTP 404 Not Found"
    assert huge.error == f"{http_base}/huge.atom: feed is larger than {len(BODY) * 2} bytes"
    assert slow.error == f"{http_base}/slow.atom: timed out after 1 s"
    assert good.ok and good.new == 5


# --- the deadline is per feed, in total; feeds are fetched at once; SIGTERM stops a poll ------


def test_a_trickling_server_is_cut_off_at_the_deadline_with_a_one_line_error(tmp_path):
    """One byte a second never trips a per-read timeout: before, `digest fetch` ran for minutes."""
    with FeedServer() as server:
        url = f"{server.base}/trickle/feed.atom"
        config = write_config(tmp_path, feeds=[url])
        started = time.monotonic()
        proc = run_digest(config, "fetch", env={"DIGEST_FEEDS__TIMEOUT": "2"}, timeout=60)
        took = time.monotonic() - started
    assert proc.returncode == 1  # every source failed
    assert proc.stderr.strip() == f"failed {url}: timed out after 2 s"
    assert took < 30, f"took {took:.1f} s; the body alone trickles for {TRICKLE_SECONDS} s"


def test_feeds_are_fetched_at_once_so_slow_ones_cost_one_deadline_not_the_sum(tmp_path, db, clock):
    with FeedServer() as server:
        urls = [f"{server.base}/trickle/{n}.atom" for n in range(3)] + [f"{server.base}/good.atom"]
        cfg = load_settings(write_config(tmp_path, feeds=urls), feeds={"timeout": 3})
        started = time.monotonic()
        *slow, good = pipeline.poll(db, cfg, clock)
        took = time.monotonic() - started
        arrivals = [at for _, at in server.requests]
    assert [r.error for r in slow] == [f"{url}: timed out after 3 s" for url in urls[:3]]
    assert good.ok and good.new == 5
    # All four requests went out before the first deadline, so the poll took about one deadline
    # (3 s), not three of them one after another (9 s). Generous margins: the machine is shared.
    assert max(arrivals) - min(arrivals) < 3
    assert took < 8, f"took {took:.1f} s"



def test_a_json_feed_over_http_is_sent_with_its_posts_in_their_sections(tmp_path, smtp_server):
    """A JSON Feed next to an Atom feed: `digest send` mails both, the JSON Feed's posts in the
    sections their title prefixes and tags name. Served as text/plain from a path without .json:
    the body says what it is."""
    jsonfeed = (FIXTURES / "jsonfeed.json").read_bytes()
    with FeedServer(routes={"/sidings/feed": ("text/plain; charset=utf-8", jsonfeed)}) as server:
        json_url, atom_url = f"{server.base}/sidings/feed", f"{server.base}/codelooru.atom"
        config = write_config(tmp_path, feeds=[json_url, atom_url], smtp_port=smtp_server.port)
        subscribe(config, "reader@example.com")  # in this process: the subject is what follows
        sent = run_digest(config, "send", check=True).stdout
    assert f"{json_url}: 4 new, 0 updated, 0 unchanged" in sent
    assert "Edition 1: 9 posts, 1 delivered, 0 failed" in sent
    (mail,) = smtp_server.received
    text = mail.message.get_body(("plain",)).get_content().replace("\r\n", "\n")
    titles = ("Signal Blocks", "Level Crossings", "Timetable Graphs", "Weeknotes 25", "Model Distillation Attacks",
              "Confluent Cloud Gateway")
    sections = {}  # section heading -> the titles above under it, in the order shown
    for block in text.split("\n== ")[1:]:
        name, _, body = block.partition(" ==\n")
        sections[name] = sorted((t for t in titles if f"\n{t}\n" in body), key=lambda t: body.index(f"\n{t}\n"))
    assert sections == {
        "ARCHITECTURE": ["Confluent Cloud Gateway"],
        "EXPLAINED": ["Signal Blocks", "Model Distillation Attacks", "Level Crossings"],  # newest first
        "IN FOCUS": ["Timetable Graphs"],
        "NOTES": ["Weeknotes 25"],
    }
    assert "by Rosa Lind, Tomás Ek" in text and "Read more: https://sidings.example/2026/06/signal-blocks" in text
    html = mail.message.get_body(("html",)).get_content()
    assert "Fixed the &lt;b&gt; tags" in html and "alert(" not in html  # text escaped, script dropped
