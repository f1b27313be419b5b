"""Service: bounce processing — read delivery status notifications, record them against the
delivery they name, and stop mailing dead addresses.

Each message is sent with a VERP envelope sender (``bounce+{token}@{bounce_domain}``, see
`verp.py`), so a bounce, which goes to the envelope sender, names its delivery. Failing that, the
returned message's Message-ID is matched exactly against the ledger. A message that is not a DSN
(RFC 3464, or qmail's QSBMF), or names no delivery of ours, is reported and left alone: never
guessed at. A DSN with several recipients is judged for the subscriber's address (`DSN.status_for`).

- hard bounce (the address does not exist, see `dsn.failure_kind`, the same rule as for a 5xx
  reply at send time): the delivery becomes failed with the DSN's status and diagnostic, and
  the subscriber `bounced`;
- soft bounce (any other failure: mailbox full, headers too large, refused by policy, gave up
  retrying): the delivery becomes failed; three deliveries in a row (by edition) that
  soft-bounced make the subscriber `suspended`;
- delayed / delivered / relayed notices change nothing.

Neither `bounced` nor `suspended` subscribers are mailed again until reactivated (`digest
subscribers add EMAIL`). Reading is idempotent: processing the same mailbox twice changes nothing
the second time, so it can run from cron over a mailbox that is never emptied.
"""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlmodel import Session, col

from digest.clock import Clock
from digest.delivery.webhooks import NO_EVENTS, Events
from digest.errors import DigestError
from digest.mail import dsn
from digest.mail.verp import VERP
from digest.store.models import Delivery, DeliveryStatus, Edition, Subscriber, SubscriberStatus, as_utc

# A bounce is recorded in the delivery's last_error with one of these prefixes.
PREFIX = {"hard": "bounced (hard): ", "soft": "bounced (soft): "}
SOFT_IN_A_ROW = 3
_RANK = dsn.RANK


@dataclass
class BounceReport:
    read: int = 0  # messages read
    hard: int = 0  # deliveries newly recorded as hard bounces
    soft: int = 0  # ... as soft bounces
    bounced: list[str] = field(default_factory=list)  # subscribers now `bounced`
    suspended: list[str] = field(default_factory=list)  # subscribers now `suspended`
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (message, why): delayed, already recorded
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (message, why): not a DSN, not ours


