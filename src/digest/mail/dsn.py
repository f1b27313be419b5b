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
import email.utils
import re
from dataclasses import dataclass, field
from email.message import Message

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
# An enhanced code inside a diagnostic or a free-text reason: right after the SMTP reply code
# ("550 5.1.1", "550-5.1.1") or qmail's "(#5.1.1)" — not any x.y.z, which an IP address has too.
_QUOTED_STATUS = re.compile(r"(?:\b[245]\d\d[ -]|\(#)([245]\.\d{1,3}\.\d{1,3})\b")
# Where the receiving side writes the address a bounce was sent to (our VERP address).
ADDRESS_HEADERS = ("To", "Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "X-Delivered-To")

# Enhanced status codes that say the address itself does not exist (RFC 3463 / IANA registry):
# bad destination mailbox (5.1.1), bad destination system (5.1.2), bad mailbox syntax (5.1.3),
# mailbox moved (5.1.6), null MX (5.1.10, RFC 7505).
NO_SUCH_ADDRESS = {"5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10"}
# A generic 5.0.0 ("other undefined status"), or a 5xx reply without an enhanced code, says
# nothing by its code: then the words decide. These say the mailbox does not exist...
_NO_SUCH_MAILBOX = re.compile(
    r"user unknown|unknown (?:user|recipient|mailbox|local[ -]part)|recipient unknown|mailbox unknown"
    r"|no such (?:user|mailbox|recipient|address|account)|no mailbox here by that name"
    r"|(?:mailbox|recipient|user|address|account) (?:was )?not found|recip(?:ient)?notfound"
    r"|invalid (?:recipient|mailbox)"
    r"|(?:mailbox|recipient|user|address|account)\b[^.;:()]{0,40}\b(?:does not|doesn't|do not) exist",
    re.IGNORECASE,
)
# ...and these that, whatever else the text says, the address is alive (full, too much, refused
# for the sender's or the message's sake): any of them makes it soft.
_NOT_THE_ADDRESS = re.compile(
    r"quota|\bfull\b|storage|\bspace\b|sender|spam|policy|blocked|block ?list|too (?:large|big|many)|\bsize\b",
    re.IGNORECASE,
)
_ADDRESS = re.compile(r"\S+@\S+")


class NotADSN(Exception):
    """The message is not a delivery status notification this module can read."""


@dataclass(frozen=True)
class RecipientStatus:
    recipient: str | None  # Final-Recipient (else Original-Recipient), address only
    action: str  # failed | delayed | delivered | relayed | expanded
    status: str  # "5.1.1"
    diagnostic: str | None = None  # Diagnostic-Code, e.g. "smtp; 550 5.1.1 user unknown", and the fields' comments
    original_recipient: str | None = None  # Original-Recipient, address only

    @property
    def kind(self) -> str | None:
        return bounce_kind(self.action, self.status, self.diagnostic)

    def names(self, address: str) -> bool:
        address = address.lower()
        return address in (self.recipient, self.original_recipient)


@dataclass(frozen=True)
class DSN:
    recipients: tuple[RecipientStatus, ...]
    addresses: tuple[str, ...] = ()  # what the bounce was addressed to (To, Delivered-To, ...)
    original_message_id: str | None = None  # Message-ID of the returned message, if included
    original_headers: tuple[str, ...] = field(default=())  # returned envelope-ish headers (Return-Path, ...)

    def status_for(self, address: str | None) -> RecipientStatus:
        """The recipient block that decides for the delivery to `address`.

        Our messages go out one recipient per envelope, so a DSN about one of them normally has one
        block, and it decides even when its Final-Recipient is a rewritten form of the address (a
        mail store's internal name). With several blocks, those naming `address` (Final- or
        Original-Recipient) decide, the worst of them; when none does, the message was expanded
        (an alias, a list) and the mildest decides: the address is dead only if every
        destination behind it is, and not a bounce at all if any was delayed or delivered."""
        named = [r for r in self.recipients if address and r.names(address)]
        if named:
            return max(named, key=lambda r: RANK[r.kind])
        return min(self.recipients, key=lambda r: RANK[r.kind])


RANK = {"hard": 2, "soft": 1, None: 0}  # how bad an outcome is


def failure_kind(status: str | None, diagnostic: str | None) -> str:
    """'hard' (the address is dead) or 'soft' (anything else) for a delivery that failed, from its
    enhanced status code (RFC 3463; None: a 5xx reply without one) and the diagnostic text.

    The one rule for both a bounce (a DSN, `bounce_kind`) and a 5xx reply at send time
    (`delivery/sender.py`). Hard: 5.1.1 bad mailbox, 5.1.2 bad domain, 5.1.3 bad syntax, 5.1.6 moved,
    5.1.10 null MX — or a generic 5.0.0 / no code whose text says the mailbox does not exist
    ("user unknown", "no such user", ...) and says nothing of quota, size, sender or policy.
    Everything else is soft: 4.x.x (given up after retrying), 5.2.x full or disabled, 5.6.0
    headers too large, 5.1.8 *our* sender's domain, 5.7.x policy, 5.4.x routing. A live reader
    marked `bounced` is lost for good, an address wrongly soft is only suspended after three
    editions, so what is not clearly dead is soft."""
    if status is None or status == "5.0.0":
        # the remote server's own, more precise code, as quoted in the diagnostic
        status = next((c for c in _QUOTED_STATUS.findall(diagnostic or "") if c != "5.0.0"), status)
    if status in NO_SUCH_ADDRESS:
        return "hard"
    if status is None or status == "5.0.0":
        text = _ADDRESS.sub(" ", diagnostic or "")  # "ann@space.example" says nothing of space
        if _NO_SUCH_MAILBOX.search(text) and not _NOT_THE_ADDRESS.search(text):
            return "hard"
    return "soft"


def bounce_kind(action: str, status: str, diagnostic: str | None = None) -> str | None:
    """'hard', 'soft' (see `failure_kind`) or None (not a bounce: delayed, delivered, relayed,
    expanded)."""
    if action.strip().lower() != "failed":
        return None
    if not status.startswith("5."):
        return "soft"  # the remote server gave up on a temporary failure
    return failure_kind(status, diagnostic)


def reply_status(code: int, text: str) -> str | None:
    """The enhanced status code at the start of an SMTP reply's text (RFC 2034), if any."""
    m = _REPLY_STATUS.match(text or "")
    if m and m.group(1) == str(code)[:1]:
        return ".".join(m.groups())
    return None


def _addr(value: str | None) -> str | None:
    """'rfc822; Ann@Example.com' -> 'ann@example.com'."""
    if not value:
        return None
    value = str(value).strip()
    if ";" in value:
        value = value.split(";", 1)[1]
    value = value.strip().strip("<>").strip()
    return value.lower() or None


def _action(value: str | None) -> tuple[str | None, str]:
    """'failed (Bad destination mailbox address)' -> ('failed', 'Bad destination mailbox address').
    RFC 3464 has the action word alone, but mail systems in the wild add a comment after it
    (and capitalize it): the first word is the action."""
    m = re.match(r"\s*([A-Za-z]+)", str(value or ""))
    if not m:
        return None, ""
    return m.group(1).lower(), _comment(str(value)[m.end():])


def _comment(rest: str) -> str:
    """What follows a field's value: '(recipient reached disk quota)' -> 'recipient reached disk quota'."""
    return " ".join(rest.split()).strip("() ")


def _fields_blocks(part: Message) -> list[Message]:
    """The field blocks of a message/delivery-status part, however it was transferred."""
    payload = part.get_payload()
    if isinstance(payload, list):
        blocks = [p for p in payload if isinstance(p, Message)]
        if blocks and len(blocks) == len(payload):
            return blocks
    raw = part.get_payload(decode=True)
    text = raw.decode("utf-8", "replace").replace("\r\n", "\n") if isinstance(raw, bytes) else ""
    return [email.message_from_string(block + "\n") for block in re.split(r"\n[ \t]*\n", text.strip()) if block.strip()]


def parse(raw: bytes) -> DSN:
    """Read one message; NotADSN (with the reason) when it is not a readable DSN."""
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    except Exception as exc:  # noqa: BLE001 - the email package raises little, but a broken file is still no DSN
        raise NotADSN(f"unreadable message: {exc}") from None
    if msg.get_content_type() == "text/plain" and _body(msg).startswith(QSBMF_START):
        return _parse_qsbmf(msg)
    if msg.get_content_type() != "multipart/report":
        raise NotADSN(f"not a delivery status notification (Content-Type {msg.get_content_type()})")
    param = msg.get_param("report-type")  # a (charset, language, value) triple when RFC 2231-encoded
    report_type = email.utils.collapse_rfc2231_value(param).lower() if param else ""
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
            body = part.get_payload(decode=True)
            headers = email.message_from_bytes(body.lstrip(b"\r\n") if isinstance(body, bytes) else b"")
            original_id = headers.get("Message-ID")
            returned += [str(v) for v in headers.get_all("Return-Path", [])]
    if status_part is None:
        raise NotADSN("multipart/report without a message/delivery-status part")
    blocks = _fields_blocks(status_part)
    recipients = []
    for block in blocks[1:] if len(blocks) > 1 else blocks:
        action, action_comment = _action(block.get("Action"))
        m = _STATUS.search(str(block.get("Status") or ""))
        if not action or not m:
            continue
        status_comment = _comment(str(block.get("Status"))[m.end():])
        diagnostic = " ".join(str(block.get("Diagnostic-Code", "")).split())
        recipients.append(
            RecipientStatus(
                recipient=_addr(block.get("Final-Recipient")) or _addr(block.get("Original-Recipient")),
                action=action,
                status=".".join(m.groups()),
                diagnostic=" ".join(x for x in (diagnostic, status_comment, action_comment) if x) or None,
                original_recipient=_addr(block.get("Original-Recipient")),
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


# qmail does not send RFC 3464 DSNs but its own documented format, QSBMF (D. J. Bernstein, "The
# qmail-send Bounce Message Format", 1997): a text/plain body beginning with these words, then
# paragraphs (lines up to a blank line): the introduction, one per failed recipient starting
# with "<address>:" followed by the reason, a break paragraph starting with "-", and the
# returned message. Every recipient paragraph is a failure qmail has given up on; its reason may
# end with an enhanced status code, "(#5.1.1)".
QSBMF_START = "Hi. This is the"
_QSBMF_CODE = re.compile(r"\(#([245]\.\d{1,3}\.\d{1,3})\)")


def _body(msg: Message) -> str:
    payload = msg.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    return payload.decode(msg.get_content_charset() or "utf-8", "replace").replace("\r\n", "\n").lstrip("\n")


def _parse_qsbmf(msg: Message) -> DSN:
    lines = _body(msg).split("\n")
    paragraphs: list[list[str]] = []
    current: list[str] = []
    returned_from = len(lines)
    for i, line in enumerate(lines):
        if line.strip():
            current.append(line)
            continue
        if current and current[0].startswith("-"):  # the break paragraph: the returned message follows
            returned_from = i + 1
            current = []
            break
        if current:
            paragraphs.append(current)
            current = []
    if current and not current[0].startswith("-"):
        paragraphs.append(current)
    recipients = []
    for paragraph in paragraphs[1:]:
        m = re.match(r"<([^<>]*)>:(.*)", paragraph[0])
        if not m:
            continue
        reason = " ".join(" ".join([m.group(2), *paragraph[1:]]).split())
        code = _QSBMF_CODE.search(reason)
        recipients.append(
            RecipientStatus(
                recipient=_addr(m.group(1)),
                action="failed",
                # no code: a permanent failure with nothing more said (`failure_kind` reads the reason)
                status=code.group(1) if code else "5.0.0",
                diagnostic=reason or None,
            )
        )
    if not recipients:
        raise NotADSN("a qmail bounce (QSBMF) without a recipient paragraph")
    returned = email.message_from_string("\n".join(lines[returned_from:]).lstrip("\n"))
    original_id = returned.get("Message-ID")
    return DSN(
        recipients=tuple(recipients),
        addresses=tuple(str(v) for name in ADDRESS_HEADERS for v in msg.get_all(name, [])),
        original_message_id=" ".join(str(original_id).split()) if original_id else None,
        original_headers=tuple(str(v) for v in returned.get_all("Return-Path", [])),
    )
