"""Benchmark: one edition to a million subscribers on PostgreSQL, sent by 1, 2 and 4 workers.

Needs a PostgreSQL server (its URL names a database used only to create and drop the bench's own)
and Postfix's smtp-sink (apt-get install postgresql postfix). A throw-away server:

    .ci/with-postgres .venv/bin/python bench/scale.py                 # uses $DIGEST_TEST_DATABASE_URL
    WITH_POSTGRES_DURABLE=1 .ci/with-postgres .venv/bin/python bench/scale.py --subscribers 1000000 --send 200000

Steps and what is measured:
1. `digest init` (migrations), then N subscribers bulk-loaded with COPY, and the sample feed.
2. Edition creation: `digest send` with delivery.mode = "workers" (fetch off), which builds the
   edition and one pending delivery per subscriber (one INSERT ... SELECT): wall time, peak RSS.
3. For W in 1, 2, 4: the edition reset to pending (all but --send deliveries marked skipped, so a
   round sends --send messages while the table keeps its full size), then W `digest worker --once`
   processes started together against smtp-sink: wall time from start until the last exits,
   messages/second, and each process's peak RSS. Every round checks that each delivery was sent
   exactly once in the ledger.

Figures depend on the machine; on a small shared one they are noisy: repeat (--repeat) and read
the median.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

import psycopg  # noqa: E402
from smtp_ceiling import free_port, start_sink, stop_sink  # noqa: E402
from sqlalchemy import make_url  # noqa: E402

from digest.config import render_config  # noqa: E402

DIGEST = [sys.executable, "-m", "digest"]


def spawn(config: Path, *args: str) -> subprocess.Popen:
    """Start a digest command, its output to a file (so reaping it with wait4 cannot deadlock)."""
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - kept with the process, read and closed when it is reaped
    proc = subprocess.Popen([*DIGEST, "--config", str(config), *args], cwd=config.parent, stdout=log, stderr=subprocess.STDOUT)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def reap(proc: subprocess.Popen) -> tuple[int, str]:
    """Wait for the process; (its own peak RSS in MB, its output). Exits on failure. Its CPU
    seconds are left in proc.cpu."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.cpu = usage.ru_utime + usage.ru_stime  # type: ignore[attr-defined]
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.log.seek(0)  # type: ignore[attr-defined]
    out = proc.log.read()  # type: ignore[attr-defined]
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, proc.args))} failed ({proc.returncode}):\n{out}")
    return usage.ru_maxrss // 1024, out


def run(config: Path, *args: str) -> tuple[float, int, str]:
    """Run a digest command; (wall seconds, peak RSS in MB, output)."""
    t0 = time.perf_counter()
    rss, out = reap(spawn(config, *args))
    return time.perf_counter() - t0, rss, out


def cpu_seconds(pid: int, children: bool = False) -> float:
    """user+system CPU of a process (Linux /proc); with `children`, plus its reaped children's
    (for the postmaster: every backend that has exited)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def postmaster_pid(dsn: str) -> int | None:
    """The server's main process, when it runs on this machine (to read its CPU time)."""
    try:
        with psycopg.connect(dsn) as conn:
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        with open(f"/proc/{backend}/status") as f:
            ppid = int(next(line for line in f if line.startswith("PPid:")).split()[1])
        cpu_seconds(ppid, True)
        return ppid
    except (OSError, StopIteration, ValueError):
        return None


def libpq(url: str) -> str:
    u = make_url(url)
    return u.set(drivername="postgresql").render_as_string(hide_password=False)


def load_subscribers(dsn: str, n: int) -> float:
    t0 = time.perf_counter()
    now = datetime.now(UTC)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy("COPY subscriber (email, name, status, paused, created_at, confirmed_at) FROM STDIN") as copy:
            for i in range(n):
                copy.write_row((f"reader{i:07d}@bench.test", f"Reader {i}", "active", False, now, now))
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE subscriber")
    return time.perf_counter() - t0


