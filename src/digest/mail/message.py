"""MessageTemplate: one rendered edition variant as MIME bytes, personalized per recipient cheaply.

The message (multipart/alternative: text part first, then HTML; UTF-8, quoted-printable) is
encoded once. Each part is kept as a list of pre-encoded static byte runs and placeholder slots;
for a recipient only the slot values are encoded (``binascii.b2a_qp``, in C) and joined in, so a
token can never be split or re-encoded by the quoted-printable line breaks.
"""

from __future__ import annotations

import binascii
import hashlib
import html
import re
import secrets
from collections.abc import Callable
from datetime import datetime
from email.header import Header
from email.utils import format_datetime, formataddr, parseaddr
from typing import NamedTuple

from digest.content.plaintext import NAME_LIMIT, clean, shorten
from digest.content.render import PLACEHOLDERS, Rendered
from digest.mail.dkim import DKIMSigner, canon_lines

_PLACEHOLDER_RE = re.compile("|".join(PLACEHOLDERS))
_QP_MAX = 76

Escape = Callable[[str], str]  # how a slot's value is written into its part (HTML-escaped or as is)
Slot = tuple[str, Escape]  # (recipient field, escape)


def encode_header_value(value: str) -> str:
    value = clean(value)  # one line: nothing can start a new header
    if value.isascii():
        return value
    return Header(value, "utf-8", maxlinelen=76).encode(linesep="\r\n")


_ONE_WORD_BYTES = 45  # a name this long in UTF-8 is one encoded word of at most 75 characters (RFC 2047)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9 !#$%&'*+/=?^_`{|}~-]+")  # an atom phrase: no quoting needed


def format_address(name: str | None, email: str) -> str:
    name = clean(name or "")
    email = clean(email)
    if not name:
        return email
    if _PLAIN_NAME.fullmatch(name):
        return f"{name} <{email}>"  # what formataddr gives for such a name, without its work
    if name.isascii() or len(name.encode("utf-8")) <= _ONE_WORD_BYTES:
        return formataddr((name, email), charset="utf-8")
    # formataddr makes one encoded word whatever the length: 1,070 characters for 200 emoji, past
    # SMTP's 998 a line ("500 Line too long"). Header folds it (but costs ~30 µs more a name).
    return Header(name, "utf-8", maxlinelen=76, header_name="To").encode(linesep="\r\n") + f" <{email}>"


def default_list_id(name: str, domain: str) -> str:
    """The List-Id header when newsletter.list_id is not set: "Name <slug.domain>"."""
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "digest"
    while "--" in slug:
        slug = slug.replace("--", "-")
    return f"{name} <{slug}.{domain}>"


class Recipient(NamedTuple):
    email: str
    name: str | None
    unsubscribe_url: str
    preferences_url: str
    message_id: str  # "<...@domain>"


class _Part:
    """A body part as alternating static bytes and slots (field name, escape function)."""

    __slots__ = ("pieces",)

    def __init__(self, text: str, escape: Escape) -> None:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        pieces: list[bytes | Slot] = []
        pos = 0
        for m in _PLACEHOLDER_RE.finditer(text):
            if m.start() > pos:
                pieces.append(_encode_static(text[pos : m.start()]))
            pieces.append((PLACEHOLDERS[m.group(0)], escape))
            pos = m.end()
        tail = text[pos:]
        if not tail.endswith("\n"):
            tail += "\n"
        pieces.append(_encode_static(tail))
        self.pieces = pieces


def _qp(data: str) -> bytes:
    return binascii.b2a_qp(data.encode("utf-8"), quotetabs=False, istext=True).replace(b"\n", b"\r\n")


def _encode_static(text: str) -> bytes:
    enc = _qp(text)
    if text.endswith("\n"):
        return enc
    # Ends mid-line: close the line with a soft break so the next slot starts a fresh line.
    head, _, last = enc.rpartition(b"\r\n")
    if len(last) > _QP_MAX - 1:
        cut = _QP_MAX - 4
        while b"=" in last[cut - 2 : cut]:  # never split an =XX escape
            cut -= 1
        last = last[:cut] + b"=\r\n" + last[cut:]
    return (head + b"\r\n" if head or enc.startswith(b"\r\n") else b"") + last + b"=\r\n"


def _encode_slot(value: str) -> bytes:
    # A slot always starts a line and ends with a soft break; b2a_qp keeps lines <= 76.
    # `value` is one line already (see _values).
    return _qp(value) + b"=\r\n"


def _stuff(run: bytes) -> bytes:
    """Dot-stuff whole lines (RFC 5321 4.5.2): a line that starts with '.' gets another."""
    if run[:1] == b".":
        run = b"." + run
    return run.replace(b"\r\n.", b"\r\n..") if b"\r\n." in run else run


def _identity(value: str) -> str:
    return value


def _html_escape(value: str) -> str:
    if "&" in value or "<" in value or ">" in value or '"' in value or "'" in value:
        return html.escape(value, quote=True)
    return value


