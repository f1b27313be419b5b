"""The schema is made by Alembic migrations, on SQLite and PostgreSQL alike; commands refuse a
database whose schema is out of date and say which command to run."""

from __future__ import annotations

import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, select

from conftest import DIGEST, database_url, run_digest, subscribe
from digest.store import schema
from digest.store.database import make_engine, session
from digest.store.models import Subscriber

OUT_OF_DATE = "database schema is out of date: run `digest db upgrade`"


def pending_diff(engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)


def test_the_revisions_read_without_alembic_are_alembics():
    script = schema._script()
    assert len(script.get_heads()) == 1, "two migrations share a parent: add a merge revision"
    assert schema.head() == script.get_current_head()
    parents = {rev.revision: rev.down_revision for rev in script.walk_revisions()}  # None, an id or a tuple
    assert schema.revisions() == {
        rev: (down,) if isinstance(down, str) else tuple(down or ()) for rev, down in parents.items()
    }


def test_two_heads_are_an_error_naming_both(tmp_path, monkeypatch):
    versions = tmp_path / "versions"
    versions.mkdir()
    for rev, parent in (("aaa", None), ("bbb", "aaa"), ("ccc", "aaa")):
        (versions / f"{rev}.py").write_text(f"revision = {rev!r}\ndown_revision = {parent!r}\n")
    monkeypatch.setattr(schema, "MIGRATIONS", tmp_path)
    schema.revisions.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"2 heads \['bbb', 'ccc'\]: add a merge revision"):
            schema.head()
        (versions / "merge.py").write_text("revision = 'ddd'\ndown_revision: tuple = ('bbb', 'ccc')\n")
        schema.revisions.cache_clear()
        assert schema.head() == "ddd"
    finally:
        schema.revisions.cache_clear()


def test_a_command_on_a_database_at_head_loads_no_alembic(config_path):
    run_digest(config_path, "editions", check=True)  # a new database, made at head
    probe = ("import sys; from digest.cli import main; sys.argv = ['digest', '--config', sys.argv[1], 'editions'];"
             " import atexit; atexit.register(lambda: print('alembic' in sys.modules)); main()")
    proc = subprocess.run([sys.executable, "-c", probe, str(config_path)], capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines()[-1] == "False", proc.stdout


def test_an_empty_database_upgraded_to_head_matches_the_models(tmp_path):
    engine = make_engine(database_url(tmp_path))
    assert schema.state(engine).empty
    assert schema.upgrade(engine) == (None, schema.head())
    assert pending_diff(engine) == []  # no autogenerate diff: models and migrations agree
    assert schema.state(engine).up_to_date
    schema.ready(engine)  # passes
    engine.dispose()


def test_downgrade_to_nothing_and_upgrade_again(tmp_path):
    engine = make_engine(database_url(tmp_path))
    schema.upgrade(engine)
    schema.downgrade(engine, "base")
    assert [t for t in inspect(engine).get_table_names() if t != "alembic_version"] == []
    assert schema.state(engine).empty
    schema.upgrade(engine)
    assert pending_diff(engine) == []
    engine.dispose()


@pytest.mark.slow
def test_out_of_date_schema_is_refused_until_db_upgrade(config_path, smtp_server):
    subscribe(config_path, "ann@example.com")  # a new database: made at head
    engine = make_engine(run_settings_url(config_path))
    schema.downgrade(engine, schema.BASELINE)
    for args in (("send",), ("init",), ("editions",), ("worker", "--once")):
        proc = run_digest(config_path, *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stderr.strip() == f"error: {OUT_OF_DATE}"
    current = run_digest(config_path, "db", "current")
    assert current.returncode == 2 and f"database: {schema.BASELINE}" in current.stdout and OUT_OF_DATE in current.stdout
    up = run_digest(config_path, "db", "upgrade", check=True)
    assert f"upgraded from {schema.BASELINE} to revision {schema.head()}" in up.stdout
    assert "up to date" in run_digest(config_path, "db", "upgrade", check=True).stdout
    assert "Edition 1: 5 posts, 1 delivered" in run_digest(config_path, "send", check=True).stdout
    assert pending_diff(engine) == []
    engine.dispose()


@pytest.mark.slow
def test_a_database_made_before_migrations_is_adopted_by_db_upgrade(config_path, smtp_server):
    engine = make_engine(run_settings_url(config_path))
    schema.upgrade(engine, schema.BASELINE)  # the tables 0.1 made with create_all ...
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))  # ... which had no version table
    made_before_migrations = schema.state(engine)  # tables, and no version table
    assert made_before_migrations.current is None
    assert not made_before_migrations.empty
    proc = run_digest(config_path, "send")
    assert proc.returncode == 2 and OUT_OF_DATE in proc.stderr
    assert "made before migrations" in run_digest(config_path, "db", "current").stdout
    run_digest(config_path, "db", "upgrade", check=True)
    assert schema.state(engine).up_to_date and pending_diff(engine) == []
    engine.dispose()


