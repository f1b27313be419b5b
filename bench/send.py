"""Benchmark: `digest send` of one edition to N subscribers vs a bare smtplib blast of the same
bytes, over the same number of connections, against the same local SMTP sink.

(a) `digest send` (a subprocess, as an operator runs it: start-up, fetch, edition creation,
    rendering, SMTP, ledger) of the bundled sample edition to N subscribers with
    `smtp.connections = C`; optionally DKIM-signed (--dkim: RSA-2048, or --dkim ed25519).
(b) smtplib on C threads in one process, each reusing one connection (`local_hostname` given, so no
    getfqdn), sending the very bytes digest sends (one pre-rendered message) to the same N
    addresses.

Prints, per run and as medians over --runs: msg/s of each, their ratio, and the peak memory of all
`digest send` processes together (parent and sender processes, sampled every 20 ms from /proc:
the sum of RSS, which counts pages shared between the forked processes once per process, and
the sum of PSS, which counts them once). "delivery" is the rate between the first and the last
acceptance in the ledger (what the sender processes sustain); "end to end" divides N by the
whole command's wall time, start-up included.

The sink is Postfix's smtp-sink when installed (apt-get install postfix; it offers PIPELINING),
else an aiosmtpd sink in a subprocess (much slower: it becomes the bottleneck).

    .venv/bin/python bench/send.py [--subscribers 20000] [--connections 4] [--runs 3]
                                   [--dkim none|rsa|ed25519|both] [--sink auto|smtp-sink|aiosmtpd]
"""

from __future__ import annotations

import argparse
import os
import smtplib
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

from smtp_ceiling import HOST, free_port, process_cpu, start_sink, stop_sink  # noqa: E402

from digest.config import load_settings, render_config  # noqa: E402

# ---------------------------------------------------------------------------------------------
# memory of a process tree