def reset(dsn: str, send: int) -> None:
    """Every delivery pending again, except all but the first `send` (skipped)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "UPDATE delivery SET status = CASE WHEN id <= (SELECT MIN(id) FROM delivery) + %s - 1"
            " THEN 'pending' ELSE 'skipped' END, attempts = 0, message_id = NULL, sent_at = NULL,"
            " last_error = NULL, next_attempt_at = NULL, claimed_by = NULL, claimed_until = NULL",
            (send,),
        )
        conn.execute("UPDATE edition SET status = 'sending', finished_at = NULL")
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE delivery")


def ledger(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT status, COUNT(*) FROM delivery GROUP BY status").fetchall())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-url", default=os.environ.get("DIGEST_TEST_DATABASE_URL"),
                    help="postgresql+psycopg:// URL of a database to CREATE/DROP from (default: $DIGEST_TEST_DATABASE_URL)")
    ap.add_argument("--subscribers", type=int, default=1_000_000)
    ap.add_argument("--send", type=int, default=None, help="messages sent per throughput round (default: all)")
    ap.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    ap.add_argument("--repeat", type=int, default=1, help="rounds per worker count (the median is reported)")
    ap.add_argument("--batch", type=int, default=200, help="delivery.batch_size")
    ap.add_argument("--keep", action="store_true", help="keep the bench database")
    args = ap.parse_args()
    if not args.server_url or not args.server_url.startswith("postgresql"):
        raise SystemExit("need --server-url postgresql+psycopg://... (or run under .ci/with-postgres)")
    send = min(args.send or args.subscribers, args.subscribers)

    name = f"digest_bench_{secrets.token_hex(4)}"
    admin = libpq(args.server_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        version = conn.execute("SHOW server_version").fetchone()[0]
        durable = {k: conn.execute(f"SHOW {k}").fetchone()[0] for k in ("fsync", "synchronous_commit", "shared_buffers")}
    url = make_url(args.server_url).set(database=name).render_as_string(hide_password=False)
    dsn = libpq(url)
    port = free_port()
    sink, sink_desc = start_sink("smtp-sink", port)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "digest.toml"
            config.write_text(render_config(
                name="Bench Weekly", from_="Bench Weekly <news@bench.test>",
                feeds=[str(ROOT / "examples" / "codelooru.atom")],
                database_url=url, smtp_port=port, first_edition_days=0)
                .replace("[delivery]\n", f'[delivery]\nmode = "workers"\nbatch_size = {args.batch}\n', 1))
            run(config, "init")
            load_s = load_subscribers(dsn, args.subscribers)
            run(config, "fetch")
            create_s, create_rss, out = run(config, "send", "--no-fetch")
            print(out.strip(), flush=True)
            with psycopg.connect(dsn) as conn:
                sizes = conn.execute(
                    "SELECT pg_size_pretty(pg_total_relation_size('subscriber')),"
                    " pg_size_pretty(pg_total_relation_size('delivery'))").fetchone()
            startup_s = statistics.median(run(config, "db", "current")[0] for _ in range(3))

            pm = postmaster_pid(dsn)
            for w in [int(x) for x in args.workers.split(",")]:
                walls, rss, cpu = [], [], []
                for _ in range(args.repeat):
                    reset(dsn, send)
                    pg0 = cpu_seconds(pm, True) if pm else 0.0
                    sink0 = cpu_seconds(sink.pid)
                    t0 = time.perf_counter()
                    procs = [spawn(config, "worker", "--once") for _ in range(w)]
                    peaks = [reap(p)[0] for p in procs]
                    walls.append(time.perf_counter() - t0)
                    rss.append(peaks)
                    time.sleep(0.2)  # let the backends exit and be counted
                    cpu.append((sum(p.cpu for p in procs), (cpu_seconds(pm, True) - pg0) if pm else float("nan"),
                                cpu_seconds(sink.pid) - sink0))
                    got = ledger(dsn)
                    if got.get("sent") != send or got.get("pending", 0) or got.get("failed", 0):
                        raise SystemExit(f"ledger after the round: {got} (expected {send} sent)")
                wall = statistics.median(walls)
                us = [statistics.median(c[i] for c in cpu) / send * 1e6 for i in range(3)]
                rows.append((w, wall, send / wall, max(max(r) for r in rss), us))
                print(f"  {w} worker(s): {send / wall:,.0f} msg/s ({wall:.1f} s; rounds {', '.join(f'{x:.1f}' for x in walls)});"
                      f" peak RSS per worker {', '.join(str(x) for x in rss[-1])} MB", flush=True)
    finally:
        stop_sink(sink)
        if not args.keep:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    print()
    print(f"PostgreSQL {version} ({', '.join(f'{k}={v}' for k, v in durable.items())}); sink: {sink_desc}")
    print(f"cores: {os.cpu_count()}; batch_size {args.batch}; figures are medians of {args.repeat} round(s)")
    print(f"subscribers:        {args.subscribers:,} (COPY: {load_s:.1f} s); table sizes: subscriber {sizes[0]}, delivery {sizes[1]}")
    print(f"edition creation:   {create_s:.1f} s wall for `digest send` (workers mode: build + {args.subscribers:,} deliveries),"
          f" of which ~{startup_s:.1f} s is process start-up; peak RSS {create_rss} MB")
    print(f"send throughput ({send:,} messages per round); CPU per message: workers / PostgreSQL / sink:")
    for w, wall, rate, peak, us in rows:
        print(f"  {w} worker(s): {rate:>8,.0f} msg/s   {wall:7.1f} s   peak RSS per worker <= {peak} MB"
              f"   CPU {us[0]:,.0f} / {us[1]:,.0f} / {us[2]:,.0f} us")


if __name__ == "__main__":
    main()
