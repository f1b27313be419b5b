"""Delivery status notifications (RFC 3464) and SMTP status codes (RFC 3463): parsing and the
hard/soft classification. No database here; `bounces.py` acts on the results.

A DSN is ``multipart/report; report-type=delivery-status`` with a ``message/delivery-status``
part (one block of per-message fields, then one block per recipient: Final-Recipient, Action,
Status, Diagnostic-Code) and usually the returned message or its headers. Anything else — an
auto-reply, a bounce in free text — is `NotADSN`: reported, never guessed at.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass, field
from email.message import Message

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
# Where the receiving side writes the address a bounce was sent to (our VERP address).
ADDRESS_HEADERS = ("To", "Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "X-Delivered-To")

# Enhanced status codes that say the address itself does not exist (RFC 3463 / IANA registry):
# bad destination mailbox (5.1.1), bad destination system (5.1.2), bad mailbox syntax (5.1.3),
# mailbox moved (5.1.6), null MX (5.1.10).
NO_SUCH_ADDRESS = {"5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10"}


class NotADSN(Exception):
    """The message is not a delivery status notification this module can read."""


@dataclass(frozen=True)
class RecipientStatus:
    recipient: str | None  # Final-Recipient (else Original-Recipient), address only
    action: str  # failed | delayed | delivered | relayed | expanded
    status: str  # "5.1.1"
    diagnostic: str | None = None  # Diagnostic-Code, e.g. "smtp; 550 5.1.1 user unknown"

    @property
    def kind(self) -> str | None:
        return bounce_kind(self.action, self.status)


@dataclass(frozen=True)
class DSN:
    recipients: tuple[RecipientStatus, ...]
    addresses: tuple[str, ...] = ()  # what the bounce was addressed to (To, Delivered-To, ...)
    original_message_id: str | None = None  # Message-ID of the returned message, if included
    original_headers: tuple[str, ...] = field(default=())  # returned envelope-ish headers (Return-Path, ...)


def bounce_kind(action: str, status: str) -> str | None:
    """'hard', 'soft' or None (not a bounce: delayed, delivered, relayed, expanded).

    failed + 5.x.x is hard (the address is dead), except what says nothing about the address:
    5.2.2 mailbox full, 5.3.4 message too big, 5.4.x routing and time-outs (but 5.4.4 "unable to
    route": no such domain, hard), 5.7.x refused by policy (spam filter, blocklist) — those are
    soft, like every failed + 4.x.x (the remote server gave up after retrying)."""
    action = action.strip().lower()
    if action != "failed":
        return None
    cls, subject, detail = (status.split(".") + ["0", "0"])[:3]
    if cls == "5":
        if status in ("5.2.2", "5.3.4") or subject == "7" or (subject == "4" and status != "5.4.4"):
            return "soft"
        return "hard"
    return "soft"


def reply_status(code: int, text: str) -> str | None:
    """The enhanced status code at the start of an SMTP reply's text (RFC 2034), if any."""
    m = _REPLY_STATUS.match(text or "")
    if m and m.group(1) == str(code)[:1]:
        return ".".join(m.groups())
    return None


def address_does_not_exist(status: str | None) -> bool:
    return status in NO_SUCH_ADDRESS


def _addr(value: str | None) -> str | None:
    """'rfc822; Ann@Example.com' -> 'ann@example.com'."""
    if not value:
        return None
    value = str(value).strip()
    if ";" in value:
        value = value.split(";", 1)[1]
    value = value.strip().strip("<>").strip()
    return value.lower() or None


def _fields_blocks(part: Message) -> list[Message]:
    """The field blocks of a message/delivery-status part, however it was transferred."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and all(isinstance(p, Message) for p in payload):
        return payload
    raw = part.get_payload(decode=True) or b""
    text = raw.decode("utf-8", "replace").replace("\r\n", "\n")
    return [email.message_from_string(block + "\n") for block in re.split(r"\n[ \t]*\n", text.strip()) if block.strip()]


def parse(raw: bytes) -> DSN:
    """Read one message; NotADSN (with the reason) when it is not a readable DSN."""
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    except Exception as exc:  # the email package raises little, but a broken file is still no DSN
        raise NotADSN(f"unreadable message: {exc}") from None
    if msg.get_content_type() != "multipart/report":
        raise NotADSN(f"not a delivery status notification (Content-Type {msg.get_content_type()})")
    report_type = (msg.get_param("report-type") or "").lower()
    if report_type != "delivery-status":
        raise NotADSN(f"a multipart/report of type {report_type or '(none)'!r}, not delivery-status")
    status_part = None
    original_id = None
    returned: list[str] = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/delivery-status", "message/global-delivery-status") and status_part is None:
            status_part = part
        elif ctype == "message/rfc822" and original_id is None:
            inner = part.get_payload()
            inner = inner[0] if isinstance(inner, list) and inner else inner
            if isinstance(inner, Message):
                original_id = inner.get("Message-ID")
                returned += [str(v) for v in inner.get_all("Return-Path", [])]
        elif ctype == "text/rfc822-headers" and original_id is None:
            body = part.get_payload(decode=True) or b""
            headers = email.message_from_bytes(body.lstrip(b"\r\n"))
            original_id = headers.get("Message-ID")
            returned += [str(v) for v in headers.get_all("Return-Path", [])]
    if status_part is None:
        raise NotADSN("multipart/report without a message/delivery-status part")
    blocks = _fields_blocks(status_part)
    recipients = []
    for block in blocks[1:] if len(blocks) > 1 else blocks:
        action = block.get("Action")
        status = block.get("Status")
        if not action or not status:
            continue
        m = _STATUS.search(str(status))
        if not m:
            continue
        recipients.append(
            RecipientStatus(
                recipient=_addr(block.get("Final-Recipient")) or _addr(block.get("Original-Recipient")),
                action=str(action).strip().lower(),
                status=".".join(m.groups()),
                diagnostic=" ".join(str(block.get("Diagnostic-Code", "")).split()) or None,
            )
        )
    if not recipients:
        raise NotADSN("delivery-status part has no recipient with an Action and a Status")
    addresses = tuple(str(v) for name in ADDRESS_HEADERS for v in msg.get_all(name, []))
    return DSN(
        recipients=tuple(recipients),
        addresses=addresses,
        original_message_id=" ".join(str(original_id).split()) if original_id else None,
        original_headers=tuple(returned),
    )