def _children(pid: int) -> list[int]:
    kids = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return kids


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def _kb(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeMemory(threading.Thread):
    """Samples the sum of RSS and of PSS over a process and all its descendants."""

    def __init__(self, pid: int, interval: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = 0
        self.max_procs = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            pids = _tree(self.pid)
            rss = sum(_kb(f"/proc/{p}/status", "VmRSS:") for p in pids)
            pss = sum(_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.max_procs = max(self.max_procs, len(pids))
            time.sleep(self.interval)


# ---------------------------------------------------------------------------------------------
# (a) digest send


def write_key(path: Path, kind: str) -> None:
    from digest.mail.dkim import new_private_key, write_private_key

    write_private_key(new_private_key(kind), path)


def prepare(tmp: Path, port: int, n: int, connections: int, dkim: str) -> Path:
    config = tmp / "digest.toml"
    text = render_config(name="Bench Weekly", from_="Bench Weekly <news@bench.example>",
                         public_url="https://news.bench.example",
                         feeds=[str(ROOT / "examples" / "codelooru.atom")],
                         database_url=f"sqlite:///{tmp / 'bench.db'}", smtp_port=port, first_edition_days=0)
    text = text.replace("# connections = 4 ", f"connections = {connections} ", 1)
    if dkim != "none":
        write_key(tmp / "dkim.pem", dkim)
        text = text.replace("[dkim]\n", '[dkim]\ndomain = "bench.example"\nselector = "digest"\nprivate_key_file = "dkim.pem"\n', 1)
    config.write_text(text)
    subprocess.run([sys.executable, "-m", "digest", "--config", str(config), "init"], check=True, capture_output=True)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(tmp / "bench.db") as con:
        con.executemany(
            "INSERT INTO subscriber (email, name, status, paused, created_at, confirmed_at) VALUES (?, ?, 'active', 0, ?, ?)",
            ((f"reader{i:07d}@bench.example", f"Reader {i}", now, now) for i in range(n)),
        )
    return config


def run_digest_send(config: Path, n: int, sink_pid: int) -> dict:
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    sink0 = process_cpu(sink_pid)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "digest", "--config", str(config), "send"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mem = TreeMemory(proc.pid)
    mem.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # digest send and its sender processes
    sink1 = process_cpu(sink_pid)
    mem.done.set()
    mem.join()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"digest send failed ({proc.returncode}):\n{out}\n{err}")
    with sqlite3.connect(config.parent / "bench.db") as con:
        sent, first, last = con.execute(
            "SELECT COUNT(*), MIN(sent_at), MAX(sent_at) FROM delivery WHERE status = 'sent'").fetchone()
    span = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    if sent != n:
        raise SystemExit(f"only {sent} of {n} delivered:\n{out}\n{err}")
    return {"wall": wall, "e2e": n / wall, "delivery": sent / span if span > 0 else float("nan"),
            "rss_mb": mem.peak_rss / 1024, "pss_mb": mem.peak_pss / 1024, "procs": mem.max_procs,
            "cpu_us": cpu / n * 1e6, "sink_us": (sink1 - sink0) / n * 1e6 if sink0 is not None and sink1 is not None else float("nan"),
            "summary": out.strip().splitlines()[-1]}


# ---------------------------------------------------------------------------------------------
# (b) smtplib blast of the same bytes


def sample_message(config: Path) -> tuple[str, bytes]:
    from digest.links import PublicUrls
    from digest.service import pipeline as jobs
    from digest.store.database import make_engine, session

    settings = load_settings(config)
    with session(make_engine(settings.database_url)) as db:
        p = jobs.preview(db, settings, latest=5, fetch=False)
        # a message exactly as `digest send` builds it (DKIM-signed if configured)
        from digest.delivery.variants import message_from, signer_for
        m = message_from(p.message.rendered, settings.newsletter, datetime.now(UTC),
                         signer_for(settings.dkim, settings.dkim_key_path))
    return settings.newsletter.from_address, m.for_recipient(jobs.preview_recipient(PublicUrls(settings.newsletter.public_url)))


def smtplib_blast(port: int, sender: str, data: bytes, n: int, threads: int) -> dict:
    share = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]
    barrier = threading.Barrier(threads + 1)
    errors = []

    def work(first: int, count: int) -> None:
        client = smtplib.SMTP(HOST, port, local_hostname="bench.local", timeout=60)
        barrier.wait()
        try:
            for i in range(first, first + count):
                client.sendmail(sender, [f"reader{i:07d}@bench.example"], data)
            client.quit()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    workers, first = [], 0
    for count in share:
        t = threading.Thread(target=work, args=(first, count))
        t.start()
        workers.append(t)
        first += count
    barrier.wait()
    t0 = time.perf_counter()
    for t in workers:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"smtplib blast failed: {errors[0]!r}")
    return {"wall": wall, "rate": n / wall}


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscribers", type=int, default=20_000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dkim", choices=("none", "rsa", "ed25519", "both"), default="none",
                    help="sign with an RSA-2048 or Ed25519 key; 'both' runs unsigned and RSA-signed")
    ap.add_argument("--sink", choices=("auto", "smtp-sink", "aiosmtpd"), default="auto")
    ap.add_argument("--no-smtplib", action="store_true", help="skip the smtplib blast")
    args = ap.parse_args()

    variants = ["none", "rsa"] if args.dkim == "both" else [args.dkim]
    port = free_port()
    sink, sink_desc = start_sink(args.sink, port)
    results: dict[str, list[dict]] = {v: [] for v in variants}
    blasts: list[dict] = []
    size = 0
    try:
        print(f"sink: {sink_desc}")
        print(f"{args.subscribers} subscribers, {args.connections} connection(s), {os.cpu_count()} CPU(s), {args.runs} run(s)")
        for run in range(1, args.runs + 1):
            for variant in variants:
                with tempfile.TemporaryDirectory() as tmp:
                    config = prepare(Path(tmp), port, args.subscribers, args.connections, variant)
                    r = run_digest_send(config, args.subscribers, sink.pid)
                    results[variant].append(r)
                    print(f"run {run} digest send (dkim {variant}): {r['e2e']:7.0f} msg/s end to end "
                          f"({r['wall']:.2f} s), {r['delivery']:7.0f} msg/s delivery, peak RSS {r['rss_mb']:.0f} MB"
                          f" / PSS {r['pss_mb']:.0f} MB over {r['procs']} processes; CPU {r['cpu_us']:.0f} µs/msg"
                          f" (all digest processes, start-up included), sink {r['sink_us']:.0f} µs/msg  [{r['summary']}]", flush=True)
                    if not args.no_smtplib and variant == variants[0]:
                        sender, data = sample_message(config)
                        size = len(data)
                        b = smtplib_blast(port, sender, data, args.subscribers, args.connections)
                        blasts.append(b)
                        print(f"run {run} smtplib, {args.connections} threads, same {size}-byte message: "
                              f"{b['rate']:7.0f} msg/s ({b['wall']:.2f} s)", flush=True)
    finally:
        stop_sink(sink)

    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    print(f"\nmedians over {args.runs} run(s){f', message {size} bytes' if size else ''}:")
    for variant in variants:
        rows = results[variant]
        print(f"  digest send, dkim {variant:7s}: {med(rows, 'e2e'):7.0f} msg/s end to end, {med(rows, 'delivery'):7.0f} msg/s "
              f"delivery, {args.subscribers / med(rows, 'e2e'):.1f} s for {args.subscribers}, "
              f"peak RSS {med(rows, 'rss_mb'):.0f} MB, PSS {med(rows, 'pss_mb'):.0f} MB (all processes), "
              f"CPU {med(rows, 'cpu_us'):.0f} µs/msg, sink {med(rows, 'sink_us'):.0f} µs/msg")
    if blasts:
        rate = statistics.median(b["rate"] for b in blasts)
        print(f"  smtplib, {args.connections} threads:     {rate:7.0f} msg/s")
        e2e = med(results[variants[0]], "e2e")
        print(f"  ratio digest send / smtplib: {e2e / rate:.2f}x end to end, "
              f"{med(results[variants[0]], 'delivery') / rate:.2f}x delivery")
    if len(variants) == 2:
        off, on = med(results["none"], "e2e"), med(results["rsa"], "e2e")
        print(f"  DKIM (RSA-2048) on / off: {on / off:.2f} of the unsigned rate end to end, "
              f"{med(results['rsa'], 'delivery') / med(results['none'], 'delivery'):.2f} delivery")


if __name__ == "__main__":
    main()
