"""Benchmark: a whole `digest send` of one edition to N subscribers against a local SMTP sink.

Prints messages/second (end to end: fetch, edition creation, rendering, SMTP, ledger) and the
peak RSS of the `digest send` process. Uses Postfix's smtp-sink when installed
(apt-get install postfix), else an aiosmtpd sink in a subprocess (much slower: it is the bottleneck).

    .venv/bin/python bench/send.py [--subscribers 20000] [--sink auto|smtp-sink|aiosmtpd]
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

from smtp_ceiling import free_port, start_sink, stop_sink  # noqa: E402

from digest.config import render_config  # noqa: E402


def digest(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "digest", "--config", str(config), *args],
                          capture_output=True, text=True, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscribers", type=int, default=20_000)
    ap.add_argument("--sink", choices=("auto", "smtp-sink", "aiosmtpd"), default="auto")
    args = ap.parse_args()

    port = free_port()
    sink, sink_desc = start_sink(args.sink, port)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            config = tmp / "digest.toml"
            config.write_text(render_config(
                name="Bench Weekly", from_="Bench Weekly <news@bench.test>",
                feeds=[str(ROOT / "examples" / "codelooru.atom")],
                database_url=f"sqlite:///{tmp / 'bench.db'}", smtp_port=port, first_edition_days=0))
            digest(config, "init")
            now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
            with sqlite3.connect(tmp / "bench.db") as con:
                con.executemany(
                    "INSERT INTO subscriber (email, name, status, paused, created_at, confirmed_at)"
                    " VALUES (?, ?, 'active', 0, ?, ?)",
                    ((f"reader{i:07d}@bench.test", f"Reader {i}", now, now) for i in range(args.subscribers)),
                )
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            t0 = time.perf_counter()
            proc = digest(config, "send")
            elapsed = time.perf_counter() - t0
            peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    finally:
        stop_sink(sink)

    print(f"sink: {sink_desc}")
    print(proc.stdout.strip().splitlines()[-1])
    print(f"subscribers:     {args.subscribers}")
    print(f"digest send:     {elapsed:.2f} s wall, {args.subscribers / elapsed:,.0f} msg/s end to end")
    print(f"peak RSS:        {peak_kb / 1024:.0f} MB (largest child process{'; an earlier child was larger' if before > peak_kb else ''})")


if __name__ == "__main__":
    main()
