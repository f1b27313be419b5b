"""Webhooks: events queued with the change they report and POSTed, signed, to a real HTTP receiver
on 127.0.0.1; retried on a 5xx or no answer for 24 h (the test's clock moves, nothing sleeps that
long); a removed webhook's requests dropped; neither a request nor a send waits for a receiver."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlmodel import select

from conftest import DIGEST, one_line_error, run_digest, subscribe, write_config
from digest.clock import utc_now
from digest.config import load_settings
from digest.delivery import outbox, webhooks
from digest.delivery.webhooks import Events
from digest.errors import ConfigError
from digest.links import Links
from digest.mail.mailer import SMTPMailer
from digest.service import pipeline as jobs
from digest.service import signup
from digest.service import subscribers as subs
from digest.service.cadences import Cadences
from digest.service.web import create_app
from digest.store.database import make_engine, session
from digest.store.models import Outbox, OutboxStatus, as_utc

DOC = Path(__file__).parent.parent / "docs" / "webhooks.md"
SECRET = "test-secret-0123456789"


class Receiver:
    """A real HTTP server that records each POST (headers, raw body) and answers `failures`
    requests with `failure_status` first, then 204."""

    def __init__(self, failures: int = 0, failure_status: int = 500):
        self.failures = failures
        self.failure_status = failure_status
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Condition()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with owner.arrived:
                    owner.requests.append((dict(self.headers), body))
                    failing = owner.failures > 0
                    owner.failures -= failing
                    owner.arrived.notify_all()
                self.send_response(owner.failure_status if failing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, n: int, timeout: float = 30) -> list[dict]:
        """The bodies of the first `n` requests, once they have come."""
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= n, timeout), self.requests
        return [json.loads(body) for _, body in self.requests[:n]]


def hook_table(url: str, events: list[str], secret: str = SECRET) -> str:
    return f'\n[[webhooks]]\nurl = "{url}"\nsecret = "{secret}"\nevents = {json.dumps(events)}\n'


def with_webhooks(config: Path, *tables: str) -> Path:
    config.write_text(config.read_text(encoding="utf-8") + "".join(tables), encoding="utf-8")
    return config


def doc_verify():
    """The `verify` function of docs/webhooks.md, from the doc's own Python block."""
    [code] = re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.M | re.S)
    scope: dict = {}
    exec(compile(code, str(DOC), "exec"), scope)  # the documented snippet, run as a receiver would
    return scope["verify"]


def verified(verify, request: tuple[dict[str, str], bytes], secret: str = SECRET) -> bool:
    headers, body = request
    return verify(secret, headers["X-Digest-Timestamp"], headers["X-Digest-Signature"], body)


def rows(db) -> list[Outbox]:
    db.expire_all()
    found = list(db.exec(select(Outbox).where(Outbox.kind == webhooks.KIND).order_by(Outbox.id)).all())
    db.rollback()
    return found


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("table", "message"), [
    (hook_table("ftp://crm.example.com/x", ["edition.sent"]),
     r"digest.toml:\d+: invalid setting 'webhooks\[1\].url': 'ftp://crm.example.com/x': must be an http:// or https://"),
    (hook_table("https://crm.example.com/x", ["edition.send"]),
     r"digest.toml:\d+: invalid setting 'webhooks\[1\].events': unknown event 'edition.send' \(did you mean 'edition.sent'\?\)"),
    ('\n[[webhooks]]\nurl = "https://crm.example.com/x"\nevents = ["edition.sent"]\n',
     r"digest.toml:\d+: missing required setting 'webhooks\[1\].secret'"),
    (hook_table("https://a.example.com/x", ["edition.sent"]) + hook_table("https://a.example.com/x", ["edition.sent"]),
     r"invalid setting 'webhooks': 'https://a.example.com/x' is given twice"),
])
def test_a_bad_webhook_is_a_one_line_error_naming_the_key(tmp_path, table, message):
    config = with_webhooks(write_config(tmp_path), table)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert re.search(message, str(caught.value)), str(caught.value)


