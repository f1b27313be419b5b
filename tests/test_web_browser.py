"""End to end in a real browser: `digest serve` runs as a subprocess, headless Chromium (Debian's
`chromium`, driven by Playwright) subscribes, confirms from the mail the test's SMTP server
received, then leaves through the unsubscribe link of a real digest. The database is checked at
each step.

In CI (CI=true) a missing chromium or Playwright fails the test; elsewhere it is skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from conftest import DIGEST, fetch, free_port, run_digest, write_config
from digest.store.database import make_engine, session
from digest.store.models import Subscriber, SubscriberStatus

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    if IN_CI:
        raise
    pytest.skip("Playwright is not installed (pip install -e '.[dev]')", allow_module_level=True)


# A 1x1 transparent PNG: what an image from another host gets in these tests.
PIXEL = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)
NOT_HERE = re.compile(r"^(?!https?://127\.0\.0\.1[:/]|about:|data:)")


def new_context(browser, **options):
    """A browser context that never leaves 127.0.0.1: a request to another host (the posts' lead
    images live on the blog's image host) is answered here, an image with PIXEL and anything else
    refused, and recorded in `context.outside` as (resource type, URL)."""
    context = browser.new_context(**options)
    context.outside = []

    def answer(route):
        request = route.request
        context.outside.append((request.resource_type, request.url))
        if request.resource_type == "image":
            route.fulfill(status=200, content_type="image/png", body=PIXEL)
        else:
            route.abort()

    context.route(NOT_HERE, answer)
    return context


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if IN_CI:
            pytest.fail(f"chromium not found at {CHROMIUM}: .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class Server:
    url: str
    config: Path
    proc: subprocess.Popen
    log: Path

    def status(self, email: str) -> SubscriberStatus | None:
        """The subscriber's status as the database has it now."""
        from digest.config import load_settings

        engine = make_engine(load_settings(self.config).database_url)
        try:
            with session(engine) as s:
                sub = s.exec(select(Subscriber).where(Subscriber.email == email)).first()
                return sub.status if sub else None
        finally:
            engine.dispose()


def wait_for(what: str, check, timeout: float = 20.0, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    output = log.read_text() if log and log.exists() else ""
    raise AssertionError(f"gave up waiting for {what}\n{output}")


@pytest.fixture
def server(tmp_path, smtp_server):
    with serve_digest(tmp_path, smtp_server) as running:
        yield running


@contextmanager
def serve_digest(tmp_path: Path, smtp_server, site_url: str | None = None):
    """`digest serve` on a free port of 127.0.0.1, with the fixture blog's posts fetched."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cfg = write_config(tmp_path, smtp_port=smtp_server.port, public_url=url)
    if site_url:
        cfg.write_text(cfg.read_text().replace("[newsletter]\n", f'[newsletter]\nsite_url = "{site_url}"\n', 1))
    fetch(cfg)  # the blog's topics appear on the form
    with running_serve(cfg, port, tmp_path) as (proc, log):
        yield Server(url, cfg, proc, log)


@contextmanager
def running_serve(cfg: Path, port: int, tmp_path: Path, *args: str):
    """`digest serve --port PORT *args` as a subprocess (no DIGEST_ variable of the test's
    environment), once it answers /healthz; yields (process, log file) and stops it after."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*DIGEST, "--config", str(cfg), "serve", *args, "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env,
        )

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for("digest serve to answer /healthz", healthy, proc=proc, log=log)
        yield proc, log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def html_link(message, text: str) -> str:
    html = message.get_body(("html",)).get_content()
    m = re.search(r'<a href="([^"]+)"[^>]*>\s*' + re.escape(text), html)
    assert m, f"no {text!r} link in the mail"
    return m.group(1).replace("&amp;", "&")


@pytest.mark.slow
def test_subscribe_confirm_and_unsubscribe_in_a_real_browser(browser, server, smtp_server):
    reader = "reader@example.com"
    context = new_context(browser, viewport={"width": 390, "height": 844})  # a phone
    page = context.new_page()
    problems: list[str] = []  # console errors include Content-Security-Policy violations
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)

    # 1. The subscribe form.
    page.goto(server.url + "/")
    assert "Test Weekly" in page.title()
    page.fill("#email", reader)
    page.fill("#name", "Rea Der")
    page.get_by_label("Explained").check()
    page.get_by_label("In Focus").check()
    page.get_by_role("button", name="Subscribe").click()
    page.wait_for_selector("h1:has-text('Check your inbox')")
    assert reader in page.inner_text("main")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "wider than a phone"
    assert page.evaluate("getComputedStyle(document.querySelector('.card')).borderRadius") == "8px"  # stylesheet loaded
    assert server.status(reader) == SubscriberStatus.pending

    # 2. The confirmation mail, read from the SMTP server; its link opens a page that asks first.
    mail = wait_for("the confirmation mail", lambda: smtp_server.to(reader), log=server.log)[0].message
    assert mail["Subject"] == "Confirm your subscription to Test Weekly"
    link = html_link(mail, "Confirm subscription")
    assert link.startswith(server.url + "/confirm/")
    page.goto(link)
    page.wait_for_selector("h1:has-text('Confirm your subscription')")
    assert server.status(reader) == SubscriberStatus.pending  # opening the link changed nothing
    page.get_by_role("button", name="Confirm subscription").click()
    page.wait_for_selector("h1:has-text(\"You're subscribed\")")
    assert server.status(reader) == SubscriberStatus.active

    # 3. A real digest: only the topics ticked on the form, with working personal links.
    run_digest(server.config, "send", "--no-fetch", check=True)
    digest = wait_for("the digest", lambda: [r for r in smtp_server.to(reader) if "new posts" in r.message["Subject"]], log=server.log)[0].message
    text = digest.get_body(("plain",)).get_content()
    assert re.findall(r"^== (.+) ==\r?$", text, re.M) == ["EXPLAINED", "IN FOCUS"]
    view = html_link(digest, "View in browser")
    assert view == server.url + "/archive/1"
    page.goto(view)
    assert "Model Distillation Attacks" in page.inner_text("body")
    assert "Unsubscribe" not in page.inner_text("body")

    unsubscribe = html_link(digest, "Unsubscribe")
    assert digest["List-Unsubscribe"] == f"<{unsubscribe}>"
    assert unsubscribe.startswith(server.url + "/unsubscribe/")
    page.goto(unsubscribe)
    page.wait_for_selector("h1:has-text('Unsubscribe')")
    assert reader in page.inner_text("main")
    assert server.status(reader) == SubscriberStatus.active  # opening the link changed nothing
    page.get_by_role("button", name="Unsubscribe").click()
    page.wait_for_selector("h1:has-text(\"You're unsubscribed\")")
    assert server.status(reader) == SubscriberStatus.unsubscribed

    # 4. What Gmail and Yahoo do with the List-Unsubscribe header: one POST, no cookie. Idempotent.
    r = httpx.post(unsubscribe, data={"List-Unsubscribe": "One-Click"}, follow_redirects=False)
    assert r.status_code == 200 and "set-cookie" not in r.headers
    assert server.status(reader) == SubscriberStatus.unsubscribed

    assert problems == []
    # The archived edition shows the posts' lead images from the blog's own image host (answered
    # by new_context here), and the pages load nothing else from another host.
    assert context.outside and all(kind == "image" for kind, _ in context.outside)
    assert {url.split("/")[2] for _, url in context.outside} == {"blogger.googleusercontent.com"}
    context.close()


