"""Take docs/subscribe.png and docs/archive.png: the sample blog in a throwaway directory, one
edition sent (to a mailer that keeps it in memory), `digest serve` on a free port, headless
Chromium (Debian's `chromium`, driven by Playwright). Then the light and dark look at a phone's
375 px and the email's 600 px: docs/email-{light,dark}-{600,375}.png (the edition's HTML part, as
the preview renders it for a sample reader), docs/subscribe-… and docs/archive-… (the list of
past editions). The top of each page only (PNGs of a few tens of KB, not a whole page's).

Then docs/admin-*.png, the admin pages (overview, next edition, editions, subscribers), signed
in through the login form, on another throwaway database: half a year of sign-ups, departures
and bounces, five earlier editions and the sample blog's (sent to a mailer that keeps it in
memory), and two posts found since for the next one.

    .venv/bin/python docs/screenshots.py
"""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright
from sqlmodel import select

from digest.config import load_settings, render_config
from digest.links import PublicUrls
from digest.mail.mailer import MemoryMailer
from digest.service import pipeline as jobs
from digest.service import subscribers as subs
from digest.service.admin import accounts
from digest.store.database import make_engine, session
from digest.store.models import Delivery, Edition, EditionStatus, Post, SubscriberStatus, as_utc
from digest.store.schema import create_schema

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--hide-scrollbars"]
SCHEMES = ("light", "dark")
WIDTHS = (600, 375)  # the email's width; a phone's
HEIGHT = 640  # enough for the email's header and first post, or most of the subscribe form
ARCHIVE_HEIGHT = 320  # the list of one edition


# The posts' lead images live on the blog's image host; the screenshots are made offline, so each
# image is drawn here instead: a soft gradient the size it is asked for (the layout is what shows).
PLACEHOLDER = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="600" height="338" viewBox="0 0 600 338">'
    b'<defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1"><stop offset="0" stop-color="#9ec5fe"/>'
    b'<stop offset="1" stop-color="#3d7cc9"/></linearGradient></defs><rect width="600" height="338" fill="url(#g)"/>'
    b'<path d="M0 338 L170 170 L290 270 L400 150 L600 338 Z" fill="#ffffff" fill-opacity="0.35"/></svg>'
)


def offline_images(page) -> None:
    """Answer every request that would leave 127.0.0.1: an image with PLACEHOLDER, anything else refused."""
    def answer(route):
        if route.request.resource_type == "image":
            route.fulfill(status=200, content_type="image/svg+xml", body=PLACEHOLDER)
        else:
            route.abort()
    page.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/]|about:|data:)"), answer)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ADMIN, PASSWORD = "editor@codelooru.example", "a long password for the screenshots"