def test_the_line_named_is_the_key_of_the_table_at_fault(tmp_path):
    config = with_webhooks(write_config(tmp_path), hook_table("https://a.example.com/x", ["edition.sent"]),
                           hook_table("https://b.example.com/x", ["subscriber.left"]))
    lines = config.read_text(encoding="utf-8").splitlines()
    line = max(i for i, text in enumerate(lines, 1) if text.startswith("events = "))
    proc = run_digest(config, "editions")
    assert proc.returncode != 0
    assert one_line_error(proc).startswith(f"error: {config}:{line}: invalid setting 'webhooks[2].events'")


def test_webhooks_from_the_environment_as_one_json_list(tmp_path, monkeypatch):
    config = write_config(tmp_path)
    monkeypatch.setenv("DIGEST_WEBHOOKS", json.dumps([{"url": "https://a.example.com/x", "secret": SECRET,
                                                      "events": ["edition.sent"]}]))
    [hook] = load_settings(config).webhooks
    assert (hook.url, hook.secret, hook.events) == ("https://a.example.com/x", SECRET, ["edition.sent"])


# --- what a receiver gets -----------------------------------------------------------------------


def test_confirm_and_unsubscribe_arrive_signed_and_the_documented_check_accepts_them(tmp_path, smtp_server):
    verify = doc_verify()
    with Receiver() as receiver:
        config = with_webhooks(write_config(tmp_path, smtp_port=smtp_server.port),
                               hook_table(receiver.url, ["subscriber.confirmed", "subscriber.unsubscribed"]))
        settings = load_settings(config)
        from fastapi.testclient import TestClient

        links = Links(settings.newsletter.secret_key, settings.newsletter.public_url, utc_now)
        with TestClient(create_app(settings, clock=utc_now)) as client:
            client.post("/subscribe", data={"email": "ann@example.com"})
            engine = make_engine(settings.database_url)
            with session(engine) as db:
                sub = subs.get(db, "ann@example.com")
                sub_id = sub.id
                assert rows(db) == []  # a sign-up is not an event: only confirming is
                assert client.post(f"/confirm/{links.confirm_token(sub_id, 'ann@example.com')}").status_code == 200
                [confirmed] = receiver.wait_for(1)
                assert client.post(f"/unsubscribe/{links.subscriber_token(sub_id, 'ann@example.com')}").status_code == 200
                _, unsubscribed = receiver.wait_for(2)
                deadline = time.monotonic() + 30
                while {r.status for r in rows(db)} != {OutboxStatus.sent}:  # the receiver answered; then the row is written
                    assert time.monotonic() < deadline, rows(db)
                    time.sleep(0.02)
            engine.dispose()
    assert confirmed["type"] == "subscriber.confirmed"
    assert confirmed["data"]["subscriber"] == {"id": sub_id, "email": "ann@example.com", "name": None,
                                               "status": "active", "topics": None, "cadence": "weekly"}
    assert unsubscribed["type"] == "subscriber.unsubscribed"
    assert unsubscribed["data"]["subscriber"]["status"] == "unsubscribed"
    assert confirmed["id"] != unsubscribed["id"]
    for request in receiver.requests:
        headers, body = request
        assert headers["X-Digest-Event"] == json.loads(body)["type"]
        assert headers["Content-Type"] == "application/json"
        assert verified(verify, request)
        assert not verified(verify, request, secret="another-secret-0123456789")
        assert not verified(verify, (headers, body.replace(b"ann@", b"bob@")))


def test_the_documented_check_refuses_a_request_signed_ten_minutes_ago(db, settings, clock):
    """A recorded request replayed later: its signature is good, its timestamp too old."""
    verify = doc_verify()
    with Receiver() as receiver:
        hooks = load_settings(with_webhooks(settings._config_path, hook_table(receiver.url, ["edition.sent"]))).webhooks
        clock.now = utc_now() - timedelta(minutes=10)
        Events(hooks, clock).emit(db, "edition.sent", {"edition": {"number": 1}})
        db.commit()
        assert outbox.dispatch_due(db, webhooks.couriers(hooks, clock), clock, sender="t").sent == 1
        [request] = receiver.requests
    assert not verified(verify, request)
    headers, body = request
    assert webhooks.signature(SECRET, headers["X-Digest-Timestamp"], body) == headers["X-Digest-Signature"]


