"""Take docs/subscribe.png and docs/archive.png: the sample blog in a throwaway directory, one
edition sent (to a mailer that keeps it in memory), `digest serve` on a free port, headless
Chromium (Debian's `chromium`, driven by Playwright).

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

from digest.service import pipeline as jobs
from digest.service import subscribers as subs
from digest.config import load_settings, render_config
from digest.mail.mailer import MemoryMailer
from digest.store.database import make_engine, session
from digest.store.schema import create_schema

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--hide-scrollbars"]


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
                browser.close()
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"Wrote {DOCS / 'subscribe.png'} and {DOCS / 'archive.png'}")


if __name__ == "__main__":
    main()