def serve(cfg: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    proc = subprocess.Popen([sys.executable, "-m", "digest", "--config", str(cfg), "serve", "--no-scheduler",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    for _ in range(200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return proc


def admin_history(cfg: Path) -> None:
    """Half a year of a small list up to today (the pages count back from the real clock)."""
    settings = load_settings(cfg)
    engine = make_engine(settings.database_url)
    create_schema(engine)
    now = datetime.now(UTC).replace(microsecond=0)
    rng = random.Random(7)  # the same picture each time
    with session(engine) as s:
        accounts.add(s, ADMIN, PASSWORD, lambda: now)
        readers = []
        for week in range(26, -1, -1):
            for _ in range(18 + (26 - week) * 2 + rng.randrange(12)):
                joined = now - timedelta(weeks=week, hours=rng.randrange(160))
                sub, _ = subs.add(s, f"reader{len(readers):04d}@example.com", lambda at=joined: at,
                                  name=rng.choice(["Ada", "Grace", "Linus", "Barbara", None]))
                readers.append(sub)
        for sub in rng.sample(readers, 90):
            since = as_utc(sub.confirmed_at)
            left = since + (now - since) * rng.random()
            if rng.random() < 0.75:
                subs.unsubscribe(s, sub, lambda at=left: at)
            else:
                sub.status, sub.bounced_at = SubscriberStatus.bounced, left
                s.add(sub)
        s.commit()
        this_monday = (now - timedelta(days=now.weekday())).replace(hour=9, minute=0, second=0)
        for n in range(1, 6):  # earlier editions: their counts only (their posts came from other feeds)
            at = this_monday - timedelta(weeks=6 - n)
            on_list = sum(1 for r in readers if as_utc(r.confirmed_at) < at)
            e = Edition(number=n, created_at=at, subject=f"codelooru weekly #{n}: {3 + n % 3} new posts",
                        status=EditionStatus.sent, finished_at=at + timedelta(minutes=3), recipients=on_list)
            s.add(e)
            s.flush()
            for sub in readers[n * 7:n * 7 + n]:
                s.add(Delivery(edition_id=e.id, subscriber_id=sub.id, status="failed", attempts=2,
                               last_error="bounced (550 5.1.1 mailbox unknown)" if sub.id % 2 else "554 5.7.1 refused"))
        s.commit()
        jobs.poll(s, settings, lambda: now)
        jobs.send(s, settings, MemoryMailer(), lambda: now, fetch=False)
        post = s.exec(select(Post).order_by(Post.id.desc())).first()
        for i, title in enumerate(["Explained: Vector clocks in five minutes", "In Focus: The cost of a page fault"]):
            category, _, shown = title.partition(": ")
            s.add(Post(source_id=post.source_id, guid=f"new-{i}", url=f"https://codelooru.example/new-{i}", title=title,
                       category=category, display_title=shown, published_at=now - timedelta(hours=3 + i),
                       excerpt="A post found since the last edition, waiting for the next one.",
                       content_hash=f"{i:064d}", first_seen_at=now - timedelta(hours=2), updated_at=now))
        s.commit()
    engine.dispose()


def admin_screenshots(browser, url: str) -> list[Path]:
    page = browser.new_page(viewport={"width": 1000, "height": 800}, device_scale_factor=1)
    page.goto(url + "/admin/login")
    page.fill("#email", ADMIN)
    page.fill("#password", PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("h1:has-text('Overview')")
    shots = []
    for name, path in [("overview", "/admin"), ("next", "/admin/next"), ("editions", "/admin/editions"),
                       ("subscribers", "/admin/subscribers")]:
        page.goto(url + path)
        out = DOCS / f"admin-{name}.png"
        page.screenshot(path=str(out), full_page=name == "overview")
        shots.append(out)
    page.close()
    return shots


def sample_config(tmp: Path, url: str) -> Path:
    """A digest.toml in `tmp` for the sample blog, served at `url`, on a SQLite file in `tmp`."""
    cfg = tmp / "digest.toml"
    cfg.write_text(render_config(
        name="codelooru weekly", from_="codelooru weekly <digest@codelooru.example>", public_url=url,
        feeds=[str(ROOT / "examples" / "codelooru.atom")], database_url=f"sqlite:///{tmp / 'digest.db'}",
        first_edition_days=0,
    ))
    return cfg


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cfg = sample_config(Path(tmp), url)
        admin_history(cfg)
        proc = serve(cfg, port)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                shots = admin_screenshots(browser, url)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(10)
    print("Wrote " + ", ".join(str(s) for s in shots))
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cfg = sample_config(Path(tmp), url)
        settings = load_settings(cfg)
        engine = make_engine(settings.database_url)
        create_schema(engine)
        clock = lambda: datetime(2026, 7, 3, 9, 0, tzinfo=UTC)  # noqa: E731
        with session(engine) as s:
            jobs.poll(s, settings, clock)
            subs.add(s, "reader@example.com", clock)
            preview = jobs.preview(s, settings, clock, fetch=False)
            assert preview is not None, "the sample blog gave no posts"
            email, _ = preview.message.parts_for(jobs.preview_recipient(PublicUrls(url)))
            jobs.send(s, settings, MemoryMailer(), clock, fetch=False)
        engine.dispose()

        env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
        proc = subprocess.Popen([sys.executable, "-m", "digest", "--config", str(cfg), "serve", "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            for _ in range(200):
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(viewport={"width": 900, "height": 820}, device_scale_factor=1)
                page.goto(url + "/")
                page.screenshot(path=str(DOCS / "subscribe.png"))
                page = browser.new_page(viewport={"width": 900, "height": 1200}, device_scale_factor=1)
                offline_images(page)
                page.goto(url + "/archive/1")
                page.screenshot(path=str(DOCS / "archive.png"))
                for scheme in SCHEMES:
                    for width in WIDTHS:
                        page = browser.new_page(viewport={"width": width, "height": HEIGHT}, device_scale_factor=1,
                                                color_scheme=scheme)
                        offline_images(page)
                        page.set_content(email, wait_until="load")
                        page.screenshot(path=str(DOCS / f"email-{scheme}-{width}.png"))
                        page.goto(url + "/")
                        page.screenshot(path=str(DOCS / f"subscribe-{scheme}-{width}.png"))
                        page.set_viewport_size({"width": width, "height": ARCHIVE_HEIGHT})
                        page.goto(url + "/archive")
                        page.screenshot(path=str(DOCS / f"archive-{scheme}-{width}.png"))
                        page.close()
                browser.close()
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"Wrote {DOCS}/subscribe.png, archive.png and "
          f"{{email,subscribe,archive}}-{{{','.join(SCHEMES)}}}-{{{','.join(map(str, WIDTHS))}}}.png")


if __name__ == "__main__":
    main()
