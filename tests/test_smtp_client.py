"""Tests for digest.smtp_client against a real aiosmtpd server on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading

import pytest

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")
from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: E402

from digest.mail.smtp import (  # noqa: E402
    Envelope,
    Reply,
    SMTPAuthError,
    SMTPClientError,
    SMTPConnectError,
    SMTPConnection,
    dot_stuff,
)

Controller = aiosmtpd_controller.Controller
HOST = "127.0.0.1"
SENDER = "digest@example.org"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Recorder:
    """aiosmtpd handler that records deliveries and refuses on demand."""

    def __init__(self, pipelining: bool = True) -> None:
        self.pipelining = pipelining
        self.messages: list[tuple[str, list[str], bytes, list[str]]] = []
        self.rcpt_replies: dict[str, str] = {}  # recipient -> reply to RCPT
        self.mail_replies: dict[str, str] = {}  # sender -> reply to MAIL
        self.data_replies: dict[str, str] = {}  # recipient -> reply at end of DATA
        self.drop_after: int | None = None  # abort the connection at end of DATA once this many are stored
        self.sessions = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        self.sessions += 1
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if address in self.mail_replies:
            return self.mail_replies[address]
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.drop_after is not None and len(self.messages) >= self.drop_after:
            server.transport.abort()  # vanish without a reply
            return "250 never sent"
        for rcpt in envelope.rcpt_tos:
            if rcpt in self.data_replies:
                return self.data_replies[rcpt]
        self.messages.append(
            (envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content), list(envelope.mail_options))
        )
        return "250 2.0.0 Ok: queued"


@pytest.fixture
def make_server():
    controllers = []

    def start(handler=None, **kwargs):
        handler = handler or Recorder()
        port = free_port()
        controller = Controller(handler, hostname=HOST, port=port, **kwargs)
        controller.start()
        controllers.append(controller)
        return handler, port

    yield start
    for controller in controllers:
        controller.stop()


def make_message(i: int) -> bytes:
    """A message exercising dot-stuffing and 8-bit content; CRLF line endings, CRLF at the end."""
    lines = [
        f"From: Digest <{SENDER}>",
        f"To: reader{i}@example.com",
        f"Subject: Digest #{i}",
        f"Message-ID: <{i}.digest@example.org>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"Hello reader {i},",
        ".a line starting with a dot",
        ".",
        "..two dots",
        "",
        "... and an ellipsis",
        "end of paragraph.",
    ]
    if i % 3 == 0:
        lines.append("Ünïcödé body: naïve café — 日本語 ✓")
    lines.extend(f"filler line {j} for message {i} " + "x" * (j % 50) for j in range(i % 40))
    lines.append(".")
    text = "\r\n".join(lines) + "\r\n"
    if i % 10 == 7:  # a message starting with "."
        text = ".starts with a dot\r\n" + text
    return text.encode("utf-8")


def envelopes(n: int, prefix: str = "reader") -> list[Envelope]:
    return [Envelope(SENDER, f"{prefix}{i}@example.com", make_message(i)) for i in range(n)]


def conn_for(port: int, **kwargs) -> SMTPConnection:
    return SMTPConnection(HOST, port, timeout=10, local_hostname="client.test", **kwargs)


PIPELINING = pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lockstep"])


# --------------------------------------------------------------------------------------------
# Delivery
# --------------------------------------------------------------------------------------------


@PIPELINING
def test_500_messages_byte_exact_in_order(make_server, pipelining):
    handler, port = make_server(Recorder(pipelining))
    envs = envelopes(500)
    with conn_for(port) as conn:
        assert conn.pipelining is pipelining
        assert conn.eightbitmime
        results = list(conn.send(envs))
        assert conn.connected
    assert [e for e, _ in results] == envs
    assert all(r.ok and r.code == 250 for _, r in results), [r for _, r in results if not r.ok][:3]
    assert len(handler.messages) == 500
    for env, (mail_from, rcpts, content, options) in zip(envs, handler.messages, strict=True):
        assert mail_from == SENDER
        assert rcpts == [env.recipient]
        assert content == env.data
        assert ("BODY=8BITMIME" in options) == (not env.data.isascii())
    assert handler.sessions == 1


@PIPELINING
def test_edge_case_bodies(make_server, pipelining):
    handler, port = make_server(Recorder(pipelining))
    bodies = [
        b"",
        b".",
        b".\r\n",
        b"Subject: x\r\n\r\nno final newline",
        b"Subject: x\r\n\r\nbare\nLF\n.\nend\n",
        b"Subject: x\r\n\r\nsmuggle\n.\r\nMAIL FROM:<evil@example.com>\r\n",
        b"Subject: x\r\n\r\nbare CR\r.\r\nline\r\n",
        b"\r\n.\r\n..\r\n",
    ]
    envs = [Envelope(SENDER, f"edge{i}@example.com", body) for i, body in enumerate(bodies)]
    with conn_for(port) as conn:
        results = list(conn.send(envs))
    assert all(r.code == 250 for _, r in results)
    got = [content for _, _, content, _ in handler.messages]
    assert got == [
        b"",
        b".\r\n",
        b".\r\n",
        b"Subject: x\r\n\r\nno final newline\r\n",
        b"Subject: x\r\n\r\nbare\r\nLF\r\n.\r\nend\r\n",
        b"Subject: x\r\n\r\nsmuggle\r\n.\r\nMAIL FROM:<evil@example.com>\r\n",
        b"Subject: x\r\n\r\nbare CR\r\n.\r\nline\r\n",
        b"\r\n.\r\n..\r\n",
    ]
    assert [rcpts for _, rcpts, _, _ in handler.messages] == [[e.recipient] for e in envs]


def test_dot_stuff():
    assert dot_stuff(b"") == b".\r\n"
    assert dot_stuff(b"a\r\n") == b"a\r\n.\r\n"
    assert dot_stuff(b"a") == b"a\r\n.\r\n"
    assert dot_stuff(b".a\r\n.\r\nb.\r\n") == b"..a\r\n..\r\nb.\r\n.\r\n"
    assert dot_stuff(b"x\n.\ny") == b"x\r\n..\r\ny\r\n.\r\n"
    assert dot_stuff(b"x\r.\r\n") == b"x\r\n..\r\n.\r\n"


def test_results_are_yielded_promptly(make_server):
    """Envelope k's outcome is yielded before the input iterator is asked for envelope k+3.

    (Pipelined sending encodes the next envelope while the server works, so the input is read at most
    two envelopes ahead of the last result: k's outcome is only known once k's content went out together
    with k+1's commands, and k+2 is fetched while waiting for that reply.)
    """
    handler, port = make_server(Recorder(pipelining=True))
    events: list[tuple[str, int]] = []
    envs = envelopes(20)

    def source():
        for i, env in enumerate(envs):
            events.append(("pulled", i))
            yield env

    with conn_for(port) as conn:
        for env, reply in conn.send(source()):
            assert reply.code == 250
            events.append(("result", envs.index(env)))
    for k in range(len(envs)):
        result_at = events.index(("result", k))
        if k + 3 < len(envs):
            assert result_at < events.index(("pulled", k + 3))
    assert len(handler.messages) == 20


@PIPELINING
def test_input_iterator_error_after_in_flight_messages_are_reported(make_server, pipelining):
    handler, port = make_server(Recorder(pipelining))
    envs = envelopes(5)

    def source():
        yield from envs
        raise RuntimeError("renderer failed")

    seen = []
    with conn_for(port) as conn:
        with pytest.raises(RuntimeError, match="renderer failed"):
            for env, reply in conn.send(source()):
                seen.append((env, reply.code))
        assert seen == [(e, 250) for e in envs]  # every message in flight was finished and reported
        assert conn.connected and conn.noop().code == 250
    assert len(handler.messages) == 5


# --------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------


@PIPELINING
def test_rcpt_refusals_are_per_envelope(make_server, pipelining):
    handler, port = make_server(Recorder(pipelining))
    envs = envelopes(40)
    permanent = {e.recipient for i, e in enumerate(envs) if i % 7 == 3}
    temporary = {e.recipient for i, e in enumerate(envs) if i % 7 == 5}
    temporary.add(envs[-1].recipient)  # a refusal on the very last envelope too
    for r in permanent:
        handler.rcpt_replies[r] = "550 5.1.1 No such user"
    for r in temporary:
        handler.rcpt_replies[r] = "451 4.3.0 Try again later"
    with conn_for(port) as conn:
        results = list(conn.send(envs))
        assert [e for e, _ in results] == envs
        for env, reply in results:
            if env.recipient in permanent:
                assert (reply.code, reply.permanent, reply.ok) == (550, True, False)
                assert "No such user" in reply.text
            elif env.recipient in temporary:
                assert (reply.code, reply.temporary, reply.ok) == (451, True, False)
            else:
                assert reply.code == 250 and reply.ok
        # the session is still healthy and usable
        assert conn.noop().code == 250
        more = list(conn.send(envelopes(3, prefix="after")))
        assert [r.code for _, r in more] == [250, 250, 250]
    delivered = [rcpts[0] for _, rcpts, _, _ in handler.messages]
    expected = [e.recipient for e in envs if e.recipient not in permanent | temporary]
    assert delivered == expected + [f"after{i}@example.com" for i in range(3)]


@PIPELINING
def test_mail_refusal(make_server, pipelining):
    handler, port = make_server(Recorder(pipelining))
    handler.mail_replies["blocked@example.org"] = "553 5.7.1 Sender not allowed"
    envs = envelopes(6)
    envs[2] = Envelope("blocked@example.org", "x@example.com", b"Subject: x\r\n\r\nbody\r\n")
    with conn_for(port) as conn:
        results = list(conn.send(envs))
    assert [r.code for _, r in results] == [250, 250, 553, 250, 250, 250]
    assert results[2][1].permanent
    assert len(handler.messages) == 5


@PIPELINING
def test_data_refusal_554(make_server, pipelining):
    handler, port = make_server(Recorder(pipelining))
    envs = envelopes(10)
    handler.data_replies[envs[4].recipient] = "554 5.7.1 Message content rejected"
    with conn_for(port) as conn:
        results = list(conn.send(envs))
    codes = [r.code for _, r in results]
    assert codes == [250] * 4 + [554] + [250] * 5
    assert results[4][1].permanent and "content rejected" in results[4][1].text
    assert [c for _, _, c, _ in handler.messages] == [e.data for i, e in enumerate(envs) if i != 4]


@PIPELINING
@pytest.mark.parametrize("stage", ["rcpt", "data"])
def test_421_closes_and_remaining_are_temporary(make_server, pipelining, stage):
    handler, port = make_server(Recorder(pipelining))
    envs = envelopes(8)
    replies = handler.rcpt_replies if stage == "rcpt" else handler.data_replies
    replies[envs[3].recipient] = "421 4.3.2 Service shutting down"
    with conn_for(port) as conn:
        results = list(conn.send(envs))
        assert not conn.connected
    assert [e for e, _ in results] == envs
    assert [r.code for _, r in results[:3]] == [250, 250, 250]
    assert results[3][1].code == 421 and results[3][1].temporary
    assert all(r.temporary and r.code == 0 for _, r in results[4:])
    assert len(handler.messages) == 3


# --------------------------------------------------------------------------------------------
# Connection failures
# --------------------------------------------------------------------------------------------


def test_connect_refused_names_host_and_port():
    port = free_port()  # nothing listens there
    conn = SMTPConnection(HOST, port, timeout=5)
    with pytest.raises(SMTPConnectError) as info:
        conn.connect()
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "refused" in str(info.value).lower()
    assert not conn.connected


def _one_shot_server(script: bytes) -> tuple[int, threading.Thread]:
    """A raw TCP server that sends `script` to its first client, then closes."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def run():
        with listener:
            client, _ = listener.accept()
            with client:
                client.sendall(script)
                with contextlib.suppress(OSError):
                    client.recv(1024)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return port, thread


def test_greeting_refused():
    port, thread = _one_shot_server(b"554 5.3.2 No service here\r\n")
    with pytest.raises(SMTPConnectError) as info:
        SMTPConnection(HOST, port, timeout=5).connect()
    assert f"127.0.0.1:{port}" in str(info.value) and "554" in str(info.value)
    thread.join(5)


def test_helo_fallback_and_multiline_greeting():
    script = (
        b"220-first line\r\n220 second line\r\n"
        b"502 5.5.1 EHLO not implemented\r\n"
        b"250 hello\r\n"
    )
    port, thread = _one_shot_server(script)
    conn = SMTPConnection(HOST, port, timeout=5)
    conn.connect()
    assert conn.greeting == Reply(220, "first line\nsecond line")
    assert not conn.esmtp and not conn.pipelining
    conn.close()
    thread.join(5)


@PIPELINING
def test_drop_midstream_then_reconnect_and_resend(make_server, pipelining):
    handler, port = make_server(Recorder(pipelining))
    handler.drop_after = 20
    envs = envelopes(50)
    conn = conn_for(port)
    conn.connect()
    results = list(conn.send(envs))
    assert not conn.connected
    assert [e for e, _ in results] == envs  # none lost
    assert all(r.code == 250 for _, r in results[:20])
    assert all(r.temporary and r.code == 0 and r.text for _, r in results[20:])
    assert len(handler.messages) == 20

    handler.drop_after = None
    conn.reconnect()
    retry = [e for e, r in results if r.temporary]
    again = list(conn.send(retry))
    conn.close()
    assert all(r.code == 250 for _, r in again)
    assert [c for _, _, c, _ in handler.messages] == [e.data for e in envs]  # each exactly once, in order


def test_abandoned_iteration_closes_cleanly(make_server):
    handler, port = make_server(Recorder(pipelining=True))
    conn = conn_for(port)
    conn.connect()
    for _, reply in conn.send(envelopes(10)):
        assert reply.code == 250
        break
    # the next envelope's transaction was open: the connection is closed rather than left ambiguous
    assert not conn.connected
    conn.reconnect()
    assert [r.code for _, r in conn.send(envelopes(2, prefix="later"))] == [250, 250]
    conn.close()
    assert [r[0] for _, r, _, _ in handler.messages] == ["reader0@example.com", "later0@example.com", "later1@example.com"]


def test_noop_reset_and_not_connected(make_server):
    _, port = make_server()
    conn = conn_for(port)
    with pytest.raises(SMTPClientError):
        conn.send([])
    with conn:
        assert conn.noop() == Reply(250, "OK")
        conn.reset()
    assert not conn.connected
    conn.close()  # idempotent


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sender, recipient",
    [
        (SENDER, "victim@example.com\r\nRCPT TO:<evil@example.com>"),
        (SENDER, "victim@example.com\nDATA"),
        (SENDER, "victim@example.com\r"),
        (SENDER, "a>@example.com"),
        (SENDER, "<a@example.com"),
        ("evil@example.org>\r\nRSET", "a@example.com"),
        (SENDER, ""),
        (SENDER, "nul\x00@example.com"),
    ],
)
def test_address_injection_rejected(sender, recipient):
    with pytest.raises(ValueError):
        Envelope(sender, recipient, b"x\r\n")


