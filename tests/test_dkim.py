"""DKIM: every message signed, verified by dkimpy (the reference implementation) against the
public key, with the headers the issue names in h=; broken keys are one-line config errors."""

from __future__ import annotations

import base64
import email
import email.policy
import re
from datetime import UTC, datetime

import dkim
import pytest

from conftest import run_digest, subscribe, write_config
from digest.config import load_settings
from digest.content.render import Rendered
from digest.errors import ConfigError
from digest.mail.dkim import DKIMSigner, canon_body, canon_lines, dns_record, new_private_key, write_private_key
from digest.mail.mailer import SMTPMailer
from digest.mail.message import MessageTemplate, Recipient
from digest.service import pipeline as jobs
from digest.service import subscribers

REQUIRED_IN_H = {"from", "to", "subject", "date", "message-id", "list-id", "list-unsubscribe", "list-unsubscribe-post"}


def write_key(path, kind="rsa"):
    key = new_private_key(kind)
    write_private_key(key, path)
    return key


def dns_for(key, name=b"digest._domainkey.digest.test."):
    record = dns_record(key).encode()

    def lookup(qname, timeout=5):
        return record if qname == name else None

    return lookup


def tags(raw: bytes) -> dict[str, str]:
    msg = email.message_from_bytes(raw)
    value = "".join(msg["DKIM-Signature"].split())
    return dict(part.split("=", 1) for part in value.strip(";").split(";"))


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_sent_messages_carry_a_signature_dkimpy_verifies(tmp_path, smtp_server, clock, kind):
    key = write_key(tmp_path / "dkim.pem", kind)
    config = write_config(tmp_path, smtp_port=smtp_server.port,
                          dkim={"domain": "digest.test", "selector": "digest", "private_key_file": "dkim.pem"})
    settings = load_settings(config)
    from digest.store.database import make_engine, session
    from digest.store.schema import create_schema
    engine = make_engine(settings.database_url)
    create_schema(engine)
    with session(engine) as db:
        subscribers.add(db, "ann@example.com", clock, name="Zoë  Müller-Lüdenscheidt, PhD")
        subscribers.add(db, "bob@example.com", clock)
        jobs.send(db, settings, SMTPMailer(settings.smtp), clock)
    assert len(smtp_server.received) == 2
    for got in smtp_server.received:
        assert got.data.startswith(b"DKIM-Signature: ")
        assert dkim.verify(got.data, dnsfunc=dns_for(key)), got.data[:600]
        t = tags(got.data)
        assert t["a"] == ("rsa-sha256" if kind == "rsa" else "ed25519-sha256")
        assert t["c"] == "relaxed/relaxed" and t["d"] == "digest.test" and t["s"] == "digest" and "l" not in t
        assert {h.lower() for h in t["h"].split(":")} >= REQUIRED_IN_H
        assert max(len(line) for line in got.data.split(b"\r\n\r\n")[0].split(b"\r\n") if not line.startswith(b"List-Unsubscribe:")) <= 78, got.data[:1500]
        # tampering with a signed header or the body breaks it
        assert not dkim.verify(got.data.replace(b"Subject: Test", b"Subject: Tost"), dnsfunc=dns_for(key))
        assert not dkim.verify(got.data.replace(b"unsubscribe/", b"unsubscribX/", 1).replace(b"Unsubscribe", b"Unsubscribx"),
                               dnsfunc=dns_for(key))
    # a second From header cannot be added without breaking it (From is oversigned)
    raw = smtp_server.received[0].data
    forged = raw.replace(b"\r\nFrom: ", b"\r\nFrom: Evil <evil@attacker.test>\r\nFrom: ", 1)
    assert not dkim.verify(forged, dnsfunc=dns_for(key))


def test_signature_survives_whitespace_and_the_canonical_body_matches_the_reference(tmp_path):
    key = write_key(tmp_path / "k.pem")
    rendered = Rendered("Tabs\tand  spaces", "<p>  two  spaces\tand tab  </p>\n<a href=\"XDIGESTUNSUBSCRIBEURLX\">XDIGESTNAMEX</a>\n\n\n",
                        "Hi XDIGESTNAMEX,\n  indented   text \t\nXDIGESTPREFERENCESURLX\n")
    signer = DKIMSigner("digest.test", "digest", key)
    message = MessageTemplate(rendered, from_="Ann Ö <n@digest.test>", list_id="<l.digest.test>", reply_to="r@digest.test",
                      feedback_id="weekly:digest", date=datetime(2026, 11, 26, tzinfo=UTC), signer=signer)
    raw = message.for_recipient(Recipient("a@x.test", "Zoë   Q", "https://u.test/unsubscribe/" + "t" * 120, "https://p", "<1@digest.test>"))
    assert dkim.verify(raw, dnsfunc=dns_for(key))
    body = raw.split(b"\r\n\r\n", 1)[1]
    bh = tags(raw)["bh"]
    import hashlib
    assert base64.b64encode(hashlib.sha256(canon_body(body)).digest()).decode() == bh
    assert canon_lines(b"a  b\t c \r\n") == b"a b c\r\n"
    assert "Feedback-ID: weekly:digest" in raw.decode()


@pytest.mark.slow
def test_dkim_config_errors_are_one_line_naming_the_key(tmp_path):
    base = write_config(tmp_path, dkim={"domain": "digest.test", "selector": "digest", "private_key_file": "missing.pem"})
    text = base.read_text().replace('private_key_file = "missing.pem"\n', "", 1)
    with pytest.raises(ConfigError, match=r"invalid setting 'dkim.private_key_file': cannot use .*missing.pem"):
        load_settings(base)
    proc = run_digest(base, "editions")
    assert proc.returncode == 2 and "dkim.private_key_file" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    (tmp_path / "missing.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_settings(base)
    base.write_text(text)  # domain and selector, no key file
    with pytest.raises(ConfigError, match=re.escape("missing required setting 'dkim.private_key_file'")):
        load_settings(base)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_dkim_keygen_then_the_printed_settings_and_record_make_signatures_that_verify(tmp_path, smtp_server, kind):
    config = write_config(tmp_path, smtp_port=smtp_server.port, from_="Test Weekly <news@digest.test>")
    made = run_digest(config, "dkim", "keygen", "--type", kind, check=True).stdout
    key_file = tmp_path / "dkim.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600  # private
    # the record, as quoted strings of at most 255 characters each, under selector._domainkey.domain
    line = next(row for row in made.splitlines() if "._domainkey." in row)
    name, txt, value = line.split(None, 2)
    assert name == "digest._domainkey.digest.test." and txt == "TXT" and value.startswith(f'"v=DKIM1; k={kind};')
    strings = value.split('" "')
    assert all(len(s.strip('"')) <= 255 for s in strings)
    record = "".join(s.strip('"') for s in strings)
    # the printed [dkim] block goes into the config as it is
    block = made[made.index("[dkim]"):].strip()
    config.write_text(config.read_text().replace("[dkim]\n", block + "\n", 1))
    assert run_digest(config, "dkim", "record", check=True).stdout.strip() == line.strip()
    subscribe(config, "ann@example.com")
    run_digest(config, "send", check=True)
    got = smtp_server.received[0].data

    def lookup(qname, timeout=5):
        return record.encode() if qname == b"digest._domainkey.digest.test." else None

    assert dkim.verify(got, dnsfunc=lookup)
    # a key in use is never overwritten
    again = run_digest(config, "dkim", "keygen")
    assert again.returncode == 1 and "exists" in again.stderr
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
