#!/usr/bin/env python3
"""SMTP send ceiling: smtplib vs digest.smtp_client.SMTPConnection against a local sink.

Starts a throw-away SMTP sink on 127.0.0.1 (Postfix's ``smtp-sink`` if installed, which advertises
PIPELINING and 8BITMIME; otherwise an aiosmtpd sink in a subprocess, which will be the bottleneck),
then sends N pre-rendered messages of about SIZE bytes over C connections, one process per
connection, first with smtplib (``local_hostname`` set, so no getfqdn) and then with SMTPConnection.
Prints msg/s, client CPU per message, and the ratio.

    .venv/bin/python bench/smtp_ceiling.py --messages 20000 --connections 4 --size 22000

Install the sink with:  DEBIAN_FRONTEND=noninteractive apt-get install -y postfix
(smtp-sink ships in the postfix package; the postfix service itself need not run.)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

try:
    from digest.mail.smtp import Envelope, SMTPConnection
except ImportError:  # running from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from digest.mail.smtp import Envelope, SMTPConnection

HOST = "127.0.0.1"
SENDER = "digest@bench.example"

# ----------------------------------------------------------------------------------------------
# Sink
# ----------------------------------------------------------------------------------------------

AIOSMTPD_SINK = r"""
import asyncio, sys
from aiosmtpd.controller import Controller
class Sink:
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        responses.insert(1, "250-PIPELINING")
        return responses
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 Ok"
c = Controller(Sink(), hostname="127.0.0.1", port=int(sys.argv[1]), data_size_limit=0)
c.start()
print("ready", flush=True)
try:
    sys.stdin.read()
finally:
    c.stop()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sink exited early with status {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=1) as s:
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sink did not come up on {HOST}:{port}")


