"""The operator's commands: preview, subscribers, editions, fetch."""

from __future__ import annotations

import csv
import io
import os
import shutil
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlmodel import select

from conftest import DIGEST, FIXTURES, free_port, one_line_error, run_digest, subscribe, write_config
from digest.config import load_settings
from digest.store.database import make_engine, session
from digest.store.models import Delivery, Edition, Post, Subscriber


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


def test_preview_of_an_edition_too_large_for_one_email_shows_what_is_sent(tmp_path, smtp_server):
    import re

    from feedgen import write_feed

    feed = write_feed(tmp_path / "big.atom", list(range(1, 301)))
    config = write_config(tmp_path, feeds=[str(feed)], smtp_port=smtp_server.port)
    subscribe(config, "ann@example.com")  # in this process: the subject is what follows
    out = tmp_path / "out"
    proc = run_digest(config, "send", "--preview", "--out", str(out), check=True)
    text = (out / "preview.txt").read_text()
    shown = len(re.findall(r"^Post \d+$", text, re.M))
    assert 0 < shown < 300
    assert f"...and {300 - shown} more on the web: http://127.0.0.1:8000/archive/1" in text
    assert f"The email shows {shown} of them and links to the other {300 - shown} on the web" in proc.stdout
    run_digest(config, "send", check=True)
    [received] = smtp_server.received
    sent = received.message.get_payload()[0].get_content().replace("\r\n", "\n")
    assert len(re.findall(r"^Post \d+$", sent, re.M)) == shown and len(received.data) < 102_000


def test_preview_to_sends_only_to_those_addresses(config_path, smtp_server, tmp_path):
    subscribe(config_path, "ann@example.com")
    proc = run_digest(config_path, "send", "--preview", "--to", "me@example.com", "--out", str(tmp_path), check=True)
    assert "Sent preview to me@example.com" in proc.stdout
    assert [r.recipients for r in smtp_server.received] == [["me@example.com"]]
    assert smtp_server.received[0].message["Subject"] == "[Preview] Test Weekly: 5 new posts"
    with db_for(config_path) as db:
        assert db.exec(select(Edition)).all() == []


def test_names_added_or_imported_are_stored_without_invisible_characters(config_path, tmp_path):
    run_digest(config_path, "subscribers", "add", "ann@example.com", "--name", "Ann\u202e \u200fLee\u200b", check=True)
    src = tmp_path / "people.csv"
    src.write_text("email,name\nbob@example.com,\u2067Bob\u2069 \u00adJones\nlong@example.com," + "Long " * 100 + "\n",
                   encoding="utf-8")
    run_digest(config_path, "subscribers", "import", str(src), check=True)
    rows = list(csv.reader(io.StringIO(run_digest(config_path, "subscribers", "export", check=True).stdout)))
    names = {r[0]: r[1] for r in rows[1:]}
    assert names["ann@example.com"] == "Ann Lee" and names["bob@example.com"] == "Bob Jones"
    assert len(names["long@example.com"]) <= 200 and names["long@example.com"].endswith("Long…")


@pytest.mark.slow
def test_subscribers_import_export_list_remove_delete(config_path, smtp_server, tmp_path):
    src = tmp_path / "people.csv"
    src.write_text("email,name\nann@example.com,Ann\nnot-an-address,Bob\nANN@example.com,Dup\n"
                   "cy@example.com\n\nbad@@example.com,X\ndee@example.com,\"Dee, Jr.\"\n")
    proc = run_digest(config_path, "subscribers", "import", str(src), check=True)
    assert "Imported 3, skipped 1 already subscribed, 2 bad rows" in proc.stdout
    assert f"{src}:3:" in proc.stderr and f"{src}:7:" in proc.stderr
    with db_for(config_path) as db:  # topics as the preferences page stores them; a name may hold a comma
        dee = db.exec(select(Subscriber).where(Subscriber.email == "dee@example.com")).one()
        dee.topics = ["News, Events", "In Focus"]
        db.add(dee)
        db.commit()
    rows = list(csv.reader(io.StringIO(run_digest(config_path, "subscribers", "export", check=True).stdout)))
    assert rows[0] == ["email", "name", "status", "created_at", "confirmed_at", "topics"]
    assert [(r[0], r[1], r[2], r[5]) for r in rows[1:]] == [
        ("ann@example.com", "Ann", "active", ""), ("cy@example.com", "", "active", ""),
        ("dee@example.com", "Dee, Jr.", "active", '["In Focus","News, Events"]')]

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


