"""`digest worker`: many sender processes share one edition without mailing anyone twice; a worker
killed mid-batch leaves its claims to the others; `delivery.mode = "workers"` hands sending over."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from conftest import DIGEST, run_digest, subscribe, write_config
from digest.config import load_settings
from digest.store.database import make_engine


def env(**extra: str) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    e.update(extra)
    return e


def start_worker(config, *args: str, prefix: tuple[str, ...] = (), **extra_env: str) -> subprocess.Popen:
    return subprocess.Popen([*prefix, *DIGEST, "--config", str(config), "worker", *args], env=env(**extra_env),
                            cwd=config.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def delivered_counts(outputs: list[str]) -> int:
    return sum(int(n) for out in outputs for n in re.findall(r"Edition \d+: (\d+) delivered", out))


def queue_edition(tmp_path, smtp_server, n: int, delivery: str = "") -> object:
    """A config in workers mode with `n` subscribers and one edition queued for the workers."""
    config = write_config(tmp_path, smtp_port=smtp_server.port, extra='mode = "workers"\n' + delivery)
    subscribe(config, *(f"reader{i:05d}@example.com" for i in range(n)))
    queued = run_digest(config, "send", check=True)
    assert f"Edition 1: 5 posts, {n} deliveries queued for `digest worker`" in queued.stdout
    assert smtp_server.received == []
    return config


def db_rows(config, sql: str) -> list:
    engine = make_engine(load_settings(config).database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).all()
    finally:
        engine.dispose()


@pytest.mark.slow
def test_four_workers_share_one_edition_and_mail_everyone_once(tmp_path, smtp_server):
    n, batch = 2000, 40  # 50 claims for four workers to race for
    config = queue_edition(tmp_path, smtp_server, n, f"batch_size = {batch}\n")
    procs = [start_worker(config, "--once") for _ in range(4)]
    results = [finish(p) for p in procs]
    assert all(rc == 0 for rc, _, _ in results), results
    per_address = Counter(r.recipients[0] for r in smtp_server.received)
    assert len(per_address) == n and set(per_address.values()) == {1}
    assert delivered_counts([out for _, out, _ in results]) == n  # the workers' own reports add up
    assert db_rows(config, "SELECT status, COUNT(*), COUNT(claimed_by) FROM delivery GROUP BY status") == [("sent", n, 0)]
    assert db_rows(config, "SELECT status FROM edition") == [("sent",)]
    assert "Nothing to send." in run_digest(config, "worker", "--once", check=True).stdout


def _can_fake_another_host() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_worker_killed_mid_batch_on_another_host_is_taken_over_after_its_lease(tmp_path, smtp_server):
    """The victim runs in its own UTS namespace with another host name (as root; else on this host,
    where its death is noticed at once instead of after the lease). Only the victim has a short
    lease (3 s): the test sleeps it out, while the others keep the default one."""
    n, batch = 2000, 100
    config = queue_edition(tmp_path, smtp_server, n, f"batch_size = {batch}\n")
    other_host = _can_fake_another_host()
    prefix = ("unshare", "--uts", "sh", "-c", 'hostname victim-host && exec "$@"', "sh") if other_host else ()

    started, kill_now = threading.Event(), threading.Event()
    victim_sent = 0

    def watch(msg):
        nonlocal victim_sent
        if msg.helo == "victim":
            victim_sent += 1
            started.set()
            if victim_sent == batch // 3:
                kill_now.set()

    smtp_server.on_message = watch
    victim = start_worker(config, "--once", prefix=prefix, DIGEST_SMTP__LOCAL_HOSTNAME="victim",
                          DIGEST_DELIVERY__LEASE_SECONDS="3")
    assert started.wait(60), victim.stderr.read() if victim.poll() is not None else "victim sent nothing"
    others = [start_worker(config, "--once") for _ in range(3)]
    assert kill_now.wait(60)
    os.kill(victim.pid, signal.SIGKILL)  # mid-batch: it holds the rest of its claim
    assert victim.wait(30) == -signal.SIGKILL
    smtp_server.on_message = None
    results = [finish(p) for p in others]
    assert all(rc == 0 for rc, _, _ in results), results

    # Whatever the others did not take over yet is still claimed by the dead worker, until its lease.
    held = db_rows(config, "SELECT claimed_by, claimed_until FROM delivery WHERE status = 'pending'")
    if held:
        assert all(by.startswith("victim-host:" if other_host else "") for by, _ in held)
        until = max(datetime.fromisoformat(str(u)) if isinstance(u, str) else u for _, u in held)
        until = until if until.tzinfo else until.replace(tzinfo=UTC)
        time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.5)
        rc, _, err = finish(start_worker(config, "--once"))
        assert rc == 0, err

    per_address = Counter(r.recipients[0] for r in smtp_server.received)
    assert len(per_address) == n  # nobody lost
    duplicates = sum(c - 1 for c in per_address.values())
    # Only what the victim sent since its last ledger commit (its journal is on the dead host)
    # goes twice: at most the batch it had in flight.
    assert duplicates <= batch, f"{duplicates} duplicates"
    first_sender = {}
    for r in smtp_server.received:
        first_sender.setdefault(r.recipients[0], r.helo)
    assert all(first_sender[a] == "victim" for a, c in per_address.items() if c > 1)
    assert db_rows(config, "SELECT status, COUNT(*) FROM delivery GROUP BY status") == [("sent", n)]


@pytest.mark.slow
def test_workers_mode_send_queues_and_a_polling_worker_delivers_until_sigterm(tmp_path, smtp_server):
    config = write_config(tmp_path, smtp_port=smtp_server.port, extra='mode = "workers"\npoll_seconds = 0.2\n')
    subscribe(config, "ann@example.com", "bob@example.com", "cy@example.com")
    worker = start_worker(config)
    try:
        queued = run_digest(config, "send", check=True)
        assert "Edition 1: 5 posts, 3 deliveries queued for `digest worker`" in queued.stdout
        deadline = time.monotonic() + 60
        while len(smtp_server.received) < 3 and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.1)
        assert sorted(r.recipients[0] for r in smtp_server.received) == ["ann@example.com", "bob@example.com", "cy@example.com"]
        assert "Nothing new to send." in run_digest(config, "send", check=True).stdout
    finally:
        worker.send_signal(signal.SIGTERM)
    rc, out, err = finish(worker, 60)
    assert rc == 0, err
    assert "Worker started" in out and "Edition 1: 3 delivered, 0 failed" in out
    assert len(smtp_server.received) == 3


@pytest.mark.slow
def test_a_polling_worker_waits_out_an_smtp_outage(tmp_path, smtp_server):
    from aiosmtpd.controller import Controller

    from conftest import SMTPServer, _Handler, free_port

    port = free_port()  # nothing listens here yet
    config = write_config(tmp_path, smtp_port=port, extra='mode = "workers"\npoll_seconds = 0.2\n')
    subscribe(config, "ann@example.com")
    run_digest(config, "send", check=True)
    worker = start_worker(config)
    late = SMTPServer("127.0.0.1", port)
    controller = None
    try:
        line = worker.stderr.readline()
        assert f"127.0.0.1:{port}" in line and "retrying" in line
        controller = Controller(_Handler(late), hostname="127.0.0.1", port=port)
        controller.start()
        deadline = time.monotonic() + 60
        while not late.received and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.1)
        assert [r.recipients for r in late.received] == [["ann@example.com"]]
    finally:
        worker.send_signal(signal.SIGTERM)
        rc, out, _ = finish(worker, 60)
        if controller:
            controller.stop()
    assert rc == 0 and "Edition 1: 1 delivered" in out


def test_worker_once_with_nothing_pending(config_path):
    proc = run_digest(config_path, "worker", "--once", check=True)
    assert proc.stdout.strip() == "Nothing to send."


@pytest.mark.parametrize("mode", ["inline", "workers"])
def test_delivery_mode_is_a_setting(tmp_path, mode):
    cfg = load_settings(write_config(tmp_path, extra=f'mode = "{mode}"\n'))
    assert cfg.delivery.mode == mode and cfg.delivery.poll_seconds == 5
    bad = run_digest(write_config(tmp_path, extra='mode = "carrier-pigeon"\n'), "send")
    assert bad.returncode == 2 and "delivery.mode" in bad.stderr