def read_messages(path: Path) -> Iterator[tuple[str, bytes]]:
    """(label, raw bytes) of every message at `path`: a Maildir (a directory with cur/ or new/),
    an mbox file, a single message file (.eml), or a directory of message files."""
    path = Path(path)
    if path.is_dir():
        if (path / "cur").is_dir() or (path / "new").is_dir():
            box = mailbox.Maildir(str(path), factory=None, create=False)
            for key in sorted(box.keys()):
                yield f"{path}/{key}", box.get_bytes(key)
            return
        for f in sorted(path.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                yield from read_messages(f)
        return
    if not path.is_file():
        raise DigestError(f"no such file or directory: {path}")
    try:
        with path.open("rb") as fh:
            head = fh.read(5)
    except OSError as exc:
        raise DigestError(f"cannot read {path}: {exc.strerror}") from None
    if head == b"From ":
        mbox = mailbox.mbox(str(path), factory=None, create=False)
        for i, key in enumerate(mbox.keys(), 1):
            yield f"{path}#{i}", mbox.get_bytes(key)
        return
    yield str(path), path.read_bytes()


def process(session: Session, verp: VERP, path: Path, clock: Clock, events: Events = NO_EVENTS) -> BounceReport:
    """Read every message at `path` and record the bounces among them. `verp` reads the bounce
    addresses our envelope senders were (the secret key and bounce domain they were made with).
    A subscriber who becomes `bounced` or `suspended` is reported as `subscriber.bounced`, in the
    transaction that records it."""
    report = BounceReport()
    for label, raw in read_messages(path):
        report.read += 1
        try:
            notice = dsn.parse(raw)
        except dsn.NotADSN as exc:
            report.unreadable.append((label, str(exc)))
            continue
        delivery = _find_delivery(session, verp, notice)
        if delivery is None:
            report.unreadable.append(
                (label, "names no delivery of ours (no valid bounce+ address, no known Message-ID)"))
            continue
        sub = session.get(Subscriber, delivery.subscriber_id) if delivery.subscriber_id is not None else None
        verdict = notice.status_for(sub.email if sub is not None else None)
        if verdict.kind is None:
            report.ignored.append((label, f"{verdict.action} ({verdict.status}): not a bounce"))
            continue
        _record(session, delivery, verdict, report, label, clock, events)
    session.commit()
    return report


def _find_delivery(session: Session, verp: VERP, notice: dsn.DSN) -> Delivery | None:
    for text in (*notice.addresses, *notice.original_headers):
        delivery_id = verp.read(text)
        if delivery_id is not None:
            found = session.get(Delivery, delivery_id)
            if found is not None:
                return found
    if notice.original_message_id:
        return session.execute(
            select(Delivery).where(col(Delivery.message_id) == notice.original_message_id)
        ).scalars().first()
    return None


def _record(session: Session, delivery: Delivery, status: dsn.RecipientStatus, report: BounceReport, label: str,
            clock: Clock, events: Events) -> None:
    kind = status.kind
    if kind is None:  # not a bounce: process() records bounces only
        return
    previous = _kind_of(delivery)
    if previous is not None and _RANK[previous] >= _RANK[kind]:
        report.ignored.append((label, f"{kind} bounce of delivery {delivery.id} already recorded"))
        return
    detail = " ".join(x for x in (status.status, status.diagnostic) if x)
    delivery.status = DeliveryStatus.failed
    delivery.last_error = (PREFIX[kind] + detail)[:2000]
    session.add(delivery)
    session.flush()
    if kind == "hard":
        report.hard += 1
    else:
        report.soft += 1
    sub = session.get(Subscriber, delivery.subscriber_id) if delivery.subscriber_id is not None else None
    if sub is None or sub.status not in (SubscriberStatus.active, SubscriberStatus.suspended):
        return
    if kind == "hard":
        sub.status = SubscriberStatus.bounced
        sub.bounced_at = as_utc(clock())
        report.bounced.append(sub.email)
    elif sub.status == SubscriberStatus.active and soft_bounces_in_a_row(session, sub) >= SOFT_IN_A_ROW:
        sub.status = SubscriberStatus.suspended
        sub.bounced_at = as_utc(clock())
        report.suspended.append(sub.email)
    else:
        return
    session.add(sub)
    data = events.subscriber_data(sub)
    data["bounce"] = {"kind": kind, "status": status.status, "diagnostic": status.diagnostic}
    events.emit(session, "subscriber.bounced", data)
    session.flush()


def _kind_of(delivery: Delivery) -> str | None:
    for kind, prefix in PREFIX.items():
        if (delivery.last_error or "").startswith(prefix) and delivery.status == DeliveryStatus.failed:
            return kind
    return None


def soft_bounces_in_a_row(session: Session, sub: Subscriber) -> int:
    """The longest run of consecutive editions (among those this subscriber was sent since they
    were last confirmed or reactivated) whose delivery soft-bounced. Bounces may arrive in any
    order; an edition that went out and has not bounced breaks the run."""
    stmt = (
        select(col(Delivery.status), col(Delivery.last_error))
        .join(Edition, col(Edition.id) == col(Delivery.edition_id))
        .where(col(Delivery.subscriber_id) == sub.id,
               col(Delivery.status).in_([DeliveryStatus.sent, DeliveryStatus.failed]))
        .order_by(col(Edition.number))
    )
    if sub.confirmed_at is not None:
        stmt = stmt.where(col(Edition.created_at) >= as_utc(sub.confirmed_at))
    run = best = 0
    for status, error in session.execute(stmt).all():
        if status == DeliveryStatus.failed and (error or "").startswith(PREFIX["soft"]):
            run += 1
            best = max(best, run)
        else:
            run = 0
    return best