# --- untrusted text, confirmations, failures (hardening) ---------------------------------------

HOSTILE = ("[/]", "[bold]x[/", "[red]Eve[/red] :zap:")


def test_names_from_a_csv_are_printed_as_they_are_and_the_whole_file_imported(config_path, tmp_path):
    src = tmp_path / "people.csv"
    src.write_text("email,name\n" + "".join(f"p{i}@example.com,\"{name}\"\n" for i, name in enumerate(HOSTILE))
                   + "[/]@@example.com,Bad\nlast@example.com,Last\n")
    proc = run_digest(config_path, "subscribers", "import", str(src))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "Imported 4, skipped 0 already subscribed, 1 bad row" in proc.stdout
    assert f"{src}:5: not a valid email address: '[/]@@example.com'" in proc.stderr
    listing = run_digest(config_path, "subscribers", "list", check=True).stdout
    for name in HOSTILE:
        assert name in listing
    added = run_digest(config_path, "subscribers", "add", "[/]@example.com")
    assert added.returncode == 1 and "not a valid email address: '[/]@example.com'" in added.stderr
    assert "Traceback" not in added.stderr


def test_a_feed_category_is_printed_as_it_is(smtp_server, tmp_path):
    feed = tmp_path / "feed.atom"
    feed.write_text(
        "<?xml version='1.0' encoding='UTF-8'?><feed xmlns='http://www.w3.org/2005/Atom'>"
        "<id>urn:test:blog</id><title>Test blog</title><updated>2026-11-26T08:00:00Z</updated>"
        "<entry><id>urn:test:1</id><title>[bold]x[/: The post</title><link href='https://blog.test/1'/>"
        "<updated>2026-11-26T08:00:00Z</updated><summary>Body.</summary></entry></feed>", encoding="utf-8")
    config = write_config(tmp_path, feeds=[str(feed)], smtp_port=smtp_server.port)
    subscribe(config, "ann@example.com")  # in this process: the subject is what follows
    preview = run_digest(config, "send", "--preview", "--out", str(tmp_path / "out"))
    assert preview.returncode == 0 and "Traceback" not in preview.stderr, preview.stderr
    assert "[bold]x[/ (1)" in preview.stdout
    assert "Edition 1: 1 post, 1 delivered" in run_digest(config, "send", check=True).stdout
    show = run_digest(config, "editions", "show", "1")
    assert show.returncode == 0 and "[[bold]x[/] The post" in show.stdout, show.stderr


def test_an_smtp_reply_is_printed_as_it_is(config_path, smtp_server):
    for address in ("ann@example.com", "bob@example.com"):
        run_digest(config_path, "subscribers", "add", address, check=True)
    smtp_server.refuse["bob@example.com"] = "550 [/] no"
    proc = run_digest(config_path, "send")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "Edition 1: 5 posts, 1 delivered, 1 failed" in proc.stdout
    assert "failed bob@example.com: 550 [/] no" in proc.stderr
    show = run_digest(config_path, "editions", "show", "1", check=True).stdout
    assert "bob@example.com: 550 [/] no" in show


@pytest.fixture
def odd_http_server():
    """A feed server on 127.0.0.1 whose every answer is `503 [/]oops`."""

    class Odd(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(503, "[/]oops")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Odd)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_http_reason_phrase_is_printed_as_it_is_and_send_fails_when_every_feed_failed(odd_http_server, smtp_server, tmp_path):
    url = f"{odd_http_server}/feed.atom"
    config = write_config(tmp_path, feeds=[url, str(FIXTURES / "broken.xml")], smtp_port=smtp_server.port)
    subscribe(config, "ann@example.com")  # in this process: the subject is what follows
    fetch = run_digest(config, "fetch")
    assert fetch.returncode == 1 and "Traceback" not in fetch.stderr, fetch.stderr
    assert f"{url}: HTTP 503 [/]oops" in fetch.stderr
    send = run_digest(config, "send")
    assert send.returncode == 1 and "Traceback" not in send.stderr, send.stderr
    assert f"{url}: HTTP 503 [/]oops" in send.stderr and "not a valid feed" in send.stderr
    assert "Nothing new to send" not in send.stdout
    last = send.stderr.strip().splitlines()[-1]
    assert "every feed failed" in last and url in last and "broken.xml" in last
    assert smtp_server.received == []


