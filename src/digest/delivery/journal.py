"""The crash journal: acceptances a sender has not yet written to the ledger.

Results are written to the ledger in groups; between writes each acceptance is also appended to
a small per-sender file (one unbuffered write, which survives the process being killed), so after
a crash the next sender on the host replays the journal and re-sends only the message that was in
flight. `settle_dead_senders` does that and frees the dead senders' claims."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from digest.delivery.claims import sender_is_gone
from digest.delivery.ledger import Accepted, DeliveryStore, SQLLedger


class Journal:
    """Acceptances not yet committed to the ledger, one line each: delivery id, Message-ID, time.

    The file belongs to one sender; it is emptied at every ledger commit and replayed (then
    removed) by the next sender when its owner died."""

    def __init__(self, directory: Path, sender: str):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / (sender.replace(":", "_") + ".log")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def record(self, delivery_id: int, message_id: str, when: datetime) -> None:
        os.write(self._fd, f"{delivery_id}\t{message_id}\t{when.isoformat()}\n".encode())

    def clear(self) -> None:
        os.ftruncate(self._fd, 0)

    def close(self) -> None:
        os.close(self._fd)
        self.path.unlink(missing_ok=True)


def dead_journals(directory: Path) -> Iterator[tuple[Path, list[Accepted]]]:
    """The journals in `directory` of senders of this host that no longer run, with their lines
    (a torn last line is left out)."""
    if not directory.is_dir():
        return
    for path in directory.glob("*.log"):
        owner = path.stem.replace("_", ":")
        if not sender_is_gone(owner):
            continue
        accepted: list[Accepted] = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[0].isdigit():
                accepted.append((int(parts[0]), parts[1], datetime.fromisoformat(parts[2])))
        yield path, accepted


def replay(store: DeliveryStore, directory: Path) -> int:
    """Mark as sent what dead senders of this host had journaled, and remove their journals.
    Returns the acceptances replayed."""
    marked = 0
    for path, accepted in dead_journals(directory):
        marked += store.replay(accepted)
        path.unlink(missing_ok=True)
    return marked


def settle_dead_senders(ledger: SQLLedger, directory: Path) -> int:
    """What senders of this host that died left behind: their journals are replayed, then their
    claims freed. Returns the acceptances replayed."""
    replayed = replay(ledger, directory)
    ledger.release_dead(sender_is_gone)
    return replayed