@PIPELINING
def test_non_ascii_address_needs_smtputf8(make_server, pipelining):
    handler, port = make_server(Recorder(pipelining), enable_SMTPUTF8=False)
    envs = envelopes(5)
    envs[2] = Envelope(SENDER, "jürgen@exämple.de", b"Subject: x\r\n\r\nx\r\n")
    with conn_for(port) as conn:
        assert not conn.smtputf8
        results = list(conn.send(envs))
    assert [e for e, _ in results] == envs
    assert [r.code for _, r in results] == [250, 250, 553, 250, 250]
    assert results[2][1].permanent and "SMTPUTF8" in results[2][1].text
    assert [rcpts[0] for _, rcpts, _, _ in handler.messages] == [e.recipient for i, e in enumerate(envs) if i != 2]


def test_non_ascii_address_with_smtputf8(make_server):
    handler, port = make_server(Recorder(), enable_SMTPUTF8=True)
    env = Envelope("pöst@example.org", "jürgen@exämple.de", "Subject: Grüße\r\n\r\nHallo\r\n".encode())
    with conn_for(port) as conn:
        assert conn.smtputf8
        [(_, reply)] = list(conn.send([env]))
    assert reply.code == 250
    mail_from, rcpts, content, options = handler.messages[0]
    assert (mail_from, rcpts, content) == (env.sender, [env.recipient], env.data)
    assert "SMTPUTF8" in options and "BODY=8BITMIME" in options