def test_send_prints_each_feed_before_an_smtp_error(tmp_path):
    from conftest import free_port

    port = free_port()  # nothing listens there
    config = write_config(tmp_path, smtp_port=port)
    subscribe(config, "ann@example.com")  # in this process: the subject is what follows
    proc = run_digest(config, "send")
    assert proc.returncode == 1 and f"127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr
    assert "blogger.atom: 5 new, 0 updated, 0 unchanged" in proc.stdout


def _digest_with_input(config, *args, stdin_text):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    return subprocess.run([*DIGEST, "--config", str(config), *args], input=stdin_text, capture_output=True,
                          text=True, env=env, timeout=60, cwd=config.parent)


def test_delete_without_a_terminal_needs_yes(config_path):
    subscribe(config_path, "ann@example.com")  # in this process: the subject is what follows
    proc = _digest_with_input(config_path, "subscribers", "delete", "ann@example.com", stdin_text="n\n")
    assert proc.returncode == 1 and "Erased" not in proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1 and "--yes" in proc.stderr and "ann@example.com" in proc.stderr
    proc = _digest_with_input(config_path, "subscribers", "delete", "ann@example.com", stdin_text="y\n")
    assert proc.returncode == 1
    with db_for(config_path) as db:
        assert db.exec(select(Subscriber).where(Subscriber.email == "ann@example.com")).first() is not None
    proc = _digest_with_input(config_path, "subscribers", "delete", "ann@example.com", "--yes", stdin_text="")
    assert proc.returncode == 0 and "Erased ann@example.com" in proc.stdout
    with db_for(config_path) as db:
        assert db.exec(select(Subscriber).where(Subscriber.email == "ann@example.com")).first() is None


def test_init_writes_the_config_readable_by_its_owner_only(tmp_path):
    config = tmp_path / "new" / "digest.toml"
    config.parent.mkdir()
    proc = run_digest(config, "init", check=True)
    assert f"Wrote {config}" in proc.stdout
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert "secret_key" in config.read_text()


def test_credentials_in_clear_to_another_host_are_warned_about_once(tmp_path):
    config = write_config(tmp_path)
    text = config.read_text()
    # relay.invalid is never looked up or connected to: with --no-fetch and no posts stored, there is
    # nothing to send (the reserved .invalid name would fail anyway).
    remote = text.replace('host = "127.0.0.1"', 'host = "relay.invalid"').replace('# username = ""', 'username = "u"\npassword = "p"')
    config.write_text(remote)
    proc = run_digest(config, "send", "--no-fetch", check=True)
    assert "Nothing new to send" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "relay.invalid" in warnings[0] and 'security = "none"' in warnings[0]
    for safe in (remote.replace('security = "none"', 'security = "starttls"'),  # encrypted
                 text.replace('# username = ""', 'username = "u"\npassword = "p"'),  # loopback
                 text.replace('host = "127.0.0.1"', 'host = "relay.invalid"')):  # no credentials
        config.write_text(safe)
        proc = run_digest(config, "send", "--no-fetch", check=True)
        assert "WARNING" not in proc.stderr, proc.stderr


def test_non_ascii_addresses_are_imported_and_counted_as_needing_smtputf8(config_path, tmp_path):
    src = tmp_path / "people.csv"
    src.write_text("josé@exämple.org,José\nann@example.com\nbob@exämple.org\n", encoding="utf-8")
    proc = run_digest(config_path, "subscribers", "import", str(src), check=True)
    assert "Imported 3, skipped 0 already subscribed, 0 bad rows" in proc.stdout
    assert "2 of them are non-ASCII addresses: they need an SMTP relay that offers SMTPUTF8" in proc.stdout
    export = run_digest(config_path, "subscribers", "export", check=True).stdout
    assert "josé@exämple.org" in export and "bob@exämple.org" in export
    added = run_digest(config_path, "subscribers", "add", "zoë@example.org", check=True).stdout
    assert "Added zoë@example.org" in added and "SMTPUTF8" in added


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
    subscribe(config, "ann@example.com")  # in this process: the subject is what follows
    people = tmp_path / "people.csv"
    # ~2.5 MB of rows and index for a 1 MB disk: the disk fills during the import.
    people.write_text("".join(f"reader{i}@example.com,Reader number {i}\n" for i in range(30_000)))
    # --log-level warning: without the progress lines of this import (long on a loaded machine)
    proc = run_digest(config, "--log-level", "warning", "subscribers", "import", str(people))
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


