"""`digest serve` for real: subprocesses, the test's SMTP server (aiosmtpd), one SQLite file.

Schedules use the six-field cron (seconds first) so slots come a few seconds ahead; waits poll the
log or the SMTP server with generous timeouts, never asserting how fast anything was.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from conftest import DIGEST, FixedClock, free_port, run_digest, write_config
from digest.clock import utc_now
from digest.config import load_settings
from digest.mail.mailer import MemoryMailer
from digest.service import pipeline as jobs
from digest.service import subscribers as subs
from digest.store.database import make_engine, session
from digest.store.models import Delivery, DeliveryStatus, Edition
from digest.store.schema import create_schema
from feedgen import write_feed
from feedserver import FeedServer

UTC = UTC


def make_config(tmp_path: Path, smtp_server, *, cron: str, tz: str = "UTC", grace: float = 24, readers: int = 3) -> Path:
    feed = write_feed(tmp_path / "blog.atom", [1, 2])
    path = write_config(tmp_path, feeds=[str(feed)], smtp_port=smtp_server.port)
    text = path.read_text().replace('cron = "0 9 * * mon"', f'cron = "{cron}"').replace('timezone = "UTC"', f'timezone = "{tz}"')
    path.write_text(text + f"misfire_grace_hours = {grace}\n")
    with database(path) as s:
        for i in range(readers):
            subs.add(s, f"reader{i}@example.com", utc_now)
    return path


class database:
    def __init__(self, path: Path):
        self.settings = load_settings(path)

    def __enter__(self):
        self.engine = make_engine(self.settings.database_url)
        create_schema(self.engine)
        self.session = session(self.engine)
        return self.session

    def __exit__(self, *exc):
        self.session.close()
        self.engine.dispose()


class Serve:
    """A `digest serve` subprocess logging to a file."""

    def __init__(self, config: Path, name: str = "serve", *args: str):
        self.log = config.parent / f"{name}.log"
        self.port = free_port()  # the web app listens too; each process on its own port
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
        self.proc = subprocess.Popen(
            [*DIGEST, "--config", str(config), "serve", "--port", str(self.port), *args],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=config.parent,
        )

    def text(self) -> str:
        return self.log.read_text()

    def wait_log(self, needle: str, count: int = 1, timeout: float = 30) -> None:
        wait_for(lambda: self.text().count(needle) >= count, timeout, lambda: f"{needle!r} x{count} in:\n{self.text()}")

    def stop(self, timeout: float = 20, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"digest serve did not exit after SIGTERM:\n{self.text()}") from None


def wait_for(predicate, timeout: float, describe=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {describe()}")
        time.sleep(0.05)


def recipients(smtp_server) -> Counter:
    return Counter(r for got in smtp_server.received for r in got.recipients)


def editions(config: Path) -> list[Edition]:
    with database(config) as s:
        return list(s.exec(select(Edition).order_by(Edition.number)).all())


@pytest.fixture
def procs():
    started: list[Serve] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


@pytest.mark.slow
def test_serve_sends_one_edition_on_schedule_then_nothing_more(tmp_path, smtp_server, procs):
    config = make_config(tmp_path, smtp_server, cron="*/2 * * * * *", tz="Europe/Berlin")
    serve = Serve(config)
    procs.append(serve)
    serve.wait_log("schedule starts now")  # first start: only a baseline, nothing sent
    serve.wait_log("edition 1 for slot")
    wait_for(lambda: len(smtp_server.received) >= 3, 30)
    serve.wait_log("nothing new, no edition", count=2)  # two more slots came and went
    assert serve.stop() == 0
    assert recipients(smtp_server) == Counter({f"reader{i}@example.com": 1 for i in range(3)})
    [edition] = editions(config)
    assert edition.slot is not None and edition.slot.second % 2 == 0
    log = serve.text()
    assert "2 post(s), 3 recipient(s); 3 delivered, 0 failed, 0 pending" in log
    assert "SIGTERM: stopping" in log and log.rstrip().endswith("stopped")
    assert "Traceback" not in log


def _ran_yesterday(config: Path) -> None:
    """The service's first start, a day ago: what a real earlier run would have recorded."""
    with database(config) as s:
        settings = load_settings(config)
        jobs.scheduled(s, settings, MemoryMailer(), FixedClock(datetime.now(UTC) - timedelta(days=1)), fetch=False)