def test_null_sender_allowed(make_server):
    handler, port = make_server()
    with conn_for(port) as conn:
        [(_, reply)] = list(conn.send([Envelope("", "bounce@example.com", b"Subject: b\r\n\r\nx\r\n")]))
    assert reply.code == 250
    assert handler.messages[0][0] == "<>"  # aiosmtpd spells the null reverse-path "<>"


# --------------------------------------------------------------------------------------------
# AUTH and TLS
# --------------------------------------------------------------------------------------------


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data == (b"digest", "s3crét".encode())
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends the 535 itself


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_plain_connection(make_server, mechanism):
    exclude = ["LOGIN"] if mechanism == "PLAIN" else ["PLAIN"]
    handler, port = make_server(
        Recorder(), authenticator=_authenticator, auth_require_tls=False, auth_required=True,
        auth_exclude_mechanism=exclude,
    )
    with conn_for(port, username="digest", password="s3crét") as conn:
        assert conn.auth_mechanisms == {mechanism}
        results = list(conn.send(envelopes(3)))
    assert [r.code for _, r in results] == [250] * 3
    assert len(handler.messages) == 3


def test_auth_bad_password(make_server):
    _, port = make_server(Recorder(), authenticator=_authenticator, auth_require_tls=False)
    conn = conn_for(port, username="digest", password="wrong")
    with pytest.raises(SMTPAuthError) as info:
        conn.connect()
    assert info.value.reply is not None and info.value.reply.code == 535
    assert not conn.connected