def test_a_command_ends_as_any_program_does_output_complete_exit_handlers_run(config_path, tmp_path):
    """cli.main() ends with gc.freeze() and sys.exit (see there, with its measured reason): what a
    command printed through a pipe arrives whole, its exit code comes through, and exit handlers of
    a program that embeds it (here: one that counts the rows) run."""
    people = tmp_path / "people.csv"
    people.write_text("email\n" + "".join(f"reader{i:05}@example.com\n" for i in range(3000)))  # > a 64 KiB pipe
    run_digest(config_path, "subscribers", "import", str(people), check=True)
    program = ("import atexit, sys; from digest.cli import main;"
               " atexit.register(lambda: print('exit handler ran', file=sys.stderr));"
               " sys.argv = ['digest', '--config', sys.argv[1], *sys.argv[2:]]; main()")

    def digest_in(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", program, str(config_path), *args], capture_output=True, text=True)

    export = digest_in("subscribers", "export")
    assert export.returncode == 0, export.stderr
    assert len(list(csv.reader(io.StringIO(export.stdout)))) == 3001
    assert export.stderr == "exit handler ran\n"
    missing = digest_in("subscribers", "remove", "zed@example.com")
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == ["error: no subscriber zed@example.com", "exit handler ran"]


# --- the operator's view: version, options, wording, tables ------------------------------------


def test_version_is_the_installed_distributions(tmp_path):
    from importlib.metadata import version

    proc = run_digest(tmp_path / "none.toml", "--version", check=True)
    assert proc.stdout.strip() == f"digest {version('digest-mailer')}"


def test_config_is_accepted_after_the_command_name_and_twice_only_when_the_same(config_path, tmp_path):
    def digest(*args):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
        return subprocess.run([*DIGEST, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)

    added = digest("subscribers", "add", "ann@example.com", "--config", str(config_path))
    assert added.returncode == 0 and "Added ann@example.com" in added.stdout, added.stderr
    listed = digest("editions", "--config", str(config_path))
    assert listed.returncode == 0 and "No editions yet." in listed.stdout, listed.stderr
    both = digest("--config", str(config_path), "subscribers", "list", "-c", str(tmp_path / "other.toml"))
    assert both.returncode == 1
    assert one_line_error(both) == f"error: --config given twice: {config_path} and {tmp_path / 'other.toml'}; give one"


@pytest.mark.parametrize("command", [(), ("init",), ("send",), ("serve",), ("worker",), ("subscribers", "list")])
def test_help_shows_no_type_names_for_flags_or_lists(tmp_path, command):
    proc = run_digest(tmp_path / "none.toml", *command, "--help", check=True)
    assert "<bool>" not in proc.stdout
    assert "<list[" not in proc.stdout


def test_one_post_is_said_in_the_singular(tmp_path, smtp_server):
    from feedgen import write_feed

    config = write_config(tmp_path, feeds=[str(write_feed(tmp_path / "one.atom", [1]))], smtp_port=smtp_server.port)
    subscribe(config, "ann@example.com")
    preview = run_digest(config, "send", "--preview", "--out", str(tmp_path / "out"), check=True)
    assert "1 post in 1 section: News (1)" in preview.stdout
    sent = run_digest(config, "send", check=True)
    assert "Edition 1: 1 post, 1 delivered, 0 failed" in sent.stdout
    assert smtp_server.received[0].message["Subject"] == "Test Weekly: 1 new post"


def test_tables_fit_80_columns_and_show_whole_addresses(config_path, smtp_server, tmp_path):
    address = "a.rather.long.local.part.for.a.person@mail.subdomain.of-a-long-domain-name.example.com"
    run_digest(config_path, "subscribers", "add", address, "--name", "Bartholomew Montgomery-Fitzgerald III",
               check=True)
    run_digest(config_path, "send", check=True)
    tables = {command: run_digest(config_path, *command, env={"COLUMNS": "80"}, check=True).stdout
              for command in (("subscribers", "list"), ("editions",))}
    for table in tables.values():
        assert max(len(line) for line in table.splitlines()) <= 80, table
    listing = tables["subscribers", "list"]
    first_column = "".join(line.split("│")[1].strip() for line in listing.splitlines() if line.startswith("│"))
    assert first_column == address, listing


def test_schedule_in_utc_shows_each_time_once(config_path):
    proc = run_digest(config_path, "schedule", "-n", "2", check=True)
    upcoming = proc.stdout.split("Next sends:\n")[1].splitlines()[:2]
    assert all(line.count("UTC") == 1 and "=" not in line for line in upcoming), proc.stdout


def test_subscribers_add_records_the_confirmation_as_import_does(config_path):
    run_digest(config_path, "subscribers", "add", "ann@example.com", check=True)
    [_, ann] = list(csv.reader(io.StringIO(run_digest(config_path, "subscribers", "export", check=True).stdout)))
    assert ann[4] != "" and ann[4] == ann[3]  # confirmed_at, when it was added


def test_a_csv_row_with_an_extra_column_is_reported(config_path, tmp_path):
    src = tmp_path / "people.csv"
    src.write_text("ann@example.com,Ann,Paris\nbob@example.com,Bob,,\n")
    proc = run_digest(config_path, "subscribers", "import", str(src), check=True)
    assert f"{src}:1: 3 columns; expected email[,name]" in proc.stderr
    assert "Imported 1, skipped 0 already subscribed, 1 bad row\n" in proc.stdout


def test_init_refuses_a_feed_with_an_unknown_scheme_before_writing_anything(tmp_path):
    config = tmp_path / "digest.toml"
    proc = run_digest(config, "init", "--feed", "htps://blog.test/feed")
    assert proc.returncode == 2
    assert one_line_error(proc) == (
        "error: --feed 'htps://blog.test/feed': scheme 'htps' is not supported (http://, https:// or a local file path)"
    )
    assert not config.exists()


def test_a_folder_that_cannot_be_written_is_one_line_naming_it(config_path, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    proc = run_digest(config_path, "send", "--preview", "--latest", "1", "--out", str(blocked / "out"))
    assert proc.returncode == 1
    assert one_line_error(proc) == f"error: Not a directory: {blocked / 'out'}"


# --- progress of long jobs (a bar on a terminal, a log line every --progress-every seconds otherwise)

def _slow_relay(smtp_server) -> None:
    """The relay takes 4 ms a message, so that a send to 1,000 lasts seconds even on a fast machine
    (1,000 rather than 2,000 readers: the same seconds of relay, half the rendering)."""
    import time

    smtp_server.data_hook = lambda n: time.sleep(0.004)


@pytest.mark.slow
def test_a_long_send_logs_its_progress_and_a_short_one_does_not(config_path, smtp_server):
    import re

    subscribe(config_path, *(f"reader{i}@example.com" for i in range(1000)))
    _slow_relay(smtp_server)
    proc = run_digest(config_path, "--progress-every", "0.5", "send", check=True, timeout=600)
    assert "Edition 1: 5 posts, 1000 delivered, 0 failed" in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if "edition 1:" in line]
    assert lines, proc.stderr
    assert all(re.search(r" INFO edition 1: [\d,]+ of 1,000 sent, 0 failed$", line) for line in lines), lines
    # a short job (one feed from a file, nothing to send) says nothing more than before
    again = run_digest(config_path, "--progress-every", "0.01", "send", check=True)
    assert again.stderr == "" and again.stdout.endswith("Nothing new to send.\n")


@pytest.mark.slow
def test_a_long_send_on_a_terminal_shows_a_progress_bar(config_path, smtp_server):
    import pty
    import select as select_

    subscribe(config_path, *(f"reader{i}@example.com" for i in range(1000)))
    _slow_relay(smtp_server)
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env.update(COLUMNS="100", TERM="xterm")
    proc = subprocess.Popen([*DIGEST, "--config", str(config_path), "send"], stdin=follower, stdout=follower,
                            stderr=follower, env=env, cwd=config_path.parent)
    os.close(follower)
    seen = b""
    while True:
        ready, _, _ = select_.select([leader], [], [], 600)
        if not ready:
            proc.kill()
            raise AssertionError(f"no output for 600 s: {seen!r}")
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the command ended and closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert proc.wait(60) == 0, seen
    text = seen.decode("utf-8", "replace")
    assert "sending edition 1" in text and "1000/1000" in text, text[-2000:]
    assert "Edition 1: 5 posts, 1000 delivered, 0 failed" in text


def test_a_long_import_logs_its_progress(config_path, tmp_path):
    src = tmp_path / "many.csv"
    src.write_text("email\n" + "".join(f"reader{i}@example.com\n" for i in range(5000)))
    # --progress-every 0.01: a job is long once it has run 0.01 s (2 s by default)
    proc = run_digest(config_path, "--progress-every", "0.01", "subscribers", "import", str(src), check=True)
    assert "Imported 5000, skipped 0 already subscribed, 0 bad rows" in proc.stdout
    logged = [line.split(" INFO ", 1)[1] for line in proc.stderr.splitlines() if " INFO " in line]
    assert logged and set(logged) <= {f"{src}: {n},000 of about 5,001 rows read" for n in range(1, 6)}, proc.stderr
    assert run_digest(config_path, "subscribers", "import", str(src), check=True).stderr == ""  # 2 s by default


def test_a_long_fetch_logs_its_progress(tmp_path):
    import time

    body = (FIXTURES / "blogger.atom").read_bytes()

    class Slow(BaseHTTPRequestHandler):
        """/0.atom answers at once, /1.atom after 1 s, /3.atom after 3 s."""

        def log_message(self, *args):
            pass

        def do_GET(self):
            time.sleep(int(self.path.strip("/").split(".")[0]))
            self.send_response(200)
            self.send_header("Content-Type", "application/atom+xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        config = write_config(tmp_path, feeds=[f"{base}/0.atom", f"{base}/1.atom", f"{base}/3.atom"])
        # --progress-every 0.01: a job is long once it has run 0.01 s (2 s by default)
        proc = run_digest(config, "--progress-every", "0.01", "fetch", check=True)
        short = run_digest(write_config(tmp_path, feeds=[f"{base}/0.atom"]), "fetch", check=True)
    finally:
        server.shutdown()
        server.server_close()
    logged = [line.split(" INFO ", 1)[1] for line in proc.stderr.splitlines() if " INFO " in line]
    # the last feed is not logged: the command's report of every feed follows at once
    assert "fetched 2 of 3 feeds" in logged and set(logged) <= {"fetched 1 of 3 feeds", "fetched 2 of 3 feeds"}
    assert short.stderr == ""


@pytest.mark.slow
def test_a_send_with_progress_starts_its_sender_processes_with_fork(tmp_path, smtp_server):
    """The progress of a send runs in the main thread, and nothing else starts a thread (webhooks are
    only queued): with a thread alive, the sender processes would be started with forkserver
    (slower, and ~70 MB more)."""
    import re

    config = write_config(tmp_path, smtp_port=smtp_server.port, connections=2)
    config.write_text(config.read_text() + '\n[[webhooks]]\nurl = "http://127.0.0.1:9/hook"\n'
                      'secret = "test-secret-0123456789"\nevents = ["edition.sent"]\n')
    subscribe(config, *(f"reader{i}@example.com" for i in range(1000)))
    _slow_relay(smtp_server)
    proc = run_digest(config, "--log-level", "debug", "--progress-every", "0.5", "send", check=True, timeout=600)
    assert "Edition 1: 5 posts, 1000 delivered, 0 failed" in proc.stdout
    started = re.findall(r" DEBUG starting 2 processes with (\w+)$", proc.stderr, re.M)
    assert started == ["fork"], proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if " INFO edition 1:" in line]
    assert lines and all(re.search(r" INFO edition 1: [\d,]+ of 1,000 sent, 0 failed$", line) for line in lines), lines


def test_the_progress_bar_of_a_send_starts_no_thread(capsys):
    """A bar drawn on a terminal (rich's own refresh thread is off) leaves the sender pool with fork."""
    from digest import progress
    from digest.delivery import pool

    before = threading.active_count()
    shown = []
    with progress.watch(lambda: ("sending edition 1", 10, 2000, "edition 1"), tick=0, terminal=True) as tick:
        tick()
        tick()
        shown.append(threading.active_count())
    assert shown == [before]
    if before == 1:  # a test runner with threads of its own (pytest-xdist) would make it forkserver anyway
        assert pool.start_method() == "fork"
    assert "sending edition 1" in capsys.readouterr().err
