"""Micro-benchmark of the per-recipient hot path of `digest send`, in µs per message.

Renders the bundled sample edition once, then times each step a sender process takes per
recipient: the signed subscriber token, the VERP sender, the message bytes (`MessageTemplate.wire_for`),
the same with DKIM (RSA-2048 and Ed25519), the Envelope, and recording the result in the
ledger (journal line + batched executemany + commit, on a real SQLite file, as in `deliver`).
For comparison: smtplib's regex dot-stuffing and `bytes.replace` dot-stuffing of the same bytes.
Best of 5 repeats; the machine is shared, so these are the least disturbed figures.

    .venv/bin/python bench/hotpath.py
"""

from __future__ import annotations

import secrets
import smtplib
import sys
import tempfile
import timeit
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cryptography.hazmat.primitives.asymmetric import ed25519, rsa  # noqa: E402

from digest.clock import utc_now  # noqa: E402
from digest.config import load_settings, render_config  # noqa: E402
from digest.delivery.journal import Journal  # noqa: E402
from digest.delivery.ledger import SQLLedger  # noqa: E402
from digest.delivery.sender import Recorder, message_id_nonce  # noqa: E402
from digest.delivery.variants import message_from  # noqa: E402
from digest.links import Links  # noqa: E402
from digest.mail.dkim import DKIMSigner  # noqa: E402
from digest.mail.message import Recipient  # noqa: E402
from digest.mail.smtp import Envelope, dot_stuff  # noqa: E402
from digest.mail.verp import VERP  # noqa: E402


def per_call(fn, number: int = 2000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    from digest.service import pipeline as jobs
    from digest.store.database import make_engine, session
    from digest.store.schema import create_schema

    tmp = Path(tempfile.mkdtemp())
    config = tmp / "digest.toml"
    config.write_text(render_config(name="Bench Weekly", from_="Bench Weekly <news@bench.example>",
                                    public_url="https://news.bench.example",
                                    feeds=[str(ROOT / "examples" / "codelooru.atom")],
                                    database_url=f"sqlite:///{tmp / 'bench.db'}", first_edition_days=0))
    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    create_schema(engine)
    with session(engine) as db:
        jobs.poll(db, settings, utc_now)
        p = jobs.preview(db, settings, fetch=False)
    rendered, date = p.message.rendered, datetime.now(UTC)
    nl = settings.newsletter
    plain = message_from(rendered, nl, date, None)
    rsa_msg = message_from(rendered, nl, date, DKIMSigner("bench.example", "s", rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    ed_msg = message_from(rendered, nl, date, DKIMSigner("bench.example", "s", ed25519.Ed25519PrivateKey.generate()))
    links = Links(settings.newsletter.secret_key, settings.newsletter.public_url)
    verp = VERP(settings.newsletter.secret_key, "bench.example")
    token = links.subscriber_token(123456, "reader0123456@bench.example")
    r = Recipient("reader0123456@bench.example", "Reader 123456", links.unsubscribe_url(token), links.preferences_url(token),
                  f"<1.123456.{secrets.token_hex(4)}@bench.example>")
    wire = plain.wire_for(r)
    raw = plain.for_recipient(r)

    rows = []
    rows.append(("subscriber token (HMAC-SHA1, itsdangerous format)", per_call(lambda: links.subscriber_token(123456, "reader0123456@bench.example"))))
    rows.append(("VERP envelope sender (HMAC-SHA256)", per_call(lambda: verp.sender(123456))))
    rows.append(("Message-ID + Recipient", per_call(lambda: Recipient(r.email, r.name, r.unsubscribe_url, r.preferences_url, f"<1.123456.{message_id_nonce():08x}@bench.example>"))))
    rows.append((f"message bytes, wire_for ({len(wire)} B, dot-stuffed)", per_call(lambda: plain.wire_for(r))))
    rows.append(("Envelope", per_call(lambda: Envelope("bounce+x-0@bench.example", r.email, wire, tag=1, ready=True))))
    dkim_rsa = per_call(lambda: rsa_msg.wire_for(r), 500)
    dkim_ed = per_call(lambda: ed_msg.wire_for(r), 1000)

    # ledger: record 200 results (journal + executemany + commit), as `deliver` does per batch
    with session(engine) as db:
        from digest.content import editions
        ed = editions.create(db, utc_now, subject_template="x", newsletter_name="x")
        from sqlalchemy import text
        db.execute(text("INSERT INTO subscriber (email, status, paused, created_at) VALUES ('a@bench.example', 'active', 0, '2026-01-01 00:00:00')"))
        sid = db.execute(text("SELECT id FROM subscriber")).scalar()
        db.execute(text("INSERT INTO delivery (edition_id, subscriber_id, status, attempts) VALUES (:e, :s, 'pending', 0)"), {"e": ed.id, "s": sid})
        db.commit()
        did = db.execute(text("SELECT id FROM delivery")).scalar()
        recorder = Recorder(SQLLedger(db), Journal(tmp / "journal", "bench:1:x"))
        now = datetime.now(UTC)

        def record_batch():
            for _ in range(200):  # acceptances of the same row: the write cost is what counts
                recorder.accepted(did, "<1.1.0badcafe@bench.example>", now)
            recorder.flush()

        ledger_us = per_call(record_batch, 5) / 200
        recorder.journal.close()
    rows.append(("ledger: journal line + executemany + commit (per acceptance, batches of 200)", ledger_us))
    total = sum(v for _, v in rows)
    print(f"per-recipient hot path of `digest send` (µs per message, best of 5; {sys.version.split()[0]})")
    for label, v in rows:
        print(f"  {v:7.1f}  {label}")
    print(f"  {total:7.1f}  total without DKIM (plus the SMTP client: socket writes and 4 reply reads)")
    print(f"  {dkim_rsa:7.1f}  message bytes with DKIM rsa-sha256 (2048-bit): +{dkim_rsa - rows[3][1]:.1f} µs")
    print(f"  {dkim_ed:7.1f}  message bytes with DKIM ed25519-sha256: +{dkim_ed - rows[3][1]:.1f} µs")
    print("for comparison, dot-stuffing the same message:")
    print(f"  {per_call(lambda: smtplib._quote_periods(raw), 500):7.1f}  smtplib (regex)")
    print(f"  {per_call(lambda: dot_stuff(raw), 500):7.1f}  digest.smtp_client.dot_stuff (bytes.split/join; not needed: wire_for stuffs once per variant)")


if __name__ == "__main__":
    main()
