"""A small, fast SMTP client for sending many pre-rendered messages over one connection.

Standard library only.  Compared with :mod:`smtplib` it

* pipelines MAIL FROM / RCPT TO / DATA (RFC 2920) when the server offers PIPELINING, and sends the
  previous message's content together with the next envelope's commands in one write, so a message
  costs one round trip instead of four;
* dot-stuffs with ``bytes.replace`` on CRLF-normalised data instead of a regex;
* never calls ``socket.getfqdn()`` (the EHLO name is ``local_hostname``, default ``"localhost"``);
* reports every envelope it was given exactly once, in order, even when the connection drops
  (``Reply(0, ...)``, a temporary failure the caller can retry after :meth:`SMTPConnection.reconnect`).

Typical use::

    with SMTPConnection("smtp.example.org", 587, security="starttls",
                        username="u", password="p") as conn:
        for envelope, reply in conn.send(envelopes):
            if reply.ok: ...            # accepted by the server
            elif reply.temporary: ...   # retry later (4xx, or connection lost: code 0)
            else: ...                   # permanent failure (5xx)

Pipelining depth: RFC 2920 forbids sending message content before the server's 354 reply to DATA
(otherwise a refused DATA would make the server read the message as commands), so at most one
message's content plus the next envelope's command group is unacknowledged at any moment.  Memory
use is therefore flat, bounded by one message.
"""

from __future__ import annotations

import base64
import contextlib
import io
import re
import socket
import ssl
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "Reply",
    "Envelope",
    "SMTPClientError",
    "SMTPConnectError",
    "SMTPAuthError",
    "SMTPConnection",
    "dot_stuff",
]

CRLF = b"\r\n"
_MAXLINE = 8192  # longest reply line accepted (RFC 5321 says 512; be generous)
_SECURITY_MODES = ("none", "starttls", "tls")
_FORBIDDEN_ADDR_CHARS = re.compile(r"[\x00-\x1f\x7f<>]")
_EOL = re.compile(rb"\r\n|\r|\n")


# --------------------------------------------------------------------------------------------
# Value types
# --------------------------------------------------------------------------------------------


class Reply(NamedTuple):
    """One SMTP reply.  ``code`` 0 means no reply: the connection was lost or never used.
    (A named tuple: immutable, and four are made per message, so cheap to make.)"""

    code: int
    text: str

    @property
    def ok(self) -> bool:
        """Positive completion or intermediate reply (2xx/3xx)."""
        return 200 <= self.code < 400

    @property
    def temporary(self) -> bool:
        """Transient failure: 4xx (421 included) or code 0 (connection lost); worth retrying."""
        return self.code == 0 or 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        """Permanent failure (5xx): do not retry."""
        return 500 <= self.code < 600

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


def _check_address(kind: str, address: str) -> None:
    if not isinstance(address, str):
        raise TypeError(f"{kind} must be str, not {type(address).__name__}")
    if _FORBIDDEN_ADDR_CHARS.search(address):
        raise ValueError(f"{kind} address contains a forbidden character (CR, LF, control, '<' or '>'): {address!r}")


