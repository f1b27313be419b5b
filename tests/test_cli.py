"""The operator's commands: preview, subscribers, editions, fetch."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess

from sqlmodel import select

import pytest

from conftest import DIGEST, FIXTURES, free_port, one_line_error, run_digest, write_config
from digest.config import load_settings
from digest.models import Delivery, Edition, Post, Subscriber
from digest.store import make_engine, session


def db_for(config):
    return session(make_engine(load_settings(config).database_url))


def test_preview_writes_files_and_records_nothing(config_path, smtp_server, tmp_path):
    run_digest(config_path, "subscribers", "add", "ann@example.com", check=True)
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
    run_digest(config_path, "subscribers", "add", "ann@example.com", check=True)
    proc = run_digest(config_path, "send", "--preview", "--to", "me@example.com", "--out", str(tmp_path), check=True)
    assert "Sent preview to me@example.com" in proc.stdout
    assert [r.recipients for r in smtp_server.received] == [["me@example.com"]]
    assert smtp_server.received[0].message["Subject"] == "[Preview] Test Weekly: 5 new posts"
    with db_for(config_path) as db:
        assert db.exec(select(Edition)).all() == []


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


def test_an_unreachable_postgresql_server_is_one_line_naming_host_and_port(tmp_path):
    port = free_port()  # nothing listens there: the connection is refused
    config = write_config(tmp_path, database_url=f"postgresql+psycopg://digest:s3cret@127.0.0.1:{port}/digest")
    proc = run_digest(config, "editions")
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert line.startswith(f"error: database postgresql+psycopg://digest:***@127.0.0.1:{port}/digest: connection failed")
    assert f'"127.0.0.1", port {port} failed: Connection refused' in line and "s3cret" not in line
    serve = run_digest(config, "serve", "--port", str(free_port()), timeout=30)
    assert serve.returncode == 1 and one_line_error(serve) == line


def test_a_read_only_database_is_one_line(tmp_path):
    config = write_config(tmp_path, database_url=f"sqlite:///{tmp_path / 'ro.db'}")
    run_digest(config, "editions", check=True)
    (tmp_path / "ro.db").chmod(0o444)
    command = [*DIGEST, "--config", str(config), "subscribers", "add", "ann@example.com"]
    if os.geteuid() == 0:  # root writes to any file: drop the capability to ignore file modes
        if not shutil.which("setpriv"):
            pytest.skip("needs setpriv (util-linux) to run without CAP_DAC_OVERRIDE as root")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", *command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 1
    assert one_line_error(proc) == f"error: database sqlite:///{tmp_path / 'ro.db'}: attempt to write a readonly database"


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs: a real full disk (ENOSPC). Mounting needs root."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_is_one_line_and_loses_nothing(tmp_path, small_disk):
    config = write_config(small_disk, database_url=f"sqlite:///{small_disk / 'digest.db'}")
    run_digest(config, "subscribers", "add", "ann@example.com", check=True)
    people = tmp_path / "people.csv"
    # ~2.5 MB of rows and index for a 1 MB disk: the disk fills during the import.
    people.write_text("".join(f"reader{i}@example.com,Reader number {i}\n" for i in range(30_000)))
    proc = run_digest(config, "subscribers", "import", str(people))
    assert proc.returncode == 1
    assert one_line_error(proc) == f"error: database sqlite:///{small_disk / 'digest.db'}: database or disk is full"
    listing = run_digest(config, "subscribers", "list", check=True).stdout
    assert "ann@example.com" in listing and "1 subscriber" in listing  # the import was all or nothing


def test_importing_a_file_that_is_not_utf8_imports_nothing(config_path, tmp_path):
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("email,name\nann@example.com,Ann\nrene@example.com,René\n".encode("latin-1"))
    proc = run_digest(config_path, "subscribers", "import", str(latin1))
    assert proc.returncode == 1
    assert one_line_error(proc).startswith(f"error: {latin1}:3: not UTF-8 (byte 0xe9); nothing imported")
    huge = tmp_path / "huge.csv"
    huge.write_text("ann@example.com,Ann\n" + "x" * 200_000 + "\n")
    proc = run_digest(config_path, "subscribers", "import", str(huge))
    assert one_line_error(proc) == f"error: {huge}:2: not readable as CSV: field larger than field limit (131072); nothing imported"
    assert "0 subscribers" in run_digest(config_path, "subscribers", "list", check=True).stdout
    latin1.write_bytes("\ufeffemail,name\nann@example.com,Ann\nrene@example.com,René\n".encode("utf-8"))
    assert "Imported 2" in run_digest(config_path, "subscribers", "import", str(latin1), check=True).stdout
