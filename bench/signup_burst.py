"""Benchmark: a burst of sign-ups and one-click unsubscribes against a real `digest serve`, with a
slow SMTP relay.

Starts `digest serve --no-scheduler` (uvicorn, a subprocess of this Python, so
`../before/.venv/bin/python bench/signup_burst.py` measures that checkout's code) on 127.0.0.1, on a fresh
SQLite file holding `--unsubscribes` active subscribers, with an aiosmtpd sink in this process that
takes `--relay-seconds` (0.5) per message, as a loaded relay does. Then, all at once:

- `--clients` (40) sign-up clients, each its own connection and its own address in
  X-Forwarded-For (the server trusts 127.0.0.1 as a proxy, so the rate limit sees 40 readers),
  each posting `--signups-per-client` (5, the rate limit) sign-ups one after the other;
- `--unsubscribes` (500) one-click unsubscribes (RFC 8058 POSTs), over `--unsubscribe-connections`
  (50) connections, as a mail provider sends them;
- a `GET /healthz` every 0.25 s.

Prints the server's CPU and the clients' (they share the machine's cores), the errors (5xx,
refused or timed-out requests), p50/p99/max latency per kind, then waits
(at most `--drain-timeout` s) for the confirmation mails and prints how many arrived, to how many
addresses, and how many addresses got more than one.

    .venv/bin/python bench/signup_burst.py [--clients 40] [--signups-per-client 5]
        [--unsubscribes 500] [--relay-seconds 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from aiosmtpd.controller import Controller

from digest.config import load_settings, render_config
from digest.links import Links
from digest.store.database import create_schema, make_engine

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --- the slow relay ----------------------------------------------------------------------------


class SlowRelay:
    """Accepts every message after `delay` seconds (an asyncio sleep: connections in parallel each
    wait their own delay, as a real relay's do)."""

    def __init__(self, delay: float):
        self.delay = delay
        self.recipients: Counter[str] = Counter()
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(self.delay)
        with self.lock:
            self.recipients.update(envelope.rcpt_tos)
        return "250 2.0.0 Ok: queued"


# --- the load ----------------------------------------------------------------------------------


@dataclass
class Timings:
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def line(self, name: str) -> str:
        n = len(self.latencies) + sum(self.errors.values())
        if not self.latencies:
            return f"{name:<12} {n:>5} requests, errors {dict(self.errors)}"
        ms = sorted(x * 1000 for x in self.latencies)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        errors = sum(self.errors.values())
        detail = f" {dict(self.errors)}" if errors else ""
        return (f"{name:<12} {n:>5} requests, {errors} errors{detail}; "
                f"p50 {statistics.median(ms):.0f} ms, p99 {p99:.0f} ms, max {ms[-1]:.0f} ms")


async def timed(client: httpx.AsyncClient, timings: Timings, method: str, url: str, **kw) -> None:
    start = time.perf_counter()
    try:
        r = await client.request(method, url, **kw)
    except httpx.HTTPError as exc:
        timings.errors[type(exc).__name__] += 1
        return
    if r.status_code >= 500 or r.status_code == 429:
        timings.errors[str(r.status_code)] += 1
        return
    timings.latencies.append(time.perf_counter() - start)


async def burst(base: str, args, tokens: list[str]) -> tuple[Timings, Timings, Timings, float]:
    """Each reader and each provider connection is its own client with one connection, as a
    browser or a mail provider's sender is, made before the clock starts. (One shared httpx
    client with 90 connections made this process the bottleneck: httpcore's pool checks every
    connection for every request, so the burst stalled for seconds in the client while the server
    sat idle.)"""
    signups, unsubscribes, health = Timings(), Timings(), Timings()
    tls = ssl.create_default_context()  # unused on http://, but each client would load the CAs again

    def client() -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(60.0), limits=httpx.Limits(max_connections=1), verify=tls)

    readers = [client() for _ in range(args.clients)]
    providers = [client() for _ in range(args.unsubscribe_connections)]
    probe_client = client()
    done = asyncio.Event()

    async def reader(i: int, c: httpx.AsyncClient) -> None:
        ip = f"10.1.{i // 250}.{i % 250 + 1}"
        for j in range(args.signups_per_client):
            form = {"email": f"reader{i}-{j}@example.com", "name": f"Reader {i}"}
            await timed(c, signups, "POST", "/subscribe", data=form, headers={"X-Forwarded-For": ip})

    queue: asyncio.Queue[str] = asyncio.Queue()
    for t in tokens:
        queue.put_nowait(t)

    async def provider(c: httpx.AsyncClient) -> None:
        while not queue.empty():
            token = queue.get_nowait()
            await timed(c, unsubscribes, "POST", f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})

    async def prober() -> None:
        while not done.is_set():
            await timed(probe_client, health, "GET", "/healthz")
            with contextlib.suppress(TimeoutError):  # a probe every 0.25 s until the burst is done
                await asyncio.wait_for(done.wait(), 0.25)

    probe = asyncio.create_task(prober())
    start = time.perf_counter()
    await asyncio.gather(*(reader(i, c) for i, c in enumerate(readers)), *(provider(c) for c in providers))
    elapsed = time.perf_counter() - start
    done.set()
    await probe
    for c in (*readers, *providers, probe_client):
        await c.aclose()
    return signups, unsubscribes, health, elapsed