def test_auth_not_offered(make_server):
    _, port = make_server()  # auth_require_tls=True by default: no AUTH on a plain connection
    with pytest.raises(SMTPAuthError, match="no usable AUTH"):
        conn_for(port, username="u", password="p").connect()


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, via `cryptography` if installed, else the openssl CLI."""
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        pkey = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(pkey.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]),
                critical=False,
            )
            .sign(pkey, hashes.SHA256())
        )
        cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(
            pkey.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither cryptography nor openssl available to make a test certificate")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
             "-addext", f"subjectAltName=DNS:localhost,IP:{HOST}"],
            check=True, capture_output=True,
        )
    return cert, key


def _server_context(cert_files) -> ssl.SSLContext:
    cert, key = cert_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def test_starttls_with_auth(make_server, cert_files):
    handler, port = make_server(
        Recorder(), tls_context=_server_context(cert_files), require_starttls=True, authenticator=_authenticator,
    )
    client_ctx = ssl.create_default_context(cafile=str(cert_files[0]))
    with conn_for(port, security="starttls", ssl_context=client_ctx, username="digest", password="s3crét") as conn:
        assert "STARTTLS" not in conn.extensions  # re-EHLO after TLS
        assert "PLAIN" in conn.auth_mechanisms
        assert conn.pipelining
        results = list(conn.send(envelopes(50)))
    assert all(r.code == 250 for _, r in results)
    assert [c for _, _, c, _ in handler.messages] == [e.data for e in envelopes(50)]


def test_starttls_untrusted_certificate_fails(make_server, cert_files):
    _, port = make_server(Recorder(), tls_context=_server_context(cert_files))
    with pytest.raises(SMTPConnectError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        conn_for(port, security="starttls").connect()  # default context: system CAs only


def test_starttls_not_offered(make_server):
    _, port = make_server()
    with pytest.raises(SMTPConnectError, match="STARTTLS"):
        conn_for(port, security="starttls").connect()


def test_implicit_tls(make_server, cert_files):
    handler, port = make_server(Recorder(), ssl_context=_server_context(cert_files))
    client_ctx = ssl.create_default_context(cafile=str(cert_files[0]))
    with conn_for(port, security="tls", ssl_context=client_ctx) as conn:
        results = list(conn.send(envelopes(20)))
    assert all(r.code == 250 for _, r in results)
    assert len(handler.messages) == 20
