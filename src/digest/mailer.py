"""Mailers: how finished message bytes leave. A `Mailer` takes envelopes and yields, in order,
each envelope with the server's final reply as soon as it is known.

- `SMTPMailer`: one reused SMTP connection (PIPELINING when offered), reconnecting on a drop.
- `MemoryMailer`: keeps messages in a list (previews, and tests that do not need a server).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from .config import SMTPSettings
from .errors import DeliveryError
from .smtp_client import Envelope, Reply, SMTPClientError, SMTPConnection

__all__ = ["Envelope", "Reply", "Mailer", "SMTPMailer", "MemoryMailer"]


class Mailer(Protocol):
    def open(self) -> None:
        """Connect; raises DeliveryError naming the server when it cannot be reached."""

    def send(self, envelopes: Iterable[Envelope]) -> Iterator[tuple[Envelope, Reply]]:
        """Yield each envelope with its final reply, in order."""

    def close(self) -> None: ...


class SMTPMailer:
    def __init__(self, settings: SMTPSettings):
        self.settings = settings
        self._conn: SMTPConnection | None = None

    @property
    def where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

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

    def send(self, envelopes: Iterable[Envelope]) -> Iterator[tuple[Envelope, Reply]]:
        self.open()
        assert self._conn is not None
        yield from self._conn.send(envelopes)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> SMTPMailer:
        return self

    def __exit__(self, *exc) -> None:
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