@pytest.mark.slow
@pytest.mark.parametrize("grace, sends", [(1, True), (0.01, False)])  # one hour / 36 seconds
def test_catch_up_after_downtime_only_within_the_grace_period(tmp_path, smtp_server, procs, grace, sends):
    missed = datetime.now(UTC) - timedelta(minutes=2)  # a daily slot two minutes ago, while it was down
    config = make_config(tmp_path, smtp_server, cron=f"{missed.minute} {missed.hour} * * *", grace=grace)
    _ran_yesterday(config)
    serve = Serve(config)
    procs.append(serve)
    if sends:
        serve.wait_log("edition 1 for slot")
        wait_for(lambda: len(smtp_server.received) >= 3, 30)
    else:
        serve.wait_log("start: no send due")
    assert serve.stop() == 0
    assert len(editions(config)) == (1 if sends else 0)
    assert len(smtp_server.received) == (3 if sends else 0)
    # Starting again does not send again. (Stopped with Ctrl-C this time.)
    again = Serve(config, "again")
    procs.append(again)
    again.wait_log("start: ")
    assert again.stop(sig=signal.SIGINT) == 0
    assert "SIGINT: stopping" in again.text()
    assert len(smtp_server.received) == (3 if sends else 0)
    if sends:
        assert "edition (edition 1)" in again.text()


@pytest.mark.slow
def test_two_serve_processes_on_one_database_send_each_slot_once(tmp_path, smtp_server, procs):
    config = make_config(tmp_path, smtp_server, cron="*/2 * * * * *", readers=10)
    a, b = Serve(config, "a"), Serve(config, "b")
    procs.extend([a, b])
    wait_for(lambda: len(editions(config)) >= 1 and len(smtp_server.received) >= 10, 30)
    a.wait_log("nothing new")
    b.wait_log("nothing new")
    # A new post: the next slot sends it, once.
    write_feed(tmp_path / "blog.atom", [1, 2, 3])
    wait_for(lambda: len(editions(config)) >= 2 and len(smtp_server.received) >= 20, 30)
    seen = a.text().count("nothing new")
    a.wait_log("nothing new", count=seen + 1)  # and one more slot goes by
    assert a.stop() == 0 and b.stop() == 0
    assert [e.number for e in editions(config)] == [1, 2]
    assert recipients(smtp_server) == Counter({f"reader{i}@example.com": 2 for i in range(10)})
    assert "Traceback" not in a.text() + b.text()