@dataclass
class Blog:
    """Another site: a page served from another port of 127.0.0.1, so another origin than the app."""

    url: str
    html: str = ""


@pytest.fixture
def blog():
    site = Blog("")

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):
            body = site.html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    site.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, name="blog", daemon=True).start()
    try:
        yield site
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.slow
def test_the_form_pasted_into_a_blog_subscribes_from_another_origin(browser, blog, tmp_path, smtp_server):
    reader, bot = "reader@example.com", "bot@example.com"
    with serve_digest(tmp_path, smtp_server, site_url=blog.url) as server:
        context = new_context(browser)
        page = context.new_page()
        problems: list[str] = []  # console errors include Content-Security-Policy violations
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)

        # 1. The operator copies the form from /embed (its preview keeps the form's inline styles)
        # and pastes it into a page of the blog.
        page.goto(server.url + "/embed")
        assert not page.is_visible(".preview input[name=website]")
        snippet = page.input_value("#snippet")
        blog.html = ("<!doctype html><html><head><meta charset=utf-8><title>A blog</title></head>"
                     f"<body><h1>A blog</h1><aside>{snippet}</aside></body></html>")

        # 2. A bot fills every field, the hidden one too: the same answer, nothing stored or sent.
        page.goto(blog.url + "/")
        page.fill("input[name=email]", bot)
        page.evaluate("document.querySelector('input[name=website]').value = 'https://spam.example'")
        page.get_by_role("button", name="Subscribe").click()
        page.wait_for_selector("h1:has-text('Check your inbox')")

        # 3. A reader on the blog: the form posts across origins and lands on our page.
        page.goto(blog.url + "/")
        assert not page.is_visible("input[name=website]")
        page.fill("input[name=email]", reader)
        page.fill("input[name=name]", "Rea Der")
        page.get_by_label("Explained").check()
        page.get_by_role("button", name="Subscribe").click()
        page.wait_for_selector("h1:has-text('Check your inbox')")
        assert page.url == server.url + "/subscribe"
        assert reader in page.inner_text("main")
        back = page.get_by_role("link", name="Back to the blog")
        assert back.get_attribute("href") == blog.url

        mail = wait_for("the confirmation mail", lambda: smtp_server.to(reader), log=server.log)[0].message
        assert mail["Subject"] == "Confirm your subscription to Test Weekly"
        assert server.status(reader) == SubscriberStatus.pending  # double opt-in: confirmed from the mail
        assert server.status(bot) is None and smtp_server.to(bot) == []

        back.click()
        page.wait_for_selector("h1:has-text('A blog')")
        assert page.url.startswith(blog.url)
        assert problems == []
        context.close()


