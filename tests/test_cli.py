"""The operator's commands: preview, subscribers, editions, fetch."""

from __future__ import annotations

import csv
import io

import pytest
from sqlmodel import select

from conftest import FIXTURES, run_digest, subscribe, write_config
from digest.config import load_settings
from digest.models import Delivery, Edition, Post, Subscriber
from digest.store import make_engine, session


def db_for(config):
    return session(make_engine(load_settings(config).database_url))


@pytest.mark.slow
def test_preview_writes_files_and_records_nothing(config_path, smtp_server, tmp_path):
    subscribe(config_path, "ann@example.com")
    out = tmp_path / "out"
    proc = run_digest(config_path, "send", "--preview", "--out", str(out), check=True)
    assert str(out / "preview.html") in proc.stdout and str(out / "preview.txt") in proc.stdout
    html = (out / "preview.html").read_text()
    text = (out / "preview.txt").read_text()
    for title in ("Confluent Cloud Gateway", "Model Distillation Attacks", "AWS ENIs", "The Lean AI Firm", "Snowflake"):
        assert title in html and title in text
    assert text.index("== ARCHITECTURE ==") < text.index("== EXPLAINED ==") < text.index("== IN FOCUS ==")
    assert "XDIGEST" not in html + text
    with db_for(config_path) as db:
        assert db.exec(select(Edition)).all() == [] and db.exec(select(Delivery)).all() == []
        assert len(db.exec(select(Post)).all()) == 5
    assert smtp_server.received == []
    # the real send afterwards still has all five posts
    assert "Edition 1: 5 posts, 1 delivered" in run_digest(config_path, "send", check=True).stdout
    nothing = run_digest(config_path, "send", "--preview", "--out", str(out), check=True)
    assert "Nothing new to send" in nothing.stdout
    latest = run_digest(config_path, "send", "--preview", "--latest", "2", "--out", str(out), check=True)
    assert "2 posts" in latest.stdout


def test_preview_to_sends_only_to_those_addresses(config_path, smtp_server, tmp_path):
    subscribe(config_path, "ann@example.com")
    proc = run_digest(config_path, "send", "--preview", "--to", "me@example.com", "--out", str(tmp_path), check=True)
    assert "Sent preview to me@example.com" in proc.stdout
    assert [r.recipients for r in smtp_server.received] == [["me@example.com"]]
    assert smtp_server.received[0].message["Subject"] == "[Preview] Test Weekly: 5 new posts"
    with db_for(config_path) as db:
        assert db.exec(select(Edition)).all() == []


@pytest.mark.slow
def test_subscribers_import_export_list_remove_delete(config_path, smtp_server, tmp_path):
    src = tmp_path / "people.csv"
    src.write_text("email,name\nann@example.com,Ann\nnot-an-address,Bob\nANN@example.com,Dup\n"
                   "cy@example.com\n\nbad@@example.com,X\ndee@example.com,\"Dee, Jr.\"\n")
    proc = run_digest(config_path, "subscribers", "import", str(src), check=True)
    assert "Imported 3, skipped 1 already subscribed, 2 bad rows" in proc.stdout
    assert f"{src}:3:" in proc.stderr and f"{src}:7:" in proc.stderr
    rows = list(csv.reader(io.StringIO(run_digest(config_path, "subscribers", "export", check=True).stdout)))
    assert rows[0][:3] == ["email", "name", "status"]
    assert [(r[0], r[1], r[2]) for r in rows[1:]] == [
        ("ann@example.com", "Ann", "active"), ("cy@example.com", "", "active"), ("dee@example.com", "Dee, Jr.", "active")]

    assert "Unsubscribed cy@example.com" in run_digest(config_path, "subscribers", "remove", "cy@example.com", check=True).stdout
    listing = run_digest(config_path, "subscribers", "list", "--status", "active", check=True).stdout
    assert "ann@example.com" in listing and "cy@example.com" not in listing
    run_digest(config_path, "send", check=True)
    assert sorted(r.recipients[0] for r in smtp_server.received) == ["ann@example.com", "dee@example.com"]

    run_digest(config_path, "subscribers", "delete", "ann@example.com", "--yes", check=True)
    with db_for(config_path) as db:
        assert db.exec(select(Subscriber).where(Subscriber.email == "ann@example.com")).first() is None
        deliveries = db.exec(select(Delivery)).all()
        assert len(deliveries) == 2 and sum(d.subscriber_id is None for d in deliveries) == 1
    missing = run_digest(config_path, "subscribers", "remove", "zed@example.com")
    assert missing.returncode == 1 and "no subscriber zed@example.com" in missing.stderr
    bad = run_digest(config_path, "subscribers", "add", "nobody")
    assert bad.returncode == 1 and "not a valid email address" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_fetch_reports_each_source_and_fails_only_when_all_fail(tmp_path):
    config = write_config(tmp_path, feeds=[str(FIXTURES / "blogger.atom"), str(FIXTURES / "broken.xml")])
    proc = run_digest(config, "fetch")
    assert proc.returncode == 0
    assert "blogger.atom: 5 new, 0 updated, 0 unchanged" in proc.stdout
    assert "broken.xml" in proc.stderr and "not a valid feed" in proc.stderr
    assert "blogger.atom: 0 new, 0 updated, 5 unchanged" in run_digest(config, "fetch").stdout
    only_bad = write_config(tmp_path, feeds=[str(FIXTURES / "broken.xml")])
    assert run_digest(only_bad, "fetch").returncode == 1


def test_help_lists_every_command(tmp_path):
    proc = run_digest(tmp_path / "none.toml", "--help", check=True)
    for cmd in ("init", "fetch", "send", "subscribers", "editions"):
        assert cmd in proc.stdout
