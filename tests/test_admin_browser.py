"""/admin in a real browser: `digest serve` as a subprocess, an admin added with `digest admin add
--password-stdin`, headless Chromium (Debian's, driven by Playwright) signs in through the login
form and walks every page: those of the admin NAV and the admin pages linked from them (so a
page added later is walked without editing this test; a download, such as the CSV export, is
fetched, not opened). Each answers 200 with no console error
(a CSP violation is one) and no request to another origin; the next edition's preview is framed
sandboxed; after logging out an admin page sends the browser back to the login form.

Same skip rules as tests/test_web_browser.py: in CI a missing chromium or Playwright fails.
"""

from __future__ import annotations

import os
import re
import subprocess
from urllib.parse import urlsplit

import pytest

from conftest import DIGEST, FIXTURES, fetch, free_port, run_digest, subscribe, write_config
from digest.service.admin.area import ADMIN, NAV
from test_web_browser import browser, running_serve  # noqa: F401 - the fixture, and its skip rules

PASSWORD = "correct horse battery staple"
BOSS = "boss@example.com"
DEPTH = 2  # links followed from the NAV pages: a list's detail pages, and what those link to
NOT_WALKED = {ADMIN + "/login", ADMIN + "/logout", ADMIN + "/admin.css"}


def kind_of(path: str) -> str:
    """Pages whose paths differ only in numbers or query values (/admin/editions/7 and /8,
    ?page=2 and ?page=3) are one kind: the walk visits the first of each."""
    parts = urlsplit(path)
    keys = sorted(k.split("=", 1)[0] for k in parts.query.split("&") if k)
    return re.sub(r"\d+", "N", parts.path) + ("?" + "&".join(keys) if keys else "")


@pytest.fixture
def admin_server(tmp_path, smtp_server):
    """`digest serve` with one edition sent (to a reader, through the test's SMTP server), posts
    waiting for the next one (a second feed added since), and an admin."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = [str(FIXTURES / "blogger.atom")]
    cfg = write_config(tmp_path, feeds=first, smtp_port=smtp_server.port, public_url=url)
    fetch(cfg)  # in this process: the subject is the admin area
    subscribe(cfg, "reader@example.com")  # in this process: the subject is what follows
    run_digest(cfg, "send", "--no-fetch", check=True)
    secret = re.search(r'^secret_key = "([^"]+)"', cfg.read_text(), re.M).group(1)
    cfg = write_config(tmp_path, feeds=[*first, str(FIXTURES / "wordpress.rss")], smtp_port=smtp_server.port,
                       public_url=url, secret_key=secret)
    fetch(cfg)  # in this process: the subject is the admin area
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    added = subprocess.run([*DIGEST, "--config", str(cfg), "admin", "add", BOSS, "--password-stdin"],
                           input=PASSWORD + "\n", capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert added.returncode == 0, added.stderr
    with running_serve(cfg, port, tmp_path, "--no-scheduler"):
        yield url


@pytest.mark.slow
def test_an_admin_signs_in_walks_every_page_and_logs_out(browser, admin_server):  # noqa: F811
    url = admin_server
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    problems: list[str] = []  # console errors include Content-Security-Policy violations
    page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    elsewhere: list[str] = []  # every request the pages make, frames included, that leaves this origin
    page.on("request", lambda r: elsewhere.append(r.url) if not r.url.startswith((url + "/", "data:")) else None)

    # Signed out, an admin page sends the browser to the login form; signing in lands on the overview.
    page.goto(url + ADMIN + "/next")
    assert urlsplit(page.url).path == ADMIN + "/login"
    page.fill("#email", BOSS)
    page.fill("#password", PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("h1:has-text('Overview')")
    assert urlsplit(page.url).path == ADMIN
    nav = page.eval_on_selector_all("nav[aria-label=Admin] a", "links => links.map(a => a.getAttribute('href'))")
    assert nav == [ADMIN + rel for _, rel in NAV]

    # Every NAV page, then the admin pages they link to (one of each kind), to DEPTH links away.
    walked: dict[str, str] = {}  # kind -> the path walked
    frontier = [ADMIN + rel for _, rel in NAV]
    for level in range(DEPTH + 1):
        following = []
        for path in frontier:
            if kind_of(path) in walked:
                continue
            walked[kind_of(path)] = path
            fetched = page.request.get(url + path)  # the browser's cookies: a download is not navigated to
            assert fetched.status == 200, path
            if not fetched.headers.get("content-type", "").startswith("text/html"):
                assert fetched.headers.get("content-disposition", "").startswith("attachment"), path
                continue
            response = page.goto(url + path)
            assert response is not None and response.status == 200, path
            assert page.locator("main h1").count() == 1, f"{path}: no heading"
            assert page.evaluate("document.styleSheets.length") == 2, f"{path}: stylesheets not loaded"
            if level < DEPTH:
                for href in page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)"):
                    target = urlsplit(href)
                    if f"{target.scheme}://{target.netloc}" != url or target.fragment:
                        continue
                    path_q = target.path + (f"?{target.query}" if target.query else "")
                    if target.path.startswith(ADMIN) and target.path not in NOT_WALKED:
                        following.append(path_q)
        frontier = following
    assert {ADMIN + rel for _, rel in NAV} <= set(walked.values())
    # the fixture's edition and reader: their pages are reached through the lists' links
    assert {"/admin/editions/N", "/admin/subscribers/N"} <= set(walked), sorted(walked.values())

    # The search form as a browser submits it: every field, "any" status and topic as empty values.
    page.goto(url + ADMIN + "/subscribers")
    page.fill("input[name=q]", "reader@")
    with page.expect_navigation() as searched:
        page.get_by_role("button", name="Show").click()
    assert searched.value.status == 200, searched.value.url
    assert "status=&" in searched.value.url and "reader@example.com" in page.inner_text("main")

    # The next edition's preview: in a frame that may run nothing (no allow-* token), showing the edition.
    page.goto(url + ADMIN + "/next")
    frame = page.locator("iframe")
    assert frame.count() == 1
    sandbox = frame.get_attribute("sandbox")
    assert sandbox is not None and sandbox.strip() == "", f"sandbox={sandbox!r}"
    preview = next(f for f in page.frames if f.url.endswith(ADMIN + "/next/preview"))
    preview.wait_for_load_state()
    assert "new post" in preview.title()  # the subject of the next edition

    # Logging out ends the session: an admin page sends the browser back to the login form.
    page.get_by_role("button", name=re.compile("^Log out")).click()
    page.wait_for_selector("h1:has-text('Sign in')")
    page.goto(url + ADMIN)
    assert urlsplit(page.url).path == ADMIN + "/login"
    assert "digest_admin" not in {c["name"] for c in context.cookies(url + ADMIN)}

    assert problems == []
    assert elsewhere == []
    context.close()