def test_a_500_is_tried_again_after_the_backoff_with_the_same_event(db, settings, clock):
    with Receiver(failures=2) as receiver:
        hooks = load_settings(with_webhooks(settings._config_path, hook_table(receiver.url, ["edition.sent"]))).webhooks
        couriers = webhooks.couriers(hooks, clock)
        Events(hooks, clock).emit(db, "edition.sent", {"edition": {"number": 7}})
        db.commit()
        first = outbox.dispatch_due(db, couriers, clock, sender="t")
        assert (first.sent, first.retrying) == (0, 1)
        [row] = rows(db)
        assert row.last_error == "HTTP 500 Internal Server Error"
        assert as_utc(row.next_attempt_at) == clock.now + timedelta(seconds=10)
        assert outbox.dispatch_due(db, couriers, clock, sender="t").claimed == 0  # not due yet
        clock.now += timedelta(seconds=10)
        assert outbox.dispatch_due(db, couriers, clock, sender="t").retrying == 1
        clock.now += timedelta(minutes=1)
        assert outbox.dispatch_due(db, couriers, clock, sender="t").sent == 1
        bodies = receiver.wait_for(3)
    [row] = rows(db)
    assert (row.status, row.attempts, row.last_error) == (OutboxStatus.sent, 3, None)
    assert bodies[0] == bodies[1] == bodies[2] and bodies[0]["data"] == {"edition": {"number": 7}}


def test_a_receiver_that_never_answers_well_fails_the_row_24_hours_after_the_event(db, settings, clock):
    with Receiver(failures=10**6, failure_status=503) as receiver:
        hooks = load_settings(with_webhooks(settings._config_path, hook_table(receiver.url, ["edition.sent"]))).webhooks
        couriers = webhooks.couriers(hooks, clock)
        start = clock.now
        Events(hooks, clock).emit(db, "edition.sent", {})
        db.commit()
        tried_at = []
        while True:
            [row] = rows(db)
            if row.status != OutboxStatus.pending:
                break
            clock.now = as_utc(row.next_attempt_at)
            tried_at.append(clock.now)
            outbox.dispatch_due(db, couriers, clock, sender="t")
    assert (row.status, row.last_error) == (OutboxStatus.failed, "HTTP 503 Service Unavailable")
    assert len(receiver.requests) == row.attempts == len(tried_at)
    assert tried_at[-1] == start + timedelta(hours=24)  # the last try is at the 24th hour, none after
    assert [t - start for t in tried_at[:4]] == [timedelta(0), timedelta(seconds=10), timedelta(seconds=70),
                                                 timedelta(seconds=370)]


@pytest.mark.parametrize(("status", "outcome"), [(400, OutboxStatus.failed), (410, OutboxStatus.failed),
                                                 (429, OutboxStatus.pending), (408, OutboxStatus.pending)])
def test_a_4xx_fails_at_once_but_408_and_429_are_tried_again(db, settings, clock, status, outcome):
    with Receiver(failures=1, failure_status=status) as receiver:
        hooks = load_settings(with_webhooks(settings._config_path, hook_table(receiver.url, ["edition.sent"]))).webhooks
        Events(hooks, clock).emit(db, "edition.sent", {})
        db.commit()
        outbox.dispatch_due(db, webhooks.couriers(hooks, clock), clock, sender="t")
    [row] = rows(db)
    assert (row.status, row.attempts) == (outcome, 1)
    assert row.last_error.startswith(f"HTTP {status}")


def test_the_requests_of_a_webhook_removed_from_the_settings_are_dropped_and_the_secret_is_not_stored(
        db, settings, clock):
    with Receiver() as kept, Receiver() as removed:
        config = with_webhooks(settings._config_path, hook_table(kept.url, ["edition.sent"]),
                               hook_table(removed.url, ["edition.sent"]))
        before = load_settings(config).webhooks
        assert Events(before, clock).emit(db, "edition.sent", {"edition": {"number": 1}}) == 2
        db.commit()
        assert all(SECRET not in r.payload for r in rows(db))
        config.write_text(config.read_text().split("\n[[webhooks]]")[0] + hook_table(kept.url, ["edition.sent"]))
        after = load_settings(config).webhooks
        done = outbox.dispatch_due(db, webhooks.couriers(after, clock), clock, sender="t")
        assert (done.sent, done.skipped) == (1, 1)
        assert len(kept.requests) == 1 and removed.requests == []
    assert {r.recipient: r.status for r in rows(db)} == {kept.url: OutboxStatus.sent, removed.url: OutboxStatus.skipped}


