"""Shared fixtures: a real SMTP server (aiosmtpd on 127.0.0.1), real SQLite files, config files."""

from __future__ import annotations

import email
import email.policy
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from digest.config import load_settings, render_config
from digest.store import create_schema, make_engine, session

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parent.parent
DIGEST = [sys.executable, "-m", "digest"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes

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
        got = Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content or envelope.content))
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
    """A digest.toml in tmp_path with its own SQLite file. `connections` (smtp.connections) is 1
    unless a test asks for sender processes; `dkim` sets the [dkim] keys; `extra` lines go into
    the [delivery] section."""
    text = render_config(
        name=kw.pop("name", "Test Weekly"),
        from_=kw.pop("from_", "Test Weekly <news@digest.test>"),
        feeds=feeds or [str(FIXTURES / "blogger.atom")],
        database_url=f"sqlite:///{tmp_path / 'digest.db'}",
        smtp_port=smtp_port,
        first_edition_days=kw.pop("first_edition_days", 0),
        **kw,
    )
    text = text.replace("# connections = 4 ", f"connections = {connections} ", 1)
    for key, value in (dkim or {}).items():
        text = text.replace(f"[dkim]\n", f"[dkim]\n{key} = \"{value}\"\n", 1)
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


@pytest.fixture
def db(settings):
    engine = make_engine(settings.database_url)
    create_schema(engine)
    with session(engine) as s:
        yield s
    engine.dispose()


class FixedClock:
    """A clock a test can move: clock() -> aware UTC datetime."""

    def __init__(self, now: datetime | None = None):
        self.now = now or datetime(2026, 11, 26, 9, 0, tzinfo=timezone.utc)

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
