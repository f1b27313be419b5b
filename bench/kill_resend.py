"""Measure what a SIGKILL of the whole `digest send` process group costs in duplicate mail.

One edition of the bundled sample feed to N subscribers over C connections (smtp.connections),
against an aiosmtpd server on 127.0.0.1 in this process that counts each recipient. The send is
started K times; each time, once a further random number of messages has been accepted, its
whole process group (the command and its sender processes) gets SIGKILL. A last `digest send`
then finishes the edition. Prints the addresses mailed, those never mailed, and the extra copies,
against the bound the README states (at most one message in flight per connection per kill).

    .venv/bin/python bench/kill_resend.py [--subscribers 3000] [--connections 4] [--kills 8] [--seed 1]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from aiosmtpd.controller import Controller

from digest.config import render_config

ROOT = Path(__file__).resolve().parent.parent
DIGEST = [sys.executable, "-m", "digest"]


class Counting:
    """An SMTP server handler that accepts everything and counts messages per recipient."""

    def __init__(self) -> None:
        self.copies: Counter[str] = Counter()
        self.accepted = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.copies.update(envelope.rcpt_tos)
            self.accepted += 1
        return "250 2.0.0 Ok: queued"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subscribers", type=int, default=3000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--kills", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    n, kills = args.subscribers, args.kills

    with socket.socket() as probe:  # a free port (aiosmtpd's Controller cannot take port 0)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    handler = Counting()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "digest.toml"
        config.write_text(render_config(
            feeds=[str(ROOT / "examples" / "codelooru.atom")], database_url=f"sqlite:///{work / 'digest.db'}",
            smtp_port=port, first_edition_days=0,
        ).replace("# connections = 4 ", f"connections = {args.connections} ", 1), encoding="utf-8")
        (work / "list.csv").write_text("email\n" + "".join(f"r{i:06d}@example.com\n" for i in range(n)))
        subprocess.run([*DIGEST, "--config", str(config), "subscribers", "import", str(work / "list.csv")],
                       check=True, env=env, capture_output=True)
        for k in range(kills):
            # Spread the kills over the edition: each one after 50 .. n/(kills+1) more acceptances.
            target = handler.accepted + rng.randint(50, max(51, n // (kills + 1)))
            proc = subprocess.Popen([*DIGEST, "--config", str(config), "send"], env=env, start_new_session=True,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while handler.accepted < target and proc.poll() is None:
                time.sleep(0.002)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            time.sleep(0.3)  # replies to messages already on the wire
            print(f"kill {k + 1}: {handler.accepted} messages accepted so far", flush=True)
        subprocess.run([*DIGEST, "--config", str(config), "send"], check=True, env=env, capture_output=True)
    controller.stop()
    copies = handler.copies
    extra = sum(c - 1 for c in copies.values())
    print(f"{n} subscribers, {args.connections} connections, {kills} kills of the process group:"
          f" {len(copies)} mailed, {n - len(copies)} never mailed, {extra} extra copies"
          f" ({sum(c > 1 for c in copies.values())} addresses), bound {args.connections * kills}")


if __name__ == "__main__":
    main()