# --- light and dark: what a reader sees with their system set to either ------------------------

# Every visible piece of text: its colour and the background it is drawn on (the nearest
# element's, up from the text's own, that is not transparent).
TEXTS_JS = """() => {
  const opaque = c => !/^rgba\\(.*, 0\\)$/.test(c) && c !== "transparent";
  const background = el => {
    for (; el; el = el.parentElement) {
      const c = getComputedStyle(el).backgroundColor;
      if (opaque(c)) return c;
    }
    return null;
  };
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const el = walker.currentNode.parentElement;
    const text = walker.currentNode.textContent.trim();
    if (!text || !el.getClientRects().length || el.closest(".hp")) continue;
    out.push({text: text.slice(0, 60), link: !!el.closest("a"), button: !!el.closest("button"),
              color: getComputedStyle(el).color, background: background(el)});
  }
  return out;
}"""
SCHEMES = ("light", "dark")
WCAG_AA = 4.5  # the contrast body text and links need (WCAG 2.x, 1.4.3)


def luminance(css: str) -> float:
    """Relative luminance (WCAG 2.x) of a computed colour, "rgb(r, g, b)"."""
    channels = [int(v) / 255 for v in re.findall(r"\d+(?:\.\d+)?", css)[:3]]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def texts_seen(browser, scheme: str, *, html: str | None = None, url: str | None = None) -> list[dict]:
    """The texts of the document (`html`, or the page at `url`) in a phone's window, with the
    system set to `scheme`. A CSP violation or a stylesheet that did not load fails the test (the
    page itself may be an error page: its own status is not a problem)."""
    context = new_context(browser, color_scheme=scheme, viewport={"width": 375, "height": 800})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 and r.url != url else None)
    try:
        if html is not None:
            page.set_content(html)
        else:
            page.goto(url)
        texts = page.evaluate(TEXTS_JS)
    finally:
        context.close()
    assert problems == [], f"{scheme}: {problems}"
    assert texts
    return texts


