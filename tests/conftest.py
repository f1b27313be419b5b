"""Shared fixtures: a real SMTP server (aiosmtpd on 127.0.0.1), real databases, config files.

Databases: each test gets its own SQLite file, or, when DIGEST_TEST_DATABASE_URL names a
PostgreSQL server (``postgresql+psycopg://user@127.0.0.1:5432/postgres``; its database is only
used to create and drop others), its own new PostgreSQL database, dropped after the test.
`.ci/with-postgres` starts a throw-away server and sets the variable (`make test-pg`).
"""

from __future__ import annotations

import email
import email.policy
import io
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool
from sqlmodel import select

from digest.config import load_settings, render_config
from digest.store.database import make_engine, session
from digest.store.models import Outbox, OutboxStatus
from digest.store.schema import create_schema, ready

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parent.parent
DIGEST = [sys.executable, "-m", "digest"]


TEST_DATABASE_URL = os.environ.get("DIGEST_TEST_DATABASE_URL", "")
ON_POSTGRES = TEST_DATABASE_URL.startswith("postgresql")
if TEST_DATABASE_URL and not ON_POSTGRES:
    raise RuntimeError("DIGEST_TEST_DATABASE_URL must be a postgresql+psycopg:// URL")
sqlite_only = pytest.mark.skipif(ON_POSTGRES, reason="SQLite-specific")

_databases: dict[Path, str] = {}  # tmp_path -> the test's database URL
_admin = None


def _admin_engine():
    global _admin
    if _admin is None:
        _admin = create_engine(TEST_DATABASE_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    return _admin


def database_url(tmp_path: Path) -> str:
    """The test's database: a SQLite file in tmp_path, or a new PostgreSQL database (one per test,
    made on first use)."""
    if not ON_POSTGRES:
        return f"sqlite:///{tmp_path / 'digest.db'}"
    url = _databases.get(tmp_path)
    if url is None:
        name = f"digest_test_{secrets.token_hex(6)}"
        with _admin_engine().connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(TEST_DATABASE_URL).set(database=name).render_as_string(hide_password=False)
        _databases[tmp_path] = url
    return url


@pytest.fixture(autouse=True)
def _drop_test_databases():
    yield
    if ON_POSTGRES:
        with _admin_engine().connect() as conn:
            for url in _databases.values():
                conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
        _databases.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    helo: str | None = None  # the name the client gave in EHLO/HELO (smtp.local_hostname)

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)


@dataclass
class SMTPServer:
    """What the test server received. `refuse[address] = "550 ..."` refuses that recipient."""

    host: str
    port: int
    received: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_message: object = None  # optional callable(Received), called after each message
    # optional callable(n) -> None | "drop" | "550 ..." | "451 ...", n = 1, 2, ... for each DATA
    # received: None accepts, "drop" closes the connection without a reply, else that reply.
    data_hook: object = None
    datas: int = 0
    connections: int = 0  # sessions opened so far

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.recipients]


class _Handler:
    def __init__(self, server: SMTPServer):
        self.server = server

    async def handle_RCPT(self, smtp, session_, envelope, address, rcpt_options):
        reply = self.server.refuse.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_EHLO(self, smtp, session_, envelope, hostname, responses):
        with self.server.lock:
            self.server.connections += 1
        session_.host_name = hostname
        return responses

    async def handle_DATA(self, smtp, session_, envelope):
        with self.server.lock:
            self.server.datas += 1
            n = self.server.datas
        verdict = self.server.data_hook(n) if self.server.data_hook else None
        if verdict == "drop":
            smtp.transport.close()
            return "421 4.3.0 dropped"
        if verdict:
            return verdict
        got = Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content or envelope.content),
                       session_.host_name)
        with self.server.lock:
            self.server.received.append(got)
        if self.server.on_message:
            self.server.on_message(got)
        return "250 2.0.0 Ok: queued"


@pytest.fixture
def smtp_server():
    server = SMTPServer("127.0.0.1", free_port())
    controller = Controller(_Handler(server), hostname=server.host, port=server.port, decode_data=False)
    controller.start()
    try:
        yield server
    finally:
        controller.stop()