def test_only_the_webhooks_listening_for_an_event_get_it(db, settings, clock):
    hooks = load_settings(with_webhooks(
        settings._config_path, hook_table("https://a.example.com/x", ["edition.sent"]),
        hook_table("https://b.example.com/x", ["subscriber.unsubscribed", "subscriber.confirmed"]))).webhooks
    sub, _ = subs.add(db, "ann@example.com", clock, events=Events(hooks, clock))
    subs.unsubscribe(db, sub, clock, Events(hooks, clock))
    assert subs.unsubscribe(db, sub, clock, Events(hooks, clock)) is False  # no change, no event
    assert [(r.recipient, json.loads(r.payload)["type"]) for r in rows(db)] == [
        ("https://b.example.com/x", "subscriber.confirmed"), ("https://b.example.com/x", "subscriber.unsubscribed")]
    subs.erase(db, sub)  # their data goes, the webhooks that name them with it
    assert rows(db) == []


# --- edition.sent and subscriber.bounced ------------------------------------------------------


def test_edition_sent_is_queued_once_when_the_edition_is_done(db, settings, clock, smtp_server):
    hooks_config = with_webhooks(settings._config_path, hook_table("https://a.example.com/x", ["edition.sent"]))
    settings = load_settings(hooks_config)
    for a in ("ann@example.com", "bob@example.com"):
        subs.add(db, a, clock)
    result = jobs.send(db, settings, SMTPMailer(settings.smtp), clock)
    assert result.edition.sent == 2
    jobs.send(db, settings, SMTPMailer(settings.smtp), clock, fetch=False)  # nothing new: no second event
    [row] = rows(db)
    event = json.loads(row.payload)
    assert event["type"] == "edition.sent"
    assert event["data"]["edition"]["number"] == 1
    assert event["data"]["edition"]["deliveries"]["sent"] == 2
    assert event["data"]["edition"]["deliveries"]["pending"] == 0


def test_events_name_the_cadence_of_the_reader_and_of_the_edition(tmp_path, db, smtp_server):
    """Each cadence numbers its editions: edition.sent says whose edition 1 it is, and a
    subscriber event says which cadence the reader gets, both by the names the config gives."""
    config = with_webhooks(write_config(tmp_path, smtp_port=smtp_server.port),
                           hook_table("https://a.example.com/x", ["edition.sent", "subscriber.confirmed"]))
    settings = load_settings(config, schedule={"cron": "0 9 * * mon", "name": "weekly",
                                               "cadences": {"daily": "0 7 * * *"}})
    cadences = Cadences(settings.schedule)
    events = Events(settings.webhooks, utc_now, settings.schedule.name)
    subs.add(db, "ann@example.com", utc_now, cadence=cadences.named("daily"), events=events)
    subs.add(db, "bob@example.com", utc_now, events=events)
    jobs.send(db, settings, SMTPMailer(settings.smtp), utc_now, cadence="daily")
    jobs.send(db, settings, SMTPMailer(settings.smtp), utc_now, fetch=False)
    payloads = [json.loads(row.payload) for row in rows(db)]
    assert [(e["data"]["subscriber"]["email"], e["data"]["subscriber"]["cadence"])
            for e in payloads if e["type"] == "subscriber.confirmed"] == [("ann@example.com", "daily"),
                                                                          ("bob@example.com", "weekly")]
    assert [(e["data"]["edition"]["cadence"], e["data"]["edition"]["number"], e["data"]["edition"]["deliveries"]["sent"])
            for e in payloads if e["type"] == "edition.sent"] == [("daily", 1, 1), ("weekly", 1, 1)]


