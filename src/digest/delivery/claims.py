"""Who holds which delivery: a sender's id, what a claim returns, whether a sender still runs, and
the lease a sender keeps on the batch it works through.

A sender claims a batch by writing its sender id and a lease end on the deliveries (the store
does it: `ledger.SQLLedger.claim`). The id names its host and process, so another sender on the
same host can tell that it died (`sender_is_gone`) without waiting for the lease to run out."""

from __future__ import annotations

import os
import secrets
import socket
from datetime import datetime, timedelta
from typing import NamedTuple

from digest.clock import Clock
from digest.store.models import as_utc

_HOST = socket.gethostname()


def new_sender_id() -> str:
    """host:pid:random: the identity of one sender, written into the claims it holds (the
    `claimed_by` column) and naming its journal file."""
    return f"{_HOST}:{os.getpid()}:{secrets.token_hex(3)}"


class Claimed(NamedTuple):  # (a frozen dataclass cost ~1.5 µs more a delivery to build)
    """One claimed delivery with what sending it needs of its subscriber."""

    delivery_id: int
    attempts: int
    subscriber_id: int | None
    email: str | None
    name: str | None
    topics: str | None  # the stored text (models.topics_text)
    active: bool
    catch_up_from: int | None = None  # Delivery.catch_up_from: the variant's catch-up point


def sender_is_gone(owner: str) -> bool:
    """Whether the sender `owner` (a sender id) ran on this host and its process no longer runs.
    False for senders of other hosts: their claims end with their lease."""
    host, _, rest = owner.partition(":")
    pid_s = rest.partition(":")[0]
    if host != _HOST or not pid_s.isdigit():
        return False
    pid = int(pid_s)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A process that exited but was not reaped yet (Linux): dead for our purposes. Sender
    processes whose parent was killed too wait as zombies until init reaps them, and a container's
    PID 1 may never do it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in (b"Z", b"X")


class Lease:
    """The claims one sender holds (claimed, no result written yet) and when their lease was last
    set. Renewed once a third of it has passed, so a batch that takes longer than a lease (a slow
    relay, a tight rate limit) is not taken over by another sender while this one still works
    through it."""

    def __init__(self, length: timedelta, clock: Clock):
        self.length = length
        self.clock = clock
        self._renew_after = length / 3
        self.held = 0
        self.set_at: datetime | None = None

    def taken(self, count: int, now: datetime) -> None:
        """A batch of `count` was claimed at `now` (until now + length)."""
        self.held, self.set_at = count, now

    def settled(self, count: int) -> None:
        """`count` results were written: those claims ended."""
        self.held = max(0, self.held - count)

    def renewal_due(self) -> datetime | None:
        """Now, when claims are held and a third of the lease has passed since it was set;
        else None (called per message: one clock read)."""
        if not self.held:
            return None
        now = as_utc(self.clock())
        return now if now - self.set_at >= self._renew_after else None  # type: ignore[operator]

    def renewed(self, now: datetime, kept: int) -> bool:
        """The store extended the lease at `now` on `kept` claims (after every result was
        written). False when some were lost: this sender stalled for a whole lease and another
        took them, so it must not send the rest of its batch."""
        self.set_at = now
        return kept >= self.held