def test_two_concurrent_digest_send_processes_build_one_edition(tmp_path, smtp_server):
    config = make_config(tmp_path, smtp_server, cron="0 9 * * mon", readers=10)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    senders = [
        subprocess.Popen([*DIGEST, "--config", str(config), "send"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, cwd=tmp_path)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in senders]
    assert [p.returncode for p in senders] == [0, 0], outs
    stdout = "".join(o for o, _ in outs)
    assert stdout.count("Edition 1: 2 posts") == 1
    assert len(editions(config)) == 1
    assert recipients(smtp_server) == Counter({f"reader{i}@example.com": 1 for i in range(10)})


@pytest.mark.slow
def test_sigterm_finishes_the_message_in_flight_and_the_next_start_resumes(tmp_path, smtp_server, procs):
    config = make_config(tmp_path, smtp_server, cron="*/2 * * * * *", readers=30)
    smtp_server.on_message = lambda _got: time.sleep(0.2)  # a slow relay
    serve = Serve(config)
    procs.append(serve)
    wait_for(lambda: len(smtp_server.received) >= 2, 30)
    assert serve.stop() == 0
    sent_before = len(smtp_server.received)
    assert 2 <= sent_before < 30
    with database(config) as s:
        statuses = Counter(d.status for d in s.exec(select(Delivery)).all())
    assert statuses[DeliveryStatus.sent] == sent_before
    assert statuses[DeliveryStatus.pending] == 30 - sent_before  # left pending, none lost
    assert "stopped; the rest is sent on the next start" in serve.text()

    smtp_server.on_message = None
    again = Serve(config, "again")
    procs.append(again)
    again.wait_log("edition 1 resumed")
    wait_for(lambda: len(smtp_server.received) >= 30, 30)
    assert again.stop() == 0
    assert recipients(smtp_server) == Counter({f"reader{i}@example.com": 1 for i in range(30)})
    [edition] = editions(config)
    assert edition.status.value == "sent"


@pytest.mark.slow
def test_schedule_command_shows_next_sends_in_zone_and_utc(tmp_path, smtp_server):
    config = make_config(tmp_path, smtp_server, cron="0 9 * * mon", tz="Europe/Berlin")
    out = run_digest(config, "schedule", check=True).stdout
    assert 'Schedule: "0 9 * * mon" in Europe/Berlin' in out
    lines = [line for line in out.splitlines() if line.startswith("  Mon ")]
    assert len(lines) == 5
    for line in lines:  # 09:00 local is 08:00 UTC in winter (CET), 07:00 in summer (CEST)
        assert ("09:00 CET" in line and "08:00 UTC" in line) or ("09:00 CEST" in line and "07:00 UTC" in line)
    assert "Last edition: none yet" in out
    run_digest(config, "send", check=True)
    out = run_digest(config, "schedule", check=True).stdout
    assert "Last edition: 1, built " in out and "(digest send)" in out


def test_unknown_time_zone_is_a_one_line_error(tmp_path, smtp_server):
    config = make_config(tmp_path, smtp_server, cron="0 9 * * mon")
    proc = run_digest(config, "schedule", env={"DIGEST_SCHEDULE__TIMEZONE": "Europe/Atlantis"})
    assert proc.returncode == 2
    assert "schedule.timezone" in proc.stderr and "Europe/Atlantis" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_no_scheduler_serves_the_web_app_and_never_sends(tmp_path, smtp_server, procs):
    import urllib.request

    config = make_config(tmp_path, smtp_server, cron="* * * * * *")  # a slot every second
    serve = Serve(config, "web-only", "--no-scheduler")
    procs.append(serve)
    serve.wait_log("Uvicorn running")
    with urllib.request.urlopen(f"http://127.0.0.1:{serve.port}/healthz", timeout=10) as r:
        assert r.status == 200
    time.sleep(3)  # three slots pass
    assert serve.stop() == 0
    assert "scheduler started" not in serve.text() and smtp_server.received == []


# --- SIGTERM during a feed poll: the poll is cut off at once, not after the feed's deadline -----


def test_sigterm_during_a_poll_stops_digest_serve_at_once(tmp_path, smtp_server, procs):
    """Before, a server trickling one byte a second held `digest serve` for as long as it trickled
    (70 s in a trial, past systemd's 60 s stop timeout)."""
    with FeedServer() as server:
        config = make_config(tmp_path, smtp_server, cron="0 9 * * mon")
        config.write_text(config.read_text().replace("urls = [", f'urls = ["{server.base}/trickle/feed.atom", ', 1)
                          .replace("[feeds]\n", "[feeds]\ntimeout = 100\n", 1))  # not the deadline: SIGTERM ends it
        serve = Serve(config)
        procs.append(serve)
        server.wait_requests(1)  # the start job is polling
        time.sleep(1)  # reading the trickling body
        started = time.monotonic()
        assert serve.stop(timeout=15) == 0
        took = time.monotonic() - started
    log = serve.text()
    assert "SIGTERM: stopping" in log and log.rstrip().endswith("stopped")
    assert "Traceback" not in log
    assert took < 10, f"took {took:.1f} s"
    assert smtp_server.received == []


def test_sigterm_stops_digest_send_during_a_poll_at_once(tmp_path, smtp_server):
    with FeedServer() as server:
        feed = tmp_path / "blog.atom"
        write_feed(feed, [1])
        config = write_config(tmp_path, feeds=[str(feed), f"{server.base}/trickle/feed.atom"], smtp_port=smtp_server.port)
        with database(config) as s:
            subs.add(s, "reader@example.com", utc_now)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
        env["DIGEST_FEEDS__TIMEOUT"] = "100"  # the deadline is not what ends it
        proc = subprocess.Popen([*DIGEST, "--config", str(config), "send"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        server.wait_requests(1)
        time.sleep(1)  # a byte or two has arrived: the fetch is reading the body
        proc.send_signal(signal.SIGTERM)
        try:
            _, errors = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("digest send kept running after SIGTERM") from None
    assert proc.returncode == 143, errors
    assert "Stopped by SIGTERM" in errors and "Traceback" not in errors
    assert smtp_server.received == []  # no edition is built by a stopped send
    # Nothing half-done: the next send (the trickling feed gone) sends the post once.
    write_config(tmp_path, feeds=[str(feed)], smtp_port=smtp_server.port)
    again = run_digest(config, "send", check=True)
    assert "Edition 1: 1 post, 1 delivered" in again.stdout
    assert len(smtp_server.received) == 1


# --- the web app under load, and its log ------------------------------------------------------


def web_only(tmp_path: Path, smtp_server, name: str = "web") -> Serve:
    config = make_config(tmp_path, smtp_server, cron="0 9 1 1 *", readers=0)
    serve = Serve(config, name, "--no-scheduler")
    serve.wait_log("Uvicorn running")
    return serve


def test_a_burst_of_sign_ups_with_a_slow_relay_gets_answers_and_every_mail_once(tmp_path, smtp_server, procs):
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    smtp_server.on_message = lambda _got: time.sleep(0.5)  # a relay taking two messages a second, one at a time
    serve = web_only(tmp_path, smtp_server)
    procs.append(serve)
    base = f"http://127.0.0.1:{serve.port}"
    addresses = [f"reader{i}@example.com" for i in range(40)]

    def sign_up(i: int) -> int:
        # 8 readers behind the proxy (127.0.0.1 is trusted for X-Forwarded-For), 5 each: the rate limit.
        # Each gets its answer long before the relay has sent the 20 s of mail (a bound 100 times
        # what it takes, not a speed test: a request that waited for SMTP would be the 30th
        # or later in the relay's queue, past 15 s: a timeout).
        headers = {"X-Forwarded-For": f"192.0.2.{i % 8 + 1}"}
        try:
            return httpx.post(f"{base}/subscribe", data={"email": addresses[i]}, headers=headers, timeout=15).status_code
        except httpx.TimeoutException:
            return 0

    def health() -> int:
        time.sleep(2)  # while the relay works
        try:
            return httpx.get(f"{base}/healthz", timeout=15).status_code
        except httpx.TimeoutException:
            return 0

    with ThreadPoolExecutor(41) as pool:
        probe = pool.submit(health)
        answers = list(pool.map(sign_up, range(40)))
    assert answers == [200] * 40
    assert probe.result() == 200
    wait_for(lambda: len(smtp_server.received) >= 40, 120, lambda: f"40 mails, got {len(smtp_server.received)}")
    time.sleep(1.5)  # a duplicate would arrive now
    assert recipients(smtp_server) == Counter({a: 1 for a in addresses})
    assert serve.stop() == 0
    log = serve.text()
    assert "Traceback" not in log and " ERROR " not in log


def test_tokens_of_personal_links_never_reach_the_log(tmp_path, smtp_server, procs):
    import httpx

    from digest.links import Links

    serve = web_only(tmp_path, smtp_server)
    procs.append(serve)
    settings = load_settings(tmp_path / "digest.toml")
    links = Links(settings.newsletter.secret_key, settings.newsletter.public_url)
    with database(tmp_path / "digest.toml") as s:
        ann, _ = subs.add(s, "ann@example.com", utc_now)
        pending, _ = subs.add(s, "pat@example.com", utc_now)
    personal = links.subscriber_token(ann.id, ann.email)
    confirm = links.confirm_token(pending.id, pending.email)
    tokens = [personal, confirm, personal[:-3] + "xyz", "forged-token-0123456789"]
    base = f"http://127.0.0.1:{serve.port}"
    with httpx.Client(base_url=base, timeout=10) as c:
        for token in tokens:
            for path in (f"/unsubscribe/{token}", f"/preferences/{token}", f"/confirm/{token}", f"/unsubscribe/{token}/more?x=1"):
                c.get(path)
                c.post(path, data={"List-Unsubscribe": "One-Click"})
        assert c.post(f"/unsubscribe/{personal}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert serve.stop() == 0
    log = serve.text()
    assert '"POST /unsubscribe/[redacted] HTTP/1.1" 200' in log  # the access log is still there
    assert '"GET /confirm/[redacted] HTTP/1.1" 200' in log
    for token in tokens:
        assert token not in log
        assert token[:12] not in log


def test_an_api_key_put_in_a_url_by_mistake_never_reaches_the_log(tmp_path, smtp_server, procs):
    import httpx

    from digest.service import apikeys

    serve = web_only(tmp_path, smtp_server)
    procs.append(serve)
    with database(tmp_path / "digest.toml") as s:
        _, key = apikeys.create(s, "crm", utc_now)
    base = f"http://127.0.0.1:{serve.port}"
    with httpx.Client(base_url=base, timeout=10) as c:
        # a client that sends its key as a query parameter, or in the path, rather than in the header
        assert c.get(f"/api/v1/subscribers?api_key={key}").status_code == 401
        assert c.get(f"/api/v1/subscribers/{key}").status_code == 401
        assert c.get("/api/v1/subscribers", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert serve.stop() == 0
    log = serve.text()
    assert '"GET /api/v1/subscribers?api_key=dk_[redacted] HTTP/1.1" 401' in log  # the access log is still there
    assert key not in log and key[3:] not in log
