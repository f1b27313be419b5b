"""Webhooks: what happened (a reader confirmed, left or bounced; an edition went out), told to the
URLs of `[[webhooks]]` by a signed JSON POST (docs/webhooks.md).

`Events.emit()` writes one outbox row per webhook that listens for the event, in the caller's
transaction: the row exists exactly when the change it reports was committed, and the request or
send that made the change never waits on a receiver. The row's payload is the body, byte for
byte, so every retry sends the same event (same `id`). The secret is not stored with it: the
`Webhook` courier looks the webhook up by its URL in the current settings when it sends, signs
then, and skips the row if that URL is no longer configured.

A POST that gets a 2xx is `sent`. One that gets no answer (a refused connection, a timeout) or
408, 429 or a 5xx is tried again after the outbox's BACKOFF (10 s, 1 min, 5 min, 30 min, 2 h, then
every 6 h), the last time 24 h after the event; then it is `failed`. Any other answer (a 4xx, a
redirect) is `failed` at once: the receiver read the request and refused it, and a retry would
send it the same bytes. The operator sees why in the row's last_error.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from digest import __version__
from digest.clock import Clock, utc_now
from digest.config import EVENTS, Settings, WebhookSettings
from digest.delivery import outbox
from digest.store.models import Outbox, Subscriber, as_utc

if TYPE_CHECKING:
    import httpx  # imported at the first POST: every `digest` command imports this module, few post (~25 ms)

log = logging.getLogger(__name__)

KIND = "webhook"  # the outbox kind
RETRY_FOR = timedelta(hours=24)  # after this from the event, a POST that never got a 2xx is failed
TIMEOUT_SECONDS = 10.0  # for one POST, connect to last byte: a slow receiver holds up other webhooks this long at most
# After a receiver did not answer, its other rows due in the next half minute are not tried (each
# would wait out the timeout again): they wait for their next attempt.
DOWN_SECONDS = 30.0
# Answers that mean "not now" rather than "no": tried again (RFC 9110 408, RFC 6585 429).
RETRIED_4XX = frozenset({408, 429})


class Events:
    """Where events go: the configured webhooks; `clock` dates them. `main_cadence` is the name
    the main cadence goes by (schedule.name): events name a reader's or an edition's cadence as
    the config does, not as it is stored ("" for the main one)."""

    def __init__(self, hooks: Sequence[WebhookSettings], clock: Clock, main_cadence: str = ""):
        self.hooks = tuple(hooks)
        self.clock = clock
        self.main_cadence = main_cadence

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock) -> Events:
        """The configured webhooks; a reader of the main cadence is reported under its name
        (schedule.name), not as it is stored ("")."""
        return cls(settings.webhooks, clock, settings.schedule.name)

    def cadence(self, key: str) -> str:
        """The name of the cadence stored as `key`."""
        return key or self.main_cadence

    def subscriber_data(self, sub: Subscriber) -> dict[str, Any]:
        """The `data` of a subscriber.* event."""
        return {"subscriber": {"id": sub.id, "email": sub.email, "name": sub.name, "status": sub.status.value,
                               "topics": sub.topics, "cadence": self.cadence(sub.cadence)}}

    def listens(self, name: str) -> bool:
        """Whether a webhook wants event `name` (so a caller can skip gathering its data)."""
        return any(name in h.events for h in self.hooks)

    def emit(self, session: Session, name: str, data: Mapping[str, Any]) -> int:
        """Queue the event `name` for every webhook that listens for it, in the session's
        transaction (the caller commits); how many rows were queued."""
        if name not in EVENTS:
            raise ValueError(f"unknown event {name!r}")
        hooks = [h for h in self.hooks if name in h.events]
        if not hooks:
            return 0
        now = as_utc(self.clock())
        body = {"id": str(uuid.uuid4()), "type": name, "created_at": iso(now), "data": dict(data)}
        for hook in hooks:
            outbox.enqueue(session, KIND, hook.url, body, now)
        return len(hooks)


NO_EVENTS = Events((), utc_now)  # for callers (tests, tools) with no webhooks configured


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Digest-Signature header: HMAC-SHA256 of "{timestamp}.{body}" with the secret, in hex."""
    signed = timestamp.encode("ascii") + b"." + body
    return "sha256=" + hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


class Webhook:
    """The outbox courier of kind "webhook": POSTs a row's payload to its URL, signed with the
    secret configured for that URL now."""

    def __init__(self, hooks: Sequence[WebhookSettings], clock: Clock):
        self.secrets = {h.url: h.secret for h in hooks}
        self.clock = clock
        self._client: httpx.Client | None = None  # made at the first POST: most processes never send one
        self._down: dict[str, tuple[float, str]] = {}  # url -> (monotonic time, why) of its last silence

    def deliver(self, row: Outbox) -> outbox.Attempt | None:
        secret = self.secrets.get(row.recipient)
        if secret is None:  # removed from the settings since it was queued
            return None
        down = self._down.get(row.recipient)
        if down is not None and time.monotonic() - down[0] < DOWN_SECONDS:
            return outbox.Attempt(False, False, f"not tried: {down[1]}")
        body = row.payload.encode("utf-8")
        timestamp = str(int(self.clock().timestamp()))
        headers = {"Content-Type": "application/json", "X-Digest-Event": _event_type(row.payload),
                   "X-Digest-Timestamp": timestamp, "X-Digest-Signature": signature(secret, timestamp, body)}
        import httpx

        try:
            response = self.client().post(row.recipient, content=body, headers=headers)
        except httpx.HTTPError as exc:  # refused, reset, timed out, a TLS failure
            why = f"no answer from {row.recipient}: {type(exc).__name__}: {exc}"
            self._down[row.recipient] = (time.monotonic(), why)
            return outbox.Attempt(False, False, why)
        self._down.pop(row.recipient, None)
        code = response.status_code
        detail = f"HTTP {code} {response.reason_phrase}".rstrip()
        if 200 <= code < 300:
            return outbox.Attempt(True, False, detail)
        if 300 <= code < 400:
            where = response.headers.get("location")
            return outbox.Attempt(False, True, detail + (f" to {where}: set the webhook's url to it" if where else ""))
        return outbox.Attempt(False, code < 500 and code not in RETRIED_4XX, detail)

    def next_attempt(self, row: Outbox, now: datetime) -> datetime | None:
        deadline = as_utc(row.created_at) + RETRY_FOR
        if now >= deadline:
            return None
        return min(now + outbox.backoff(row.attempts), deadline)

    def client(self) -> httpx.Client:
        import httpx

        if self._client is None:
            # No redirects followed: a redirected POST is a misconfigured URL (failed, with the
            # new address in last_error).
            self._client = httpx.Client(timeout=TIMEOUT_SECONDS, follow_redirects=False,
                                        headers={"User-Agent": f"digest/{__version__} (webhook)"})
        return self._client


def couriers(hooks: Sequence[WebhookSettings], clock: Clock) -> dict[str, outbox.Courier]:
    """The outbox couriers: webhooks. There is one even with no webhook configured, so that the
    rows of a webhook removed from the settings are skipped rather than left pending."""
    return {KIND: Webhook(hooks, clock)}


def _event_type(payload: str) -> str:
    event_type: str = json.loads(payload).get("type", "")
    return event_type


def iso(at: datetime) -> str:
    """A time as the events write it: ISO 8601 UTC to the second, `2026-11-26T09:00:00Z`."""
    return as_utc(at).isoformat(timespec="seconds").replace("+00:00", "Z")