class MessageTemplate:
    """A rendered edition variant, ready to send to any number of recipients (built once per
    variant; `wire_for` / `for_recipient` give one recipient's copy).

    The body is kept as one ``bytes`` format string (static runs, ``%%`` escaped, with a ``%b``
    per personal slot), so a recipient's copy is one C-level ``bytes % tuple``. With a DKIM
    ``signer`` every copy is signed; the canonical body and static headers are prepared once.
    """

    def __init__(
        self,
        rendered: Rendered,
        *,
        from_: str,
        list_id: str,
        date: datetime,
        reply_to: str | None = None,
        feedback_id: str | None = None,
        extra_headers: dict[str, str] | None = None,
        signer: DKIMSigner | None = None,
    ) -> None:
        self.subject = clean(rendered.subject)
        self.rendered = rendered
        boundary = "=_digest_" + secrets.token_hex(12)
        name, addr = parseaddr(from_)
        common = [
            ("From", format_address(name, addr)),
            ("Subject", encode_header_value(self.subject)),
            ("Date", format_datetime(date)),
            ("List-Id", clean(list_id)),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ("Precedence", "bulk"),
        ]
        if reply_to:
            common.append(("Reply-To", clean(reply_to)))
        if feedback_id:
            common.append(("Feedback-ID", clean(feedback_id)))
        for key, value in (extra_headers or {}).items():
            common.append((clean(key), encode_header_value(value)))
        common += [
            ("MIME-Version", "1.0"),
            ("Content-Type", f'multipart/alternative;\r\n boundary="{boundary}"'),
        ]
        self._common = "".join(f"{k}: {v}\r\n" for k, v in common).encode("ascii")
        part_head = (
            "--{b}\r\nContent-Type: text/{sub}; charset=\"utf-8\"\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        )
        # The body: text part, then HTML part. Each part ends with its own line break; the CRLF
        # before a delimiter belongs to the delimiter. Every run is made of whole lines.
        pieces: list[bytes | Slot] = [part_head.format(b=boundary, sub="plain").encode()]
        pieces += _Part(rendered.text, _identity).pieces
        pieces.append(("\r\n" + part_head.format(b=boundary, sub="html")).encode())
        pieces += _Part(rendered.html, _html_escape).pieces
        pieces.append(f"\r\n--{boundary}--\r\n".encode())
        self._slots: list[Slot] = []  # distinct (field, escape) pairs
        order: list[int] = []
        fmt: list[bytes] = []
        wire: list[bytes] = []
        canon: list[bytes] = []
        for piece in pieces:
            if isinstance(piece, bytes):
                fmt.append(piece.replace(b"%", b"%%"))
                wire.append(_stuff(piece).replace(b"%", b"%%"))
                canon.append(canon_lines(piece).replace(b"%", b"%%"))
            else:
                if piece not in self._slots:
                    self._slots.append(piece)
                order.append(self._slots.index(piece))
                fmt.append(b"%b")
                wire.append(b"%b")
                canon.append(b"%b")
        self._order = tuple(order)
        self._body = b"".join(fmt)
        self._wire_body = b"".join(wire) + b".\r\n"  # dot-stuffed, with the end-of-data line
        self._canon_body = b"".join(canon)
        self._canon_same = self._canon_body == self._body  # nothing for relaxed canonicalization to change
        self._signature = None
        if signer is not None:
            static = [(k, v.encode("ascii")) for k, v in common]
            personal = ("To", "Message-ID", "List-Unsubscribe")
            oversign = ("From", "To", "Subject", "Date", "Message-ID", "Reply-To",
                        "List-Unsubscribe", "List-Unsubscribe-Post")
            self._signature = signer.prepare(static, personal, oversign, int(date.timestamp()))

    @property
    def signed(self) -> bool:
        return self._signature is not None

    def for_recipient(self, r: Recipient) -> bytes:
        """The full message for one recipient: CRLF line endings, not dot-stuffed."""
        return self._build(r, False)

    def wire_for(self, r: Recipient) -> bytes:
        """The message as it follows SMTP DATA: CRLF line endings, dot-stuffed, ending with the
        ``.\\r\\n`` line (for ``Envelope(..., ready=True)``). Every run is stuffed once per variant,
        so a copy costs no scan of the whole message."""
        return self._build(r, True)

    def _build(self, r: Recipient, wire: bool) -> bytes:
        values = _values(r)
        seen: dict[str, bytes] = {}  # the same text in both parts is encoded once
        encoded = []
        for field, escape in self._slots:
            text = escape(values[field])
            enc = seen.get(text)
            if enc is None:
                enc = seen[text] = _encode_slot(text)
            encoded.append(enc)
        order = self._order
        slots = tuple([encoded[i] for i in order])
        if wire:
            stuffed = [_stuff(e) for e in encoded]
            body = self._wire_body % tuple([stuffed[i] for i in order])
        else:
            body = self._body % slots
        to = format_address(r.name, r.email).encode("utf-8")
        mid = clean(r.message_id).encode("ascii", "replace")
        unsub = b"<" + values["unsubscribe_url"].encode("utf-8") + b">"
        head = b"To: " + to + b"\r\nMessage-ID: " + mid + b"\r\nList-Unsubscribe: " + unsub + b"\r\n"
        if self._signature is None:
            return b"".join((head, self._common, b"\r\n", body))
        if self._canon_same and all(canon_lines(e) is e for e in encoded):
            canonical = body if not wire else self._body % slots
        else:
            canonical = self._canon_body % tuple([canon_lines(e) for e in slots])
        dkim = self._signature.sign((to, mid, unsub), hashlib.sha256(canonical).digest())
        return b"".join((dkim, head, self._common, b"\r\n", body))

    def parts_for(self, r: Recipient) -> tuple[str, str]:
        """(html, text) as the recipient sees them (for previews)."""
        values = _values(r)

        def fill(s: str, escape: Escape) -> str:
            return _PLACEHOLDER_RE.sub(lambda m: escape(values[PLACEHOLDERS[m.group(0)]]), s)

        return fill(self.rendered.html, _html_escape), fill(self.rendered.text, _identity)


def _values(r: Recipient) -> dict[str, str]:
    return {
        "unsubscribe_url": clean(r.unsubscribe_url),
        "preferences_url": clean(r.preferences_url),
        # Names are cleaned when stored; this covers rows stored before (and a name typed into
        # a database by hand): no bidi override reaches "Hi {name}".
        "name": shorten(clean(r.name or ""), NAME_LIMIT) or "there",
    }