def test_a_reader_refused_for_good_at_send_time_is_reported_bounced_once(db, settings, clock, smtp_server):
    config = with_webhooks(settings._config_path, hook_table("https://a.example.com/x", ["subscriber.bounced"]))
    settings = load_settings(config)
    for a in ("ann@example.com", "gone@example.com", "full@example.com"):
        subs.add(db, a, clock)
    smtp_server.refuse["gone@example.com"] = "550 5.1.1 <gone@example.com>: Recipient address rejected"
    smtp_server.refuse["full@example.com"] = "552 5.2.2 mailbox full"  # a soft bounce: not reported
    result = jobs.send(db, settings, SMTPMailer(settings.smtp), clock)
    assert result.edition.failed == 2
    jobs.send(db, settings, SMTPMailer(settings.smtp), clock, fetch=False)  # nothing new: nothing again
    [event] = [json.loads(row.payload) for row in rows(db)]
    assert event["type"] == "subscriber.bounced"
    assert event["data"]["subscriber"]["email"] == "gone@example.com"
    assert event["data"]["subscriber"]["status"] == "bounced"
    assert event["data"]["bounce"]["kind"] == "hard" and event["data"]["bounce"]["status"] == "5.1.1"
    assert "Recipient address rejected" in event["data"]["bounce"]["diagnostic"]


def test_bounces_process_reports_the_bounced_reader(tmp_path, db, settings, clock, smtp_server):
    from test_bounces import make_dsn

    config = with_webhooks(settings._config_path, hook_table("https://a.example.com/x", ["subscriber.bounced"]))
    settings = load_settings(config)
    subs.add(db, "ann@example.com", clock)
    jobs.send(db, settings, SMTPMailer(settings.smtp), clock)
    [mail] = smtp_server.to("ann@example.com")
    (tmp_path / "bounce.eml").write_bytes(make_dsn(mail.sender, "ann@example.com", "5.1.1"))
    run_digest(config, "bounces", "process", str(tmp_path / "bounce.eml"), check=True)
    run_digest(config, "bounces", "process", str(tmp_path / "bounce.eml"), check=True)  # again: no change, no event
    [row] = rows(db)
    event = json.loads(row.payload)
    assert event["type"] == "subscriber.bounced"
    assert event["data"]["subscriber"]["status"] == "bounced"
    assert event["data"]["bounce"]["kind"] == "hard" and event["data"]["bounce"]["status"] == "5.1.1"


# --- nothing waits for a receiver -------------------------------------------------------------