@dataclass(frozen=True)
class Envelope:
    """One message for one recipient.

    ``data`` is the full RFC 5322 message (headers + body), lines ending CRLF, *not* dot-stuffed,
    without the final ``.\\r\\n``.  Bare LF / bare CR line endings are tolerated and normalised to CRLF.
    Addresses containing CR, LF, other control characters, ``<`` or ``>`` raise ``ValueError``.
    ``tag`` is the caller's: carried along untouched (not compared), to pair results with work items.

    ``ready=True`` says ``data`` is already exactly what follows DATA: CRLF line endings only,
    dot-stuffed, and ending with the ``.\\r\\n`` line. It is sent as it is, saving two scans of
    the message; only for bytes built that way (``MessageTemplate.wire_for``), never for outside input.
    """

    sender: str
    recipient: str
    data: bytes
    tag: object = field(default=None, compare=False, repr=False)
    ready: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_address("sender", self.sender)
        _check_address("recipient", self.recipient)
        if not self.recipient:
            raise ValueError("recipient address must not be empty")
        if not isinstance(self.data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, not {type(self.data).__name__}")


class SMTPClientError(Exception):
    """Base class of this module's errors."""


class SMTPConnectError(SMTPClientError):
    """The server could not be reached, or refused the session (greeting, EHLO/HELO, STARTTLS)."""


class SMTPAuthError(SMTPClientError):
    """Authentication failed or is impossible (no common mechanism)."""

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class _ConnectionLost(Exception):
    """Internal: the connection is unusable; ``reason`` describes why."""

    def __init__(self, reason: str, reply: Reply | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply  # the 421 reply, when the server announced the close


# --------------------------------------------------------------------------------------------
# Message encoding
# --------------------------------------------------------------------------------------------


def dot_stuff(data: bytes) -> bytes:
    """Return ``data`` ready to follow DATA: CRLF line endings, dot-stuffed, terminated by ``.\\r\\n``.

    Fast path (data already uses CRLF only): two C-level splits and joins, no regex.
    Bare LF and bare CR are normalised to CRLF first; this also defeats "SMTP smuggling"
    (``\\n.\\r\\n`` / ``\\r.\\r\\n`` sequences that some servers take as end of data).
    """
    data = bytes(data)
    # Multi-byte scans are the cost here (memchr-based single-byte membership tests are ~20x cheaper):
    # one split on CRLF tells whether any bare CR/LF is left, one split/join does the stuffing.
    rest = b"".join(data.split(CRLF))
    if b"\n" in rest or b"\r" in rest:
        data = _EOL.sub(CRLF, data)
    if not data:
        return b".\r\n"
    if data[:1] == b".":
        data = b"." + data
    data = b"\r\n..".join(data.split(b"\r\n."))
    if data[-2:] == CRLF:
        return data + b".\r\n"
    return data + b"\r\n.\r\n"


def _encode_address(address: str, utf8_ok: bool) -> bytes | None:
    try:
        return address.encode("ascii")
    except UnicodeEncodeError:
        return address.encode("utf-8") if utf8_ok else None


# --------------------------------------------------------------------------------------------
# Connection
# --------------------------------------------------------------------------------------------


class SMTPConnection:
    """One SMTP session, reused for many messages.  Not thread-safe."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: str = "none",  # "none" | "starttls" | "tls"
        username: str | None = None,
        password: str | None = None,
        timeout: float = 20.0,
        local_hostname: str = "localhost",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if security not in _SECURITY_MODES:
            raise ValueError(f"security must be one of {_SECURITY_MODES}, not {security!r}")
        if (username is None) != (password is None):
            raise ValueError("username and password must be given together")
        if not local_hostname or any(c in local_hostname for c in " \r\n\t"):
            raise ValueError(f"invalid local_hostname: {local_hostname!r}")
        self.host = host
        self.port = port
        self.security = security
        self.username = username
        self.password = password
        self.timeout = timeout
        self.local_hostname = local_hostname
        self.ssl_context = ssl_context
        self._sock: socket.socket | None = None
        self._rfile: io.BufferedReader | None = None
        self._ehlo_name = local_hostname.encode("idna") if not local_hostname.isascii() else local_hostname.encode()
        self.extensions: dict[str, str] = {}  # EHLO keywords (upper case) -> parameters
        self.esmtp = False
        self.greeting: Reply | None = None
        self._need_rset = False
        self._sending = False

    # ---------------------------------------------------------------- properties

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._sock is not None

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.extensions

    @property
    def eightbitmime(self) -> bool:
        return "8BITMIME" in self.extensions

    @property
    def smtputf8(self) -> bool:
        return "SMTPUTF8" in self.extensions

    @property
    def auth_mechanisms(self) -> set[str]:
        mechs = self.extensions.get("AUTH", "")
        return {m.upper() for m in mechs.split()}

    # ---------------------------------------------------------------- context manager

    def __enter__(self) -> SMTPConnection:
        if not self.connected:
            self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed"
        return f"<SMTPConnection {self.address} security={self.security} {state}>"

    # ---------------------------------------------------------------- low level I/O

    def _fail(self, what: str) -> SMTPConnectError:
        return SMTPConnectError(f"SMTP server {self.address}: {what}")

    def _sendall(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            raise _ConnectionLost("connection is closed")
        try:
            sock.sendall(data)
        except (OSError, ValueError) as exc:  # ValueError: I/O on a closed file/socket
            raise _ConnectionLost(f"connection lost while sending: {_describe(exc)}") from exc

    def _read_reply(self) -> Reply:
        """Read one (possibly multi-line) reply.  Raises _ConnectionLost on EOF, timeout or garbage."""
        rfile = self._rfile
        if rfile is None:
            raise _ConnectionLost("connection is closed")
        lines: list[str] = []
        while True:
            try:
                line = rfile.readline(_MAXLINE + 1)
            except (OSError, ValueError) as exc:
                raise _ConnectionLost(f"connection lost while reading reply: {_describe(exc)}") from exc
            if not line:
                raise _ConnectionLost("connection closed by server")
            if len(line) > _MAXLINE:
                raise _ConnectionLost("protocol error: reply line too long")
            code_b = line[:3]
            if len(line) < 3 or not code_b.isdigit():
                raise _ConnectionLost(f"protocol error: malformed reply {line[:80]!r}")
            text = line[4:].rstrip(b"\r\n").decode("utf-8", "replace")
            if line[3:4] != b"-":
                if not lines:  # the common case: a one-line reply
                    return Reply(int(code_b), text)
                lines.append(text)
                return Reply(int(code_b), "\n".join(lines))
            lines.append(text)

    def _command(self, line: bytes) -> Reply:
        self._sendall(line + CRLF)
        return self._read_reply()

    def _drop(self) -> None:
        """Close the socket without QUIT (connection is broken or in an unknown state)."""
        rfile, sock = self._rfile, self._sock
        self._rfile = self._sock = None
        self._need_rset = False
        for obj in (rfile, sock):
            if obj is not None:
                with contextlib.suppress(OSError):
                    obj.close()

    # ---------------------------------------------------------------- session setup

    def connect(self) -> None:
        """Connect, read the greeting, EHLO (HELO fallback), STARTTLS if asked, AUTH if credentials."""
        if self._sock is not None:
            raise SMTPClientError(f"already connected to {self.address}")
        self.extensions = {}
        self.esmtp = False
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise SMTPConnectError(f"cannot connect to SMTP server {self.address}: {_describe(exc)}") from exc
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if self.security == "tls":
                sock = self._context().wrap_socket(sock, server_hostname=self.host)
            self._sock = sock
            self._rfile = sock.makefile("rb")
            self._handshake()
        except SMTPClientError:
            self._drop()
            raise
        except _ConnectionLost as exc:
            self._drop()
            raise self._fail(exc.reason) from None
        except (OSError, ssl.SSLError) as exc:
            self._drop()
            sock.close()
            raise SMTPConnectError(f"cannot connect to SMTP server {self.address}: {_describe(exc)}") from exc

    def reconnect(self) -> None:
        """Close (politely if possible) and connect again."""
        self.close()
        self.connect()

    def _context(self) -> ssl.SSLContext:
        if self.ssl_context is None:
            self.ssl_context = ssl.create_default_context()
        return self.ssl_context

    def _handshake(self) -> None:
        greeting = self._read_reply()
        self.greeting = greeting
        if greeting.code != 220:
            raise self._fail(f"greeting refused: {greeting}")
        self._hello()
        if self.security == "starttls":
            if "STARTTLS" not in self.extensions:
                raise self._fail("STARTTLS requested but not offered by the server")
            reply = self._command(b"STARTTLS")
            if reply.code != 220:
                raise self._fail(f"STARTTLS refused: {reply}")
            # Discard anything buffered after the 220 (plaintext injection defence), then wrap.
            assert self._rfile is not None and self._sock is not None
            self._rfile.close()
            self._rfile = None
            tls_sock = self._context().wrap_socket(self._sock, server_hostname=self.host)
            self._sock = tls_sock
            self._rfile = tls_sock.makefile("rb")
            self.extensions = {}
            self._hello()
        if self.username is not None:
            self._authenticate()

    def _hello(self) -> None:
        reply = self._command(b"EHLO " + self._ehlo_name)
        if reply.code == 250:
            self.esmtp = True
            self.extensions = _parse_ehlo(reply.text)
            return
        if reply.code == 421:
            raise self._fail(f"EHLO refused: {reply}")
        reply = self._command(b"HELO " + self._ehlo_name)
        if reply.code != 250:
            raise self._fail(f"HELO refused: {reply}")
        self.esmtp = False
        self.extensions = {}

    def _authenticate(self) -> None:
        assert self.username is not None and self.password is not None
        mechs = self.auth_mechanisms
        user = self.username.encode("utf-8")
        pwd = self.password.encode("utf-8")
        try:
            if "PLAIN" in mechs:
                token = base64.b64encode(b"\0" + user + b"\0" + pwd)
                reply = self._command(b"AUTH PLAIN " + token)
            elif "LOGIN" in mechs:
                reply = self._command(b"AUTH LOGIN")
                if reply.code == 334:
                    reply = self._command(base64.b64encode(user))
                if reply.code == 334:
                    reply = self._command(base64.b64encode(pwd))
            else:
                offered = " ".join(sorted(mechs)) or "none"
                raise SMTPAuthError(
                    f"SMTP server {self.address} offers no usable AUTH mechanism (offered: {offered})"
                )
        except _ConnectionLost as exc:
            raise SMTPAuthError(f"SMTP server {self.address}: {exc.reason} during AUTH") from None
        if reply.code != 235:
            raise SMTPAuthError(f"SMTP server {self.address} refused authentication: {reply}", reply)

    # ---------------------------------------------------------------- simple commands

    def _require_connected(self) -> None:
        if self._sock is None:
            raise SMTPClientError(f"not connected to {self.address}")
        if self._sending:
            raise SMTPClientError("a send() is in progress on this connection")

    def noop(self) -> Reply:
        """NOOP.  Returns ``Reply(0, ...)`` (and marks the connection closed) if the connection is dead."""
        self._require_connected()
        try:
            reply = self._command(b"NOOP")
        except _ConnectionLost as exc:
            self._drop()
            return Reply(0, exc.reason)
        if reply.code == 421:
            self._drop()
        return reply

    def reset(self) -> None:
        """RSET: abandon any open mail transaction.  Raises SMTPClientError on failure."""
        self._require_connected()
        try:
            reply = self._command(b"RSET")
        except _ConnectionLost as exc:
            self._drop()
            raise SMTPClientError(f"SMTP server {self.address}: {exc.reason}") from None
        if reply.code == 421:
            self._drop()
        if reply.code != 250:
            raise SMTPClientError(f"SMTP server {self.address}: RSET failed: {reply}")
        self._need_rset = False

    def close(self) -> None:
        """QUIT (errors ignored) and close the socket.  Safe to call more than once."""
        if self._sock is None:
            return
        try:
            self._sock.settimeout(min(self.timeout, 5.0))
            self._command(b"QUIT")
        except (_ConnectionLost, OSError):
            pass
        finally:
            self._drop()

    # ---------------------------------------------------------------- sending

    def _transaction(self, env: Envelope) -> tuple[bytes, bytes] | Reply:
        """Encode MAIL/RCPT/DATA and the payload, or return a local failure Reply."""
        utf8 = self.smtputf8
        sender = _encode_address(env.sender, utf8)
        rcpt = _encode_address(env.recipient, utf8)
        if sender is None or rcpt is None:
            return Reply(553, "5.6.7 non-ASCII address and the server does not offer SMTPUTF8 (not sent)")
        payload = env.data if env.ready else dot_stuff(env.data)
        params = b""
        if self.esmtp:
            if "SIZE" in self.extensions:
                params += b" SIZE=%d" % len(payload)
            if self.eightbitmime and not payload.isascii():
                params += b" BODY=8BITMIME"
            if utf8 and not (sender.isascii() and rcpt.isascii()):
                params += b" SMTPUTF8"
        commands = b"MAIL FROM:<" + sender + b">" + params + b"\r\nRCPT TO:<" + rcpt + b">\r\nDATA\r\n"
        return commands, payload

    def send(self, envelopes: Iterable[Envelope]) -> Generator[tuple[Envelope, Reply], None, None]:
        """Send envelopes; yield ``(envelope, final_reply)`` for each one, in order, as soon as known.

        The final reply is the MAIL failure, the RCPT failure, the DATA failure, or the reply to the
        end-of-data dot.  Every envelope taken from ``envelopes`` is yielded exactly once.  If the
        connection is lost (or the server sends 421), the envelope that got the 421 gets it, the other
        envelopes in flight get ``Reply(0, reason)``, the connection is marked closed, and *the rest of
        the iterable is also yielded* with ``Reply(0, "not sent: ...")``: stop iterating at the first
        code-0 reply if you would rather not drain it, then :meth:`reconnect` and resend.

        With PIPELINING, the next envelope is taken from ``envelopes`` (and dot-stuffed) while the
        server processes the current one, so the input is read at most two envelopes ahead of the
        last result yielded.  An exception raised by the input iterator is re-raised only after the
        messages already in flight have been finished and yielded.  Abandoning the iterator while a
        transaction is open closes the connection (the server discards an unfinished transaction);
        envelopes already yielded are unaffected.
        """
        self._require_connected()
        if self.pipelining:
            return self._send_pipelined(iter(envelopes))
        return self._send_lockstep(iter(envelopes))

    def _drain(self, it: Iterator[Envelope], reason: str) -> Iterator[tuple[Envelope, Reply]]:
        reply = Reply(0, f"not sent: {reason}")
        for env in it:
            yield env, reply

    def _lost(
        self, exc: _ConnectionLost, pending: deque[Envelope], it: Iterator[Envelope]
    ) -> Iterator[tuple[Envelope, Reply]]:
        """Report every pulled-but-unreported envelope, then the rest of the input, as temporary."""
        self._drop()
        first = True
        while pending:
            env = pending.popleft()
            yield env, (exc.reply if first and exc.reply is not None else Reply(0, exc.reason))
            first = False
        yield from self._drain(it, exc.reason)

    def _reply(self) -> Reply:
        """Read a reply during a transaction; 421 means the server is closing the connection."""
        reply = self._read_reply()
        if reply.code == 421:
            raise _ConnectionLost(f"server closed the connection: {reply}", reply)
        return reply

    def _send_lockstep(self, it: Iterator[Envelope]) -> Generator[tuple[Envelope, Reply], None, None]:
        self._sending = True
        pending: deque[Envelope] = deque()  # pulled from `it`, not yet reported
        busy = False  # a transaction is open on the wire
        try:
            for env in it:
                pending.append(env)
                prepared = self._transaction(env)
                if isinstance(prepared, Reply):
                    yield pending.popleft(), prepared
                    continue
                commands, payload = prepared
                mail, rcpt, _ = commands.split(CRLF, 2)
                busy = True
                if self._need_rset:
                    self._need_rset = False
                    self._sendall(b"RSET\r\n")
                    self._reply()
                self._sendall(mail + CRLF)
                reply = self._reply()
                if reply.code == 250:
                    self._sendall(rcpt + CRLF)
                    reply = self._reply()
                    if reply.code in (250, 251):
                        self._sendall(b"DATA\r\n")
                        reply = self._reply()
                        if reply.code == 354:
                            self._sendall(payload)
                            reply = self._reply()
                        else:
                            self._need_rset = True
                    else:
                        self._need_rset = True
                busy = False
                yield pending.popleft(), reply
        except _ConnectionLost as exc:
            busy = False
            yield from self._lost(exc, pending, it)
        finally:
            self._sending = False
            if busy:  # abandoned mid-transaction
                self._drop()

    def _send_pipelined(self, it: Iterator[Envelope]) -> Generator[tuple[Envelope, Reply], None, None]:
        # prev/tail: the envelope whose DATA got 354 and its encoded content; the content goes out in
        # the same write as the next envelope's MAIL/RCPT/DATA group (RFC 2920 allows content to
        # start a group), and prev's final reply is the first reply read after that write.
        self._sending = True
        pending: deque[Envelope] = deque()  # pulled from `it`, not yet reported, in order
        busy = False  # commands or content on the wire without all their replies
        prev: Envelope | None = None
        tail = b""

        input_error: BaseException | None = None

        def pull() -> tuple[Envelope, tuple[bytes, bytes] | Reply] | None:
            """The next envelope and its prepared transaction; None at the end of the input."""
            # An exception from the caller's iterator (or a non-Envelope item) is held back until
            # the messages already in flight are finished and reported, then re-raised.
            nonlocal input_error
            try:
                env = next(it)
                prepared = self._transaction(env)
            except StopIteration:
                return None
            except Exception as exc:  # noqa: BLE001 - held back and re-raised after the in-flight messages
                input_error = exc
                return None
            pending.append(env)
            return env, prepared

        try:
            step = pull()
            while step is not None:
                env, prepared = step
                if isinstance(prepared, Reply):  # local failure: keep replies in order
                    if prev is not None:
                        busy = True
                        self._sendall(tail)
                        tail, prev = b"", None
                        reply = self._reply()
                        busy = False
                        yield pending.popleft(), reply
                    yield pending.popleft(), prepared
                    step = pull()
                    continue

                commands, payload = prepared
                rset = self._need_rset
                if rset:
                    commands = b"RSET\r\n" + commands
                    self._need_rset = False
                busy = True
                self._sendall(tail + commands if tail else commands)
                tail = b""
                # While the server works: fetch and encode the next envelope.
                nxt = pull()
                if prev is not None:
                    reply = self._reply()
                    prev = None
                    yield pending.popleft(), reply
                if rset:
                    self._reply()
                mail = self._reply()
                rcpt = self._reply()
                data = self._reply()
                if data.code == 354:
                    if mail.code == 250 and rcpt.code in (250, 251):
                        prev, tail = env, payload  # busy stays True: the server awaits content
                        step = nxt
                        continue
                    # Broken server: DATA accepted although MAIL/RCPT was refused.  End the empty
                    # transaction without sending content; the outcome is the earlier refusal.
                    self._sendall(b".\r\n")
                    self._reply()
                    self._need_rset = True
                    final = mail if mail.code != 250 else rcpt
                elif mail.code != 250:
                    final = mail  # no transaction was opened
                elif rcpt.code not in (250, 251):
                    final = rcpt
                    self._need_rset = True
                else:
                    final = data
                    self._need_rset = True
                busy = False
                yield pending.popleft(), final
                step = nxt

            if prev is not None:  # the last message's content goes out alone
                self._sendall(tail)
                tail, prev = b"", None
                reply = self._reply()
                busy = False
                yield pending.popleft(), reply
        except _ConnectionLost as exc:
            busy = False
            yield from self._lost(exc, pending, iter(()) if input_error is not None else it)
        finally:
            self._sending = False
            if busy:  # abandoned with commands or content unacknowledged
                self._drop()
        if input_error is not None:
            raise input_error



def _parse_ehlo(text: str) -> dict[str, str]:
    extensions: dict[str, str] = {}
    for line in text.split("\n")[1:]:
        parts = line.strip().split(None, 1)
        if not parts:
            continue
        keyword = parts[0].upper()
        params = parts[1] if len(parts) > 1 else ""
        if keyword.startswith("AUTH="):  # old-style "AUTH=PLAIN LOGIN"
            keyword, params = "AUTH", (keyword[5:] + " " + params).strip()
        if keyword == "AUTH" and "AUTH" in extensions:
            params = (extensions["AUTH"] + " " + params).strip()
        extensions[keyword] = params
    return extensions


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text