def start_sink(kind: str, port: int) -> tuple[subprocess.Popen, str]:
    smtp_sink = shutil.which("smtp-sink") or (os.path.exists("/usr/sbin/smtp-sink") and "/usr/sbin/smtp-sink")
    if kind == "smtp-sink" and not smtp_sink:
        raise SystemExit("smtp-sink not found (apt-get install postfix)")
    if kind in ("auto", "smtp-sink") and smtp_sink:
        cmd = [smtp_sink]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]  # required when started as root
        cmd += ["-h", "sink.bench", f"{HOST}:{port}", "1024"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port, proc)
        return proc, " ".join(cmd)
    proc = subprocess.Popen(
        [sys.executable, "-c", AIOSMTPD_SINK, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    wait_for_port(port, proc)
    return proc, f"aiosmtpd sink (python subprocess) on {HOST}:{port}"


def stop_sink(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        if proc.stdin:
            proc.stdin.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------------------------
# Messages
# ----------------------------------------------------------------------------------------------

PARAGRAPH = (
    "=3Cp style=3D=22margin:0 0 12px;font-family:Helvetica,Arial,sans-serif=22=3EThis week on the blog: "
    "a long read about self-hosting, feeds and the quiet joy of plain text email digests.=3C/p=3E"
)


def make_message(i: int, size: int) -> bytes:
    head = (
        f"From: Weekly Digest <{SENDER}>\r\n"
        f"To: reader{i}@bench.example\r\n"
        f"Subject: Your weekly digest #{i}\r\n"
        f"Message-ID: <{i}.{size}@bench.example>\r\n"
        "Date: Mon, 01 Jan 2024 08:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n"
        f"List-Unsubscribe: <https://digest.example/u/{i:08d}>\r\n"
        "\r\n"
    )
    lines = [head.encode()]
    total = len(lines[0])
    n = 0
    while total < size:
        chunk = PARAGRAPH[(n * 7) % 40:]
        # quoted-printable soft-wrapped lines (<= 76 chars); every 50th line starts with "." to be stuffed
        for k in range(0, len(chunk), 75):
            piece = chunk[k:k + 75]
            line = ("." if n % 50 == 0 and k == 0 else "") + piece + ("=" if k + 75 < len(chunk) else "") + "\r\n"
            lines.append(line.encode())
            total += len(line)
        n += 1
    return b"".join(lines)


# ----------------------------------------------------------------------------------------------
# Workers
# ----------------------------------------------------------------------------------------------


def worker(impl: str, port: int, first: int, count: int, size: int, barrier, results) -> None:
    messages = [make_message(i, size) for i in range(first, first + count)]
    rcpts = [f"reader{i}@bench.example" for i in range(first, first + count)]
    if impl == "smtpconn":
        envelopes = [Envelope(SENDER, r, m) for r, m in zip(rcpts, messages, strict=True)]
    barrier.wait()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    ok = 0
    if impl == "smtplib":
        client = smtplib.SMTP(HOST, port, local_hostname="bench.local", timeout=60)
        for rcpt, msg in zip(rcpts, messages, strict=True):
            refused = client.sendmail(SENDER, [rcpt], msg)
            ok += not refused
        client.quit()
    else:
        with SMTPConnection(HOST, port, local_hostname="bench.local", timeout=60) as conn:
            for _env, reply in conn.send(envelopes):
                ok += reply.code == 250
    t1 = time.monotonic()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    results.put((t0, t1, ok, cpu))


def process_cpu(pid: int) -> float | None:
    """user+system CPU seconds of a process (Linux /proc), or None if unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def run(impl: str, port: int, messages: int, connections: int, size: int, sink_pid: int) -> dict:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(connections)
    results = ctx.Queue()
    sink_cpu0 = process_cpu(sink_pid)
    share, extra = divmod(messages, connections)
    procs, first = [], 0
    for c in range(connections):
        count = share + (1 if c < extra else 0)
        p = ctx.Process(target=worker, args=(impl, port, first, count, size, barrier, results))
        p.start()
        procs.append(p)
        first += count
    got = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"{impl} worker failed with exit code {p.exitcode}")
    start = min(r[0] for r in got)
    end = max(r[1] for r in got)
    ok = sum(r[2] for r in got)
    cpu = sum(r[3] for r in got)
    sink_cpu1 = process_cpu(sink_pid)
    sink_us = (sink_cpu1 - sink_cpu0) / ok * 1e6 if sink_cpu0 is not None and sink_cpu1 is not None else None
    return {"impl": impl, "ok": ok, "seconds": end - start, "rate": ok / (end - start), "cpu_us": cpu / ok * 1e6,
            "sink_us": sink_us}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--size", type=int, default=22_000, help="approximate message size in bytes")
    parser.add_argument("--sink", choices=["auto", "smtp-sink", "aiosmtpd"], default="auto")
    parser.add_argument("--only", choices=["smtplib", "smtpconn"], help="run only one client")
    args = parser.parse_args()

    port = free_port()
    sink, description = start_sink(args.sink, port)
    try:
        sample = make_message(0, args.size)
        print(f"sink: {description}")
        print(f"{args.messages} messages of {len(sample)} bytes over {args.connections} connection(s), "
              f"{os.cpu_count()} CPU(s)")
        with SMTPConnection(HOST, port) as probe:
            print(f"server offers: PIPELINING={probe.pipelining} 8BITMIME={probe.eightbitmime}")
        impls = [args.only] if args.only else ["smtplib", "smtpconn"]
        out = {}
        for impl in impls:
            r = run(impl, port, args.messages, args.connections, args.size, sink.pid)
            out[impl] = r
            label = "smtplib" if impl == "smtplib" else "SMTPConnection"
            print(f"{label:15s} {r['rate']:9.0f} msg/s  ({r['ok']} ok in {r['seconds']:.2f} s, "
                  f"client CPU {r['cpu_us']:.0f} us/msg"
                  + (f", sink CPU {r['sink_us']:.0f} us/msg" if r["sink_us"] is not None else "") + ")")
            if r["ok"] != args.messages:
                print(f"WARNING: {args.messages - r['ok']} messages not accepted")
        if len(out) == 2:
            print(f"ratio SMTPConnection/smtplib: {out['smtpconn']['rate'] / out['smtplib']['rate']:.2f}x")
    finally:
        stop_sink(sink)


if __name__ == "__main__":
    main()