def assert_readable(texts: list[dict], where: str) -> None:
    faint = [f"{t['text']!r}: {t['color']} on {t['background']} {contrast(t['color'], t['background']):.2f}:1"
             for t in texts if t["background"] is None or contrast(t["color"], t["background"]) < WCAG_AA]
    assert faint == [], f"{where}: text below {WCAG_AA}:1"


def first(texts: list[dict], start: str) -> dict:
    return next(t for t in texts if t["text"].startswith(start))


def assert_follows_the_scheme(seen: dict[str, list[dict]], body_text: str, link_text: str, where: str,
                              keeps: tuple[str, ...] = ()) -> None:
    """Readable in both; dark text on light in light mode and light on dark in dark mode; links
    coloured apart from the text; behind every text but a button's label a dark background
    (`keeps`: the labels of buttons that are links, as an email's are)."""
    for scheme, texts in seen.items():
        assert_readable(texts, f"{where}, {scheme}")
        body, link = first(texts, body_text), first(texts, link_text)
        assert link["link"] and link["color"] != body["color"], f"{where}, {scheme}: links look like text"
    light, dark = first(seen["light"], body_text), first(seen["dark"], body_text)
    assert luminance(light["background"]) > 0.8 and luminance(light["color"]) < 0.05, light
    assert luminance(dark["background"]) < 0.05 and luminance(dark["color"]) > 0.6, dark
    bright = [t["text"] for t in seen["dark"]
              if luminance(t["background"]) > 0.05 and not t["button"] and t["text"] not in keeps]
    assert bright == [], f"{where}: light backgrounds left in dark mode"


def test_emails_follow_the_readers_light_or_dark_scheme(browser, db, settings, clock):
    from email import message_from_bytes
    from email.policy import default

    from digest.content.render import environment
    from digest.links import PublicUrls
    from digest.service import pipeline as jobs
    from digest.service.signup import confirmation_email

    # the poll runs its fetches with asyncio.run, which refuses the thread where Playwright's
    # sync API keeps its own event loop
    with ThreadPoolExecutor(1) as thread:
        thread.submit(jobs.poll, db, settings, clock).result()
    preview = jobs.preview(db, settings, clock, fetch=False)
    edition, _ = preview.message.parts_for(jobs.preview_recipient(PublicUrls(settings.newsletter.public_url)))
    mail = confirmation_email(settings.newsletter, "reader@example.com", settings.newsletter.public_url + "/confirm/t0ken",
                              clock(), env=environment())
    confirmation = message_from_bytes(mail, policy=default).get_body(("html",)).get_content()

    for where, html, body_text, link_text, keeps in (
        ("edition", edition, "Hi Reader", "Read more", ()),
        ("confirmation", confirmation, "Please confirm", "http://", ("Confirm subscription",)),
    ):
        # what tells Apple Mail not to invert the colours itself, and Outlook.com's dark mode hooks
        assert '<meta name="color-scheme" content="light dark"' in html
        assert "[data-ogsc] " in html and "[data-ogsb] " in html
        seen = {scheme: texts_seen(browser, scheme, html=html) for scheme in SCHEMES}
        assert_follows_the_scheme(seen, body_text, link_text, where, keeps)


@pytest.mark.slow
def test_pages_follow_the_readers_light_or_dark_scheme(browser, server):
    for path, body_text, link_text in (
        ("/", "Email address", "Archive"),
        ("/archive", "No editions yet", "Subscribe"),
        ("/unsubscribe/not-a-token", "It may have been", "Subscribe"),  # the page of a broken link
    ):
        seen = {scheme: texts_seen(browser, scheme, url=server.url + path) for scheme in SCHEMES}
        assert_follows_the_scheme(seen, body_text, link_text, path)