@pytest.fixture
def silent_receiver():
    """A URL whose server accepts the connection and never answers (the kernel completes the
    handshake for the listen backlog): each POST waits out the timeout."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"


def test_a_receiver_that_never_answers_holds_up_neither_a_request_nor_mail(tmp_path, smtp_server, silent_receiver,
                                                                           monkeypatch):
    monkeypatch.setattr(webhooks, "TIMEOUT_SECONDS", 4.0)
    config = with_webhooks(write_config(tmp_path, smtp_port=smtp_server.port),
                           hook_table(silent_receiver, ["subscriber.confirmed"]))
    settings = load_settings(config)
    links = Links(settings.newsletter.secret_key, settings.newsletter.public_url, utc_now)
    from fastapi.testclient import TestClient

    with TestClient(create_app(settings, clock=utc_now)) as client:
        engine = make_engine(settings.database_url)
        with session(engine) as db:
            for a in ("ann@example.com", "bob@example.com"):
                client.post("/subscribe", data={"email": a})
            smtp_server_deadline = time.monotonic() + 30
            while len(smtp_server.received) < 2:
                assert time.monotonic() < smtp_server_deadline
                time.sleep(0.05)
            ann = subs.get(db, "ann@example.com")
            client.post(f"/confirm/{links.confirm_token(ann.id, ann.email)}")  # its POST now waits 4 s
            db.rollback()
            deadline = time.monotonic() + 10
            while not [r for r in rows(db) if r.claimed_by]:  # the webhooks' thread is in the POST
                assert time.monotonic() < deadline
                time.sleep(0.02)
            started = time.monotonic()
            bob = subs.get(db, "bob@example.com")
            assert client.post(f"/confirm/{links.confirm_token(bob.id, bob.email)}").status_code == 200
            client.post("/subscribe", data={"email": "cy@example.com"})
            waited = time.monotonic() - started
            while not smtp_server.to("cy@example.com"):  # the mail goes out while the POST still waits
                assert time.monotonic() < deadline
                time.sleep(0.02)
            mailed = time.monotonic() - started
            assert [r.status for r in rows(db)] == [OutboxStatus.pending, OutboxStatus.pending]
        engine.dispose()
    # Loosely: the requests and the mail came well inside the 4 s the receiver keeps the POST waiting.
    assert waited < 3, waited
    assert mailed < 3.5, mailed


def test_a_send_does_not_post_anything(db, settings, clock, smtp_server, silent_receiver):
    """`digest send` only queues edition.sent: the POST is for `digest serve` or `digest worker`."""
    settings = load_settings(with_webhooks(settings._config_path, hook_table(silent_receiver, ["edition.sent"])))
    subs.add(db, "ann@example.com", clock)
    assert jobs.send(db, settings, SMTPMailer(settings.smtp), clock).edition.sent == 1
    [row] = rows(db)
    assert (row.status, row.attempts) == (OutboxStatus.pending, 0)


def test_digest_worker_once_posts_the_queued_webhooks(db, settings, clock):
    with Receiver() as receiver:
        config = with_webhooks(settings._config_path, hook_table(receiver.url, ["subscriber.confirmed"]))
        subs.add(db, "ann@example.com", clock, events=Events(load_settings(config).webhooks, utc_now))
        out = run_digest(config, "worker", "--once", check=True).stdout
        assert "Webhooks: 1 sent, 0 failed, 0 to retry" in out
        [event] = receiver.wait_for(1)
    assert event["data"]["subscriber"]["email"] == "ann@example.com"


def start_worker(config: Path, *args: str) -> subprocess.Popen:
    """A polling `digest worker` (a subprocess, as a service manager runs it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    return subprocess.Popen([*DIGEST, "--config", str(config), *args, "worker"], env=env, cwd=config.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def gone(pid: int) -> bool:
    """The process has exited (and been reaped, or is a zombie waiting for it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_polling_worker_posts_its_webhooks_and_still_forks_its_sender_processes(tmp_path, smtp_server):
    """A polling `digest worker` posts edition.sent while it runs, from a process of its own: with a
    thread for the webhooks, its sender processes would be started with forkserver (slower, ~70 MB more)."""
    config = write_config(tmp_path, smtp_port=smtp_server.port, connections=2,
                          extra='mode = "workers"\npoll_seconds = 0.2\nbatch_size = 40\n')  # 300: 8 batches, 2 senders
    subscribe(config, *(f"reader{i}@example.com" for i in range(300)))
    with Receiver() as receiver:
        with_webhooks(config, hook_table(receiver.url, ["edition.sent"]))
        assert "300 deliveries queued for `digest worker`" in run_digest(config, "send", check=True).stdout
        worker = start_worker(config, "--log-level", "debug")
        try:
            [event] = receiver.wait_for(1, timeout=120)  # while the worker still runs
        finally:
            worker.send_signal(signal.SIGTERM)
            out, err = worker.communicate(timeout=60)
    assert event["type"] == "edition.sent" and event["data"]["edition"]["number"] == 1
    assert worker.returncode == 0, err[-3000:]
    assert "Edition 1: 300 delivered, 0 failed, 0 pending" in out
    started = re.findall(r" DEBUG starting 2 processes with (\w+)$", err, re.M)
    assert started == ["fork"], err[-3000:]


def test_the_webhooks_process_of_a_worker_dies_with_it(tmp_path):
    """Killed (even with SIGKILL), a polling worker leaves no process behind to post webhooks."""
    config = with_webhooks(write_config(tmp_path, extra="poll_seconds = 0.2\n"),
                           hook_table("http://127.0.0.1:9/hook", ["edition.sent"]))
    run_digest(config, "db", "upgrade", check=True)
    worker = start_worker(config)
    try:
        deadline = time.monotonic() + 60
        while not children(worker.pid):  # forked as the worker starts polling
            assert worker.poll() is None, worker.communicate()
            assert time.monotonic() < deadline, "the worker started no process"
            time.sleep(0.05)
        [posting] = children(worker.pid)
    finally:
        worker.kill()
        worker.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while not gone(posting):
        assert time.monotonic() < deadline, f"process {posting} outlived its worker"
        time.sleep(0.05)


def test_a_command_that_posts_nothing_loads_no_http_client(tmp_path):
    """httpx (~25 ms of every command's start-up) is imported at a webhook's first POST."""
    import sys

    config = with_webhooks(write_config(tmp_path), hook_table("http://127.0.0.1:9/hook", ["edition.sent"]))
    run_digest(config, "editions", check=True)  # a new database, made at head
    probe = ("import sys; from digest.cli import main; sys.argv = ['digest', '--config', sys.argv[1], 'editions'];"
             " import atexit; atexit.register(lambda: print('httpx' in sys.modules)); main()")
    proc = subprocess.run([sys.executable, "-c", probe, str(config)], capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines()[-1] == "False", proc.stdout


def test_a_mail_sender_never_claims_a_webhooks_row(db, settings, clock):
    """A mail sender never takes a webhook's row (nor the other way round)."""
    Events(load_settings(with_webhooks(settings._config_path, hook_table("https://a.example.com/x", ["edition.sent"])))
           .webhooks, clock).emit(db, "edition.sent", {})
    db.commit()
    assert outbox.claim(db, "mail", clock.now, {signup.CONFIRMATION}) == []
    assert len(outbox.claim(db, "hooks", clock.now, {webhooks.KIND})) == 1



def test_adding_and_unsubscribing_from_admin_and_the_api_are_reported_as_the_cli_does(config_path, db, clock):
    # /admin and /api/v1 add and unsubscribe readers too: a receiver that mirrors the list must
    # hear of those as it hears of `digest subscribers add/remove` and the reader's own links.
    from fastapi.testclient import TestClient

    from digest.service import apikeys
    from digest.service.admin import accounts
    from test_admin import BOSS, PASSWORD, csrf_of, sign_in

    accounts.add(db, BOSS, PASSWORD, clock)
    _, key = apikeys.create(db, "crm", clock)
    api = {"Authorization": f"Bearer {key}"}
    with Receiver() as receiver:
        settings = load_settings(with_webhooks(
            config_path, hook_table(receiver.url, ["subscriber.confirmed", "subscriber.unsubscribed"])))
        with TestClient(create_app(settings, clock=clock)) as client:
            assert sign_in(client).status_code == 303
            csrf = csrf_of(client.get("/admin/subscribers").text)
            assert client.post("/admin/subscribers/add", data={"email": "ann@example.com", "csrf": csrf},
                               follow_redirects=False).status_code == 303
            ann = subs.get(db, "ann@example.com").id
            assert client.post(f"/admin/subscribers/{ann}/unsubscribe", data={"csrf": csrf}).status_code == 200
            made = client.post("/api/v1/subscribers", headers=api, json={"email": "bob@example.com", "status": "active"})
            assert made.status_code == 201, made.text
            bob = made.json()["id"]
            assert client.post(f"/api/v1/subscribers/{bob}/unsubscribe", headers=api).status_code == 200
            got = receiver.wait_for(4)
    assert sorted((e["type"], e["data"]["subscriber"]["email"]) for e in got) == [
        ("subscriber.confirmed", "ann@example.com"), ("subscriber.confirmed", "bob@example.com"),
        ("subscriber.unsubscribed", "ann@example.com"), ("subscriber.unsubscribed", "bob@example.com"),
    ]


def test_two_confirmations_at_once_report_one_subscriber_confirmed(config_path, db, clock):
    # Two clicks (two tabs, a mail scanner and the reader) both read the reader while pending;
    # the second finds them active when it writes: one event, one welcome.
    from sqlmodel import Session

    from digest.service import welcome
    from digest.store.models import Subscriber

    settings = load_settings(with_webhooks(config_path, hook_table("http://127.0.0.1:9/hook", ["subscriber.confirmed"])))
    events = Events(settings.webhooks, clock)
    links = Links(settings.newsletter.secret_key, settings.newsletter.public_url, clock)
    signup.subscribe(db, clock, email="ann@example.com")
    sid = subs.get(db, "ann@example.com").id
    token = links.confirm_token(sid, "ann@example.com")
    with Session(db.get_bind()) as second:
        read = second.get(Subscriber, sid)  # the second request has read them (kept: its session's copy)
        assert read.status.value == "pending"
        assert signup.confirm(db, clock, links, token, welcome_mail=True, events=events)[1]
        sub, changed = signup.confirm(second, clock, links, token, welcome_mail=True, events=events)
        assert not changed and sub.status.value == "active"
    assert [outbox.payload(r)["type"] for r in rows(db)] == ["subscriber.confirmed"]
    assert len(db.exec(select(Outbox).where(Outbox.kind == welcome.WELCOME)).all()) == 1
