"""Take docs/subscribe.png and docs/archive.png: the sample blog in a throwaway directory, one
edition sent (to a mailer that keeps it in memory), `digest serve` on a free port, headless
Chromium (Debian's `chromium`, driven by Playwright). Then the light and dark look at a phone's
375 px and the email's 600 px: docs/email-{light,dark}-{600,375}.png (the edition's HTML part, as
the preview renders it for a sample reader), docs/subscribe-… and docs/archive-… (the list of
past editions). The top of each page only (PNGs of a few tens of KB, not a whole page's).

    .venv/bin/python docs/screenshots.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from digest.config import load_settings, render_config
from digest.links import PublicUrls
from digest.mail.mailer import MemoryMailer
from digest.service import pipeline as jobs
from digest.service import subscribers as subs
from digest.store.database import make_engine, session
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cfg = tmp / "digest.toml"
        cfg.write_text(render_config(
            name="codelooru weekly", from_="codelooru weekly <digest@codelooru.example>", public_url=url,
            feeds=[str(ROOT / "examples" / "codelooru.atom")], database_url=f"sqlite:///{tmp / 'digest.db'}",
            first_edition_days=0,
        ))
        settings = load_settings(cfg)
        engine = make_engine(settings.database_url)
        create_schema(engine)
        clock = lambda: datetime(2026, 7, 3, 9, 0, tzinfo=timezone.utc)  # noqa: E731
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
                page.goto(url + "/archive/1")
                page.screenshot(path=str(DOCS / "archive.png"))
                for scheme in SCHEMES:
                    for width in WIDTHS:
                        page = browser.new_page(viewport={"width": width, "height": HEIGHT}, device_scale_factor=1,
                                                color_scheme=scheme)
                        page.set_content(email)  # offline: the email loads nothing (no images in the sample)
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