@pytest.mark.slow
def test_a_schema_newer_than_this_digest_is_refused(config_path):
    run_digest(config_path, "editions", check=True)
    engine = make_engine(run_settings_url(config_path))
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed0042'"))
    for args in (("editions",), ("db", "upgrade")):
        proc = run_digest(config_path, *args)
        assert proc.returncode == 2 and "schema is newer than this digest (revision f00dfeed0042" in proc.stderr
        assert "Traceback" not in proc.stderr
    engine.dispose()


def test_concurrent_upgrades_of_a_new_database_wait_for_each_other(config_path):
    procs = [
        subprocess.Popen([*DIGEST, "--config", str(config_path), "db", "upgrade"], cwd=config_path.parent,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [(*p.communicate(timeout=120), p.returncode) for p in procs]
    assert all(rc == 0 for _, _, rc in results), results
    assert sum("upgraded from nothing" in out for out, _, _ in results) == 1
    engine = make_engine(run_settings_url(config_path))
    assert schema.state(engine).up_to_date and pending_diff(engine) == []
    engine.dispose()


def run_settings_url(config_path) -> str:
    from digest.config import load_settings

    return load_settings(config_path).database_url


def test_create_schema_works_on_an_in_memory_sqlite_database():
    from sqlalchemy.pool import StaticPool
    from sqlmodel import create_engine

    from digest.store.schema import create_schema

    engine = create_engine("sqlite://", poolclass=StaticPool)
    create_schema(engine)
    assert {"subscriber", "delivery", "edition"} <= set(inspect(engine).get_table_names())
    assert schema.state(engine).up_to_date


def test_comma_separated_topics_are_converted_and_back(tmp_path):
    """Subscribers' topics stored comma-separated (before 768e543b4883) become JSON arrays; a
    category with a comma that posts carry ("News, Events") is one topic again."""
    before = schema._script().get_revision("768e543b4883").down_revision
    engine = make_engine(database_url(tmp_path))
    schema.upgrade(engine, before)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO source (id, url, created_at) VALUES (1, 'https://club.test/feed', '2026-11-01 00:00:00+00:00')"))
        for i, category in enumerate(["News, Events", "News", "Tech"]):
            conn.execute(text(
                "INSERT INTO post (source_id, guid, url, title, category, display_title, excerpt, content_hash,"
                " first_seen_at, updated_at, eligible) VALUES (1, :g, '', :t, :c, :t, '', 'x',"
                " '2026-11-01 00:00:00+00:00', '2026-11-01 00:00:00+00:00', true)"), {"g": f"g{i}", "c": category, "t": f"{category}: post"})
        chosen = {
            "all@example.com": None,
            "ann@example.com": "News, Events",  # what the old form stored for "News, Events"
            "bob@example.com": "News,Tech",
            "cy@example.com": "News,News, Events,Tech",
            "dee@example.com": " Tech , Gone ",  # hand-edited; "Gone" no longer in any post
        }
        for address, categories in chosen.items():
            conn.execute(text(
                "INSERT INTO subscriber (email, status, categories, paused, created_at)"
                " VALUES (:e, 'active', :c, false, '2026-11-01 00:00:00+00:00')"), {"e": address, "c": categories})

    schema.upgrade(engine)
    with session(engine) as s:
        assert {sub.email: sub.topics for sub in s.exec(select(Subscriber))} == {
            "all@example.com": None,
            "ann@example.com": ["News, Events"],
            "bob@example.com": ["News", "Tech"],
            "cy@example.com": ["News", "News, Events", "Tech"],
            "dee@example.com": ["Gone", "Tech"],
        }
    assert pending_diff(engine) == []

    schema.downgrade(engine, before)
    with engine.connect() as conn:
        assert dict(conn.execute(text("SELECT email, categories FROM subscriber")).all()) == {
            "all@example.com": None,
            "ann@example.com": "News, Events",
            "bob@example.com": "News,Tech",
            "cy@example.com": "News,News, Events,Tech",
            "dee@example.com": "Gone,Tech",
        }
    engine.dispose()


def test_posts_get_lead_image_columns_and_keep_their_rows_both_ways(tmp_path):
    """5a1e7c3b9d40 adds the post's lead image (URL, width, height): a stored post keeps every
    value and has no image until its feed is polled again; the downgrade drops the columns only."""
    before = schema._script().get_revision("5a1e7c3b9d40").down_revision
    engine = make_engine(database_url(tmp_path))
    schema.upgrade(engine, before)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO source (id, url, created_at) VALUES (1, 'https://club.test/feed', '2026-11-01 00:00:00+00:00')"))
        conn.execute(text(
            "INSERT INTO post (id, source_id, guid, url, title, category, display_title, excerpt, content_hash,"
            " first_seen_at, updated_at, eligible) VALUES (7, 1, 'g', 'https://club.test/p', 'News: P', 'News', 'P',"
            " 'Body', 'x', '2026-11-01 00:00:00+00:00', '2026-11-01 00:00:00+00:00', true)"))
    schema.upgrade(engine, "5a1e7c3b9d40")
    read = text("SELECT id, guid, url, display_title, excerpt, image_url, image_width, image_height FROM post")
    with engine.begin() as conn:
        assert conn.execute(read).all() == [(7, "g", "https://club.test/p", "P", "Body", None, None, None)]
        conn.execute(text("UPDATE post SET image_url = 'https://club.test/p.png', image_width = 600, image_height = 400"))
    schema.downgrade(engine, before)
    assert not {"image_url", "image_width", "image_height"} & {c["name"] for c in inspect(engine).get_columns("post")}
    with engine.begin() as conn:
        assert conn.execute(text("SELECT id, guid, display_title, excerpt FROM post")).all() == [(7, "g", "P", "Body")]
    schema.upgrade(engine)
    assert pending_diff(engine) == []
    engine.dispose()


def test_editions_slots_and_readers_from_before_cadences_become_the_main_cadence_and_back(tmp_path):
    """Rows from before 5c0a9e3d7b21 are the main cadence's (""); another cadence may then number
    its editions from 1 and carry the same posts; the downgrade keeps the main cadence's."""
    before = schema._script().get_revision("5c0a9e3d7b21").down_revision
    engine = make_engine(database_url(tmp_path))
    schema.upgrade(engine, before)
    at = "'2026-11-01 09:00:00+00:00'"
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO source (id, url, created_at) VALUES (1, 'https://club.test/feed', {at})"))
        conn.execute(text(
            "INSERT INTO post (id, source_id, guid, url, title, category, display_title, excerpt, content_hash,"
            f" first_seen_at, updated_at, eligible) VALUES (1, 1, 'g', '', 'News: a', 'News', 'a', '', 'x', {at}, {at},"
            " true)"))
        conn.execute(text(f"INSERT INTO subscriber (id, email, status, paused, created_at) VALUES"
                          f" (1, 'ann@example.com', 'active', false, {at})"))
        conn.execute(text(f"INSERT INTO edition (id, number, created_at, status, subject, slot) VALUES"
                          f" (1, 1, {at}, 'sent', 'Club: 1 new post', {at})"))
        conn.execute(text("INSERT INTO editionpost (post_id, edition_id) VALUES (1, 1)"))
        conn.execute(text("INSERT INTO delivery (edition_id, subscriber_id, status, attempts) VALUES (1, 1, 'sent', 1)"))
        conn.execute(text(f"INSERT INTO schedule_run (slot, ran_at, outcome, edition_id) VALUES ({at}, {at}, 'edition', 1)"))

    schema.upgrade(engine)
    assert pending_diff(engine) == []
    with engine.begin() as conn:
        for table in ("subscriber", "edition", "editionpost", "schedule_run"):
            assert conn.execute(text(f"SELECT cadence FROM {table}")).scalars().all() == [""], table
        # the same number, slot and post in another cadence; not twice in the main one
        conn.execute(text(f"INSERT INTO edition (id, cadence, number, created_at, status, subject, slot) VALUES"
                          f" (2, 'daily', 1, {at}, 'sent', 'Club: 1 new post', {at})"))
        conn.execute(text("INSERT INTO editionpost (cadence, post_id, edition_id) VALUES ('daily', 1, 2)"))
        conn.execute(text(f"INSERT INTO schedule_run (cadence, slot, ran_at, outcome, edition_id) VALUES"
                          f" ('daily', {at}, {at}, 'edition', 2)"))
        conn.execute(text("UPDATE subscriber SET cadence = 'daily'"))
        conn.execute(text("INSERT INTO delivery (edition_id, subscriber_id, status, attempts, catch_up_from)"
                          " VALUES (2, 1, 'sent', 1, 1)"))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text(f"INSERT INTO edition (cadence, number, created_at, status, subject) VALUES"
                          f" ('', 1, {at}, 'sent', 'again')"))

    schema.downgrade(engine, before)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, number FROM edition")).all() == [(1, 1)]
        assert conn.execute(text("SELECT post_id, edition_id FROM editionpost")).all() == [(1, 1)]
        assert conn.execute(text("SELECT edition_id FROM delivery")).scalars().all() == [1]
        assert conn.execute(text("SELECT edition_id FROM schedule_run")).scalars().all() == [1]
        assert conn.execute(text("SELECT email FROM subscriber")).scalars().all() == ["ann@example.com"]
    schema.upgrade(engine)
    assert pending_diff(engine) == []
    engine.dispose()


def test_the_downgrade_keeps_a_main_delivery_that_caught_up_from_another_cadence(tmp_path):
    """A reader back in the main cadence from 'daily': their first main edition's delivery records
    daily's edition as where they stood (catch_up_from). The downgrade drops daily's editions and
    keeps that delivery (PostgreSQL checks the foreign key)."""
    cadences = "5c0a9e3d7b21"
    before = schema._script().get_revision(cadences).down_revision
    engine = make_engine(database_url(tmp_path))
    schema.upgrade(engine, cadences)
    at = "'2026-11-01 09:00:00+00:00'"
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO subscriber (id, email, status, paused, created_at) VALUES"
                          f" (1, 'ann@example.com', 'active', false, {at})"))
        for id_, cadence, number in ((1, "", 1), (2, "daily", 1), (3, "", 2)):
            conn.execute(text(f"INSERT INTO edition (id, cadence, number, created_at, status, subject) VALUES"
                              f" ({id_}, '{cadence}', {number}, {at}, 'sent', 'Club')"))
        conn.execute(text("INSERT INTO delivery (edition_id, subscriber_id, status, attempts) VALUES (1, 1, 'sent', 1)"))
        conn.execute(text("INSERT INTO delivery (edition_id, subscriber_id, status, attempts, catch_up_from)"
                          " VALUES (2, 1, 'sent', 1, 1)"))
        conn.execute(text("INSERT INTO delivery (edition_id, subscriber_id, status, attempts, catch_up_from)"
                          " VALUES (3, 1, 'sent', 1, 2)"))
    schema.downgrade(engine, before)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM edition ORDER BY id")).scalars().all() == [1, 3]
        assert conn.execute(text("SELECT edition_id FROM delivery ORDER BY id")).scalars().all() == [1, 3]
    schema.upgrade(engine)
    assert pending_diff(engine) == []
    engine.dispose()