def write_config(tmp_path: Path, *, feeds: list[str] | None = None, smtp_port: int = 25, extra: str = "",
                 connections: int = 1, dkim: dict | None = None, **kw) -> Path:
    """A digest.toml in tmp_path with the test's database (see database_url). `connections` (smtp.connections) is 1
    unless a test asks for sender processes; `dkim` sets the [dkim] keys; `extra` lines go into
    the [delivery] section."""
    text = render_config(
        name=kw.pop("name", "Test Weekly"),
        from_=kw.pop("from_", "Test Weekly <news@digest.test>"),
        feeds=feeds or [str(FIXTURES / "blogger.atom")],
        database_url=kw.pop("database_url", None) or database_url(tmp_path),
        smtp_port=smtp_port,
        first_edition_days=kw.pop("first_edition_days", 0),
        **kw,
    )
    text = text.replace("# connections = 4 ", f"connections = {connections} ", 1)
    for key, value in (dkim or {}).items():
        text = text.replace("[dkim]\n", f"[dkim]\n{key} = \"{value}\"\n", 1)
    path = tmp_path / "digest.toml"
    if extra.strip():
        text = text.replace("[delivery]\n", "[delivery]\n" + extra.rstrip("\n") + "\n", 1)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def config_path(tmp_path, smtp_server) -> Path:
    return write_config(tmp_path, smtp_port=smtp_server.port)


@pytest.fixture
def settings(config_path):
    return load_settings(config_path)


_head_template: Path | None = None  # a SQLite file the migrations brought to head, once per test process


def start_from_head_template(engine) -> None:
    """A new SQLite file (none yet at the engine's path) starts as a copy of one the migrations
    made once in this test process: Alembic takes ~0.1 s a database, ~130 tests make one. The
    caller still runs create_schema or ready, which find it at head. Others are left as they are
    (an existing file, PostgreSQL)."""
    global _head_template
    path = engine.url.database
    if engine.dialect.name != "sqlite" or not path or path == ":memory:" or "mode=memory" in str(engine.url) \
            or Path(path).exists():
        return
    if _head_template is None:
        folder = Path(tempfile.mkdtemp(prefix="digest-head-"))
        template = make_engine(f"sqlite:///{folder / 'head.db'}")
        create_schema(template)
        template.dispose()  # the last connection checkpoints the WAL into the file
        _head_template = folder / "head.db"
    shutil.copyfile(_head_template, path)


@pytest.fixture(scope="session", autouse=True)
def _remove_head_template():
    yield
    if _head_template is not None:
        shutil.rmtree(_head_template.parent, ignore_errors=True)


@pytest.fixture
def db(settings):
    engine = make_engine(settings.database_url)
    start_from_head_template(engine)
    create_schema(engine)
    with session(engine) as s:
        yield s
    engine.dispose()


class FixedClock:
    """A clock a test can move: clock() -> aware UTC datetime."""

    def __init__(self, now: datetime | None = None):
        self.now = now or datetime(2026, 11, 26, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


def run_digest(config: Path, *args: str, check: bool = False, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the real `digest` command in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    full_env.update(env or {})
    proc = subprocess.run(
        [*DIGEST, "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=config.parent,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"digest {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The one line a failed command printed on standard error: no traceback, nothing else."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def settled(db, timeout: float = 30) -> None:
    """Wait until the app's outbox relay has done what it can now: no mail waiting for its first
    attempt or in flight (a retry waits for the test's clock)."""
    deadline = time.monotonic() + timeout
    while True:
        db.expire_all()
        busy = db.exec(select(Outbox).where(Outbox.status == OutboxStatus.pending,
                                            (Outbox.attempts == 0) | (Outbox.claimed_by.is_not(None)))).all()
        db.rollback()
        if not busy:
            return
        assert time.monotonic() < deadline, f"outbox still busy after {timeout} s: {busy}"
        time.sleep(0.02)


def fetch(config: Path) -> None:
    """`digest fetch` (every configured feed polled, its posts stored) in this process: for tests
    whose subject is what comes after. A new database is created at the newest schema. The poll
    runs in a thread of its own: its asyncio.run refuses the thread where Playwright's sync API
    keeps its event loop (the browser tests)."""
    from concurrent.futures import ThreadPoolExecutor

    from digest.clock import utc_now
    from digest.service import pipeline

    settings = load_settings(config)

    def poll() -> list:
        engine = make_engine(settings.database_url)
        try:
            start_from_head_template(engine)
            ready(engine)
            with session(engine) as s:
                return pipeline.poll(s, settings, utc_now)
        finally:
            engine.dispose()

    with ThreadPoolExecutor(1) as thread:
        reports = thread.submit(poll).result()
    assert reports and all(r.ok for r in reports), [r.error for r in reports]


def subscribe(config: Path, *emails: str) -> None:
    """Confirmed subscribers in the configured database, as `digest subscribers add` / `import`
    makes them (a new database is created at the newest schema), but in this process: for tests
    whose subject is what comes after. A `digest` subprocess costs ~0.7 s of CPU to start."""
    from digest.clock import utc_now
    from digest.service import subscribers

    engine = make_engine(load_settings(config).database_url)
    try:
        start_from_head_template(engine)
        ready(engine)
        with session(engine) as s:
            report = subscribers.import_csv(s, io.StringIO("email\n" + "".join(f"{e}\n" for e in emails)), utc_now)
        assert report.imported == len(emails) and not report.errors, report
    finally:
        engine.dispose()