# --- set-up ------------------------------------------------------------------------------------


def seed(config: Path, count: int) -> list[str]:
    """`count` active subscribers; their one-click unsubscribe tokens."""
    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    create_schema(engine)
    now = datetime.now(UTC)
    rows = [{"email": f"old{i}@example.com", "status": "active", "paused": False, "created_at": now,
             "confirmed_at": now} for i in range(count)]
    from digest.store.models import Subscriber

    with engine.begin() as conn:
        conn.execute(Subscriber.__table__.insert(), rows)
        ids = conn.execute(Subscriber.__table__.select().order_by(Subscriber.__table__.c.id)).all()
    engine.dispose()
    links = Links(settings.newsletter.secret_key, settings.newsletter.public_url)
    return [links.subscriber_token(r.id, r.email) for r in ids]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_up(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"digest serve exited {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"http://{HOST}:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    sys.exit(f"digest serve did not come up in {timeout:g} s:\n{log.read_text()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=40)
    ap.add_argument("--signups-per-client", type=int, default=5)
    ap.add_argument("--unsubscribes", type=int, default=500)
    ap.add_argument("--unsubscribe-connections", type=int, default=50)
    ap.add_argument("--relay-seconds", type=float, default=0.5)
    ap.add_argument("--drain-timeout", type=float, default=180)
    args = ap.parse_args()

    relay = SlowRelay(args.relay_seconds)
    smtp_port = free_port()
    controller = Controller(relay, hostname=HOST, port=smtp_port, decode_data=False)
    controller.start()
    with tempfile.TemporaryDirectory(prefix="signup-burst-") as tmp:
        tmpdir = Path(tmp)
        config = tmpdir / "digest.toml"
        config.write_text(render_config(
            name="Burst Weekly", from_="Burst Weekly <news@burst.test>",
            feeds=[str(ROOT / "examples" / "codelooru.atom")],
            database_url=f"sqlite:///{tmpdir / 'digest.db'}", smtp_port=smtp_port,
        ), encoding="utf-8")
        tokens = seed(config, args.unsubscribes)
        port = free_port()
        log = tmpdir / "serve.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "digest", "--config", str(config), "serve", "--no-scheduler",
             "--port", str(port), "--log-level", "warning"],
            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=tmpdir,
        )
        try:
            wait_until_up(port, proc, log)
            load = os.getloadavg()  # other work on the machine slows every figure below
            cpu_before, client_before = cpu_seconds(proc.pid), time.thread_time()
            signups, unsubscribes, health, elapsed = asyncio.run(burst(f"http://{HOST}:{port}", args, tokens))
            cpu = cpu_seconds(proc.pid) - cpu_before
            client_cpu = time.thread_time() - client_before  # this thread runs every client, not the relay
            expected = args.clients * args.signups_per_client
            print(f"burst: {expected} sign-ups from {args.clients} clients + {args.unsubscribes} one-click "
                  f"unsubscribes ({args.unsubscribe_connections} at a time), relay {args.relay_seconds:g} s/message, "
                  f"{elapsed:.1f} s")
            print(f"server CPU {cpu:.1f} s ({cpu / (expected + args.unsubscribes) * 1000:.1f} ms per request), "
                  f"clients' CPU {client_cpu:.1f} s; load average before / after {load[0]:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
            print(signups.line("sign-up"))
            print(unsubscribes.line("unsubscribe"))
            print(health.line("healthz"))
            start = time.monotonic()
            deadline = start + args.drain_timeout
            while len(relay.recipients) < expected and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.2)
            drained = time.monotonic() - start
            time.sleep(min(3.0, max(0.0, deadline - time.monotonic())))  # a late duplicate would show now
            with relay.lock:
                got = Counter(relay.recipients)
            twice = sum(1 for n in got.values() if n > 1)
            print(f"confirmation mails: {sum(got.values())} to {len(got)} of {expected} addresses, "
                  f"{twice} addresses more than once; last arrived {drained:.1f} s after the burst")
            errors = [line for line in log.read_text().splitlines() if "ERROR" in line or "Traceback" in line]
            print(f"server log: {len(errors)} error lines" + (f", first: {errors[0]}" if errors else ""))
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            controller.stop()


if __name__ == "__main__":
    main()
