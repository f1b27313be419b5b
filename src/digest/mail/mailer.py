"""Mailers: how finished message bytes leave. A `Mailer` takes envelopes and yields each envelope
exactly once with the server's final reply, as soon as it is known (in order, except that an
envelope resent after a dropped connection comes back later; pair results by ``Envelope.tag``).

- `SMTPMailer`: one reused SMTP connection (PIPELINING when offered), reconnecting on a drop.
- `MemoryMailer`: keeps messages in a list (previews, and tests that do not need a server).
- `Pacer`: spaces sends evenly for `smtp.rate_limit`.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from digest.config import SMTPSettings
from digest.errors import DeliveryError
from digest.mail.smtp import Envelope, Reply, SMTPClientError, SMTPConnection

__all__ = ["Envelope", "Reply", "Mailer", "SMTPMailer", "MemoryMailer", "Pacer"]

# After a dropped connection (or a 421), the envelopes that were in flight are resent over a new
# connection at once, each at most this many times; after that it gets its temporary reply and
# the ledger retries it later with backoff.
RESEND_LIMIT = 1
# Waits before successive attempts to reconnect after a drop; then DeliveryError.
RECONNECT_DELAYS = (0.0, 0.5, 2.0)
# This many drops in a row without any reply in between ends the run (DeliveryError).
MAX_DROPS = 5


class Mailer(Protocol):
    def open(self) -> None:
        """Connect; raises DeliveryError naming the server when it cannot be reached."""

    def send(self, envelopes: Iterable[Envelope]) -> Iterator[tuple[Envelope, Reply]]:
        """Yield each envelope exactly once with its final reply."""

    def close(self) -> None: ...

    # Optional: `factory` — a picklable zero-argument callable that makes an equivalent, unopened
    # mailer in another process. Mailers that have one can be spread over `smtp.connections`
    # sender processes.


class SMTPMailer:
    def __init__(self, settings: SMTPSettings, *, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self._conn: SMTPConnection | None = None
        self._sleep = sleep
        self.reconnects = 0  # connections re-opened after a drop, over this mailer's life

    @property
    def where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    @property
    def factory(self) -> Callable[[], SMTPMailer]:
        return functools.partial(SMTPMailer, self.settings)

    def open(self) -> None:
        if self._conn is not None and self._conn.connected:
            return
        s = self.settings
        conn = SMTPConnection(
            s.host,
            s.port,
            security=s.security,
            username=s.username,
            password=s.password,
            timeout=s.timeout,
            local_hostname=s.local_hostname,
        )
        try:
            conn.connect()
        except SMTPClientError as exc:
            raise DeliveryError(f"cannot send through SMTP server {self.where}: {exc}") from None
        except OSError as exc:
            raise DeliveryError(f"cannot connect to SMTP server {self.where}: {exc}") from None
        self._conn = conn

    def _reopen(self, reason: str) -> None:
        """Connect again after a drop, a few times with a pause; DeliveryError if it stays down."""
        error: DeliveryError | None = None
        for delay in RECONNECT_DELAYS:
            if delay:
                self._sleep(delay)
            try:
                self.open()
                self.reconnects += 1
                return
            except DeliveryError as exc:
                error = exc
        raise DeliveryError(
            f"lost the connection to SMTP server {self.where} ({reason}) and could not reconnect: {error}"
        )

    def send(self, envelopes: Iterable[Envelope]) -> Iterator[tuple[Envelope, Reply]]:
        """Send over one connection; after a drop or a 421, reconnect and resend what was in
        flight (each envelope at most RESEND_LIMIT times), then go on with the rest of the input.
        Raises DeliveryError if the server cannot be reached again; envelopes not yet yielded were
        then not sent."""
        self.open()
        source = iter(envelopes)
        resend: deque[Envelope] = deque()  # in flight when the connection dropped
        tries: dict[int, int] = {}  # id(envelope) -> times resent, while not yet reported
        drops = 0  # drops in a row with no message getting a reply in between
        while True:
            assert self._conn is not None
            pulled: deque[Envelope] = deque()  # taken from the input, no result yet

            def feed(pulled: deque[Envelope]) -> Iterator[Envelope]:
                while resend:
                    env = resend.popleft()
                    pulled.append(env)
                    yield env
                for env in source:
                    pulled.append(env)
                    yield env

            lost: Reply | None = None
            results = self._conn.send(feed(pulled))
            try:
                for env, reply in results:
                    pulled.popleft()
                    if reply.code != 0 and reply.code != 421:
                        tries.pop(id(env), None)
                        drops = 0
                        yield env, reply
                        continue
                    lost = reply
                    if tries.get(id(env), 0) < RESEND_LIMIT:
                        pulled.appendleft(env)
                    else:  # resent before and lost again: a temporary failure, retried later
                        tries.pop(id(env), None)
                        yield env, reply
                    break
            finally:
                results.close()
            if lost is None:
                return
            drops += 1
            if drops > MAX_DROPS:
                raise DeliveryError(f"SMTP server {self.where} keeps dropping the connection: {lost}")
            # Everything pulled but not reported goes first over the new connection.
            for env in pulled:
                tries[id(env)] = tries.get(id(env), 0) + 1
            resend.extend(pulled)
            if not resend:  # reconnect only if there is something left to send
                nxt = next(source, None)
                if nxt is None:
                    return
                resend.append(nxt)
            if self._conn.connected:
                self._conn.close()
            self._reopen(str(lost))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> SMTPMailer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryMailer:
    """Accepts everything (or refuses the addresses in `refuse`, with 550) and keeps it."""

    def __init__(self, refuse: Iterable[str] = ()):
        self.sent: list[Envelope] = []
        self.refuse = set(refuse)

    def open(self) -> None:
        pass

    def send(self, envelopes: Iterable[Envelope]) -> Iterator[tuple[Envelope, Reply]]:
        for env in envelopes:
            if env.recipient in self.refuse:
                yield env, Reply(550, "5.1.1 mailbox unavailable")
            else:
                self.sent.append(env)
                yield env, Reply(250, "2.0.0 queued")

    def close(self) -> None:
        pass


class Pacer:
    """At most `rate` calls to `wait()` per second, evenly spaced (no bursts beyond one second's
    worth after an idle spell). rate 0 = no limit. `wait` sleeps in short slices and returns
    False as soon as `stop()` is true."""

    def __init__(
        self,
        rate: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._monotonic = monotonic  # seconds, not a Clock: only differences count
        self._sleep = sleep
        self._next: float | None = None  # when the next call may go (clock seconds)

    def wait(self, stop: Callable[[], bool] = lambda: False) -> bool:
        if not self.interval:
            return True
        now = self._monotonic()
        if self._next is None or now - self._next > 1.0:
            self._next = now
        while True:
            ahead = self._next - now
            if ahead <= 0:
                break
            if stop():
                return False
            self._sleep(min(ahead, 0.2))
            now = self._monotonic()
        self._next += self.interval
        return True
