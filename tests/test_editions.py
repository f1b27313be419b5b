"""Which posts go into an edition: each exactly once, late posts not lost, edits not resent."""

from __future__ import annotations

import shutil
from datetime import timedelta

from sqlmodel import select

from conftest import FIXTURES, ON_POSTGRES, database_url, run_digest, write_config
from digest.config import load_settings
from digest.content import editions
from digest.service import pipeline
from digest.store.database import make_engine, session
from digest.store.models import EditionPost, Post, Source

ENTRY = """<entry><id>tag:test,2026:{id}</id><published>{date}</published><updated>{date}</updated>
<title type='text'>{title}</title><content type='html'>&lt;p&gt;{body}&lt;/p&gt;</content>
<link rel='alternate' type='text/html' href='https://blog.test/{id}.html'/><author><name>Ann</name></author></entry>"""


def feed(entries: list[dict]) -> str:
    return ("<?xml version='1.0' encoding='UTF-8'?><feed xmlns='http://www.w3.org/2005/Atom'><id>tag:test</id>"
            "<title>Test blog</title><updated>2026-11-26T00:00:00Z</updated>"
            + "".join(ENTRY.format(**{"body": "Body text.", **e}) for e in entries) + "</feed>")


def setup(tmp_path, entries, **kw):
    path = tmp_path / "feed.atom"
    path.write_text(feed(entries))
    cfg = load_settings(write_config(tmp_path, feeds=[str(path)], **kw))
    return cfg, path


def new_edition(db, clock, cfg):
    return editions.create(db, clock, subject_template=cfg.newsletter.subject, newsletter_name=cfg.newsletter.name)


def edition_titles(db, edition):
    return sorted(p.title for s in editions.edition_view(db, edition).sections for p in s.posts)


def test_every_post_goes_into_exactly_one_edition(tmp_path, db, clock):
    cfg, path = setup(tmp_path, [{"id": 1, "date": "2026-11-20T10:00:00Z", "title": "Explained: One"}])
    # point the session's engine at this config's database
    pipeline.poll(db, cfg, clock)
    first = new_edition(db, clock, cfg)
    assert first.number == 1 and edition_titles(db, first) == ["Explained: One"]
    assert new_edition(db, clock, cfg) is None  # nothing new

    # A backdated post that appears later is not lost: it goes into the next edition.
    path.write_text(feed([
        {"id": 1, "date": "2026-11-20T10:00:00Z", "title": "Explained: One"},
        {"id": 2, "date": "2026-10-01T10:00:00Z", "title": "Explained: Backdated"},
    ]))
    clock.now += timedelta(days=7)
    report = pipeline.poll(db, cfg, clock)[0]
    assert (report.new, report.unchanged) == (1, 1)
    second = new_edition(db, clock, cfg)
    assert second.number == 2 and edition_titles(db, second) == ["Explained: Backdated"]
    post_ids = db.exec(select(EditionPost.post_id)).all()
    assert len(post_ids) == len(set(post_ids)) == 2


def test_edited_after_sending_is_not_sent_again(tmp_path, db, clock):
    cfg, path = setup(tmp_path, [{"id": 1, "date": "2026-11-20T10:00:00Z", "title": "Explained: One"}])
    pipeline.poll(db, cfg, clock)
    new_edition(db, clock, cfg)
    path.write_text(feed([{"id": 1, "date": "2026-11-20T10:00:00Z", "title": "Explained: One (fixed typo)", "body": "New"}]))
    pipeline.poll(db, cfg, clock)
    assert new_edition(db, clock, cfg) is None
    # an unsent post does pick up its edit
    path.write_text(feed([
        {"id": 1, "date": "2026-11-20T10:00:00Z", "title": "Explained: One (fixed typo)", "body": "New"},
        {"id": 3, "date": "2026-11-21T10:00:00Z", "title": "Explained: Draft"},
    ]))
    pipeline.poll(db, cfg, clock)
    path.write_text(feed([{"id": 3, "date": "2026-11-21T10:00:00Z", "title": "Explained: Final"}]))
    report = pipeline.poll(db, cfg, clock)[0]
    assert report.updated == 1
    assert edition_titles(db, new_edition(db, clock, cfg)) == ["Explained: Final"]


def test_new_install_only_takes_recent_posts(tmp_path, db, clock):
    cfg, _ = setup(tmp_path, [
        {"id": 1, "date": "2026-11-24T10:00:00Z", "title": "Explained: Recent"},
        {"id": 2, "date": "2026-10-01T10:00:00Z", "title": "Explained: Old"},
    ], first_edition_days=7)
    pipeline.poll(db, cfg, clock)
    assert [p.title for p in editions.unsent_posts(db)] == ["Explained: Recent"]
    assert db.exec(select(Post).where(Post.title == "Explained: Old")).one().eligible is False


def test_sections_follow_config_order_then_alphabet_newest_first(tmp_path, db, clock):
    cfg = load_settings(write_config(tmp_path, feeds=[str(FIXTURES / "blogger.atom")],
                                     extra='\n'))
    pipeline.poll(db, cfg, clock)
    posts = editions.unsent_posts(db)
    plain = editions.sections(posts)
    assert [s.name for s in plain] == ["Architecture", "Explained", "In Focus"]
    assert [p.display_title for p in plain[0].posts] == ["Confluent Cloud Gateway", "Snowflake"]
    ordered = editions.sections(posts, ["In Focus", "explained"])
    assert [s.name for s in ordered] == ["In Focus", "Explained", "Architecture"]


def test_a_failing_source_does_not_stop_the_others(tmp_path, db, clock):
    broken = tmp_path / "broken.xml"
    shutil.copy(FIXTURES / "broken.xml", broken)
    cfg = load_settings(write_config(tmp_path, feeds=[str(broken), str(FIXTURES / "blogger.atom"), str(tmp_path / "nope.xml")]))
    reports = pipeline.poll(db, cfg, clock)
    assert [r.ok for r in reports] == [False, True, False]
    assert "not a valid feed" in reports[0].error and "no such file" in reports[2].error
    assert reports[1].new == 5


# --- a post keeps its identity when its GUID or its feed's path changes ------------------------


def _entries(items: list[tuple]) -> str:
    """An Atom feed of (guid, link or None, title, date) entries."""
    entries = "".join(
        f"<entry><id>{guid}</id><published>{date}</published><updated>{date}</updated><title>{title}</title>"
        + (f"<link rel='alternate' href='{link}'/>" if link else "")
        + f"<content type='html'>{title} body.</content></entry>"
        for guid, link, title, date in items
    )
    return ("<?xml version='1.0' encoding='UTF-8'?><feed xmlns='http://www.w3.org/2005/Atom'><id>tag:t</id>"
            f"<title>Test blog</title><updated>2026-11-26T00:00:00Z</updated>{entries}</feed>")


def _site(folder, smtp_server):
    """A config folder as a user keeps it: digest.toml, the feed beside it (a relative path in
    feeds.urls), and, on SQLite, the database beside it too."""
    folder.mkdir()
    db_url = database_url(folder) if ON_POSTGRES else "sqlite:///digest.db"
    config = write_config(folder, feeds=["blog.atom"], smtp_port=smtp_server.port, database_url=db_url)
    (folder / "blog.atom").write_text(_entries([
        ("urn:old:1", "https://blog.test/1", "One", "2026-11-20T10:00:00Z"),
        ("urn:old:2", "https://blog.test/2", "Two", "2026-11-21T10:00:00Z"),
    ]))
    run_digest(config, "subscribers", "add", "reader@example.com", check=True)
    return config


def test_a_feed_that_changes_every_guid_does_not_send_its_posts_again(tmp_path, smtp_server):
    config = _site(tmp_path / "site", smtp_server)
    assert "Edition 1: 2 posts, 1 delivered" in run_digest(config, "send", check=True).stdout
    # Every GUID rewritten (and post 1's link with tracking and http://www.), one post really new.
    (config.parent / "blog.atom").write_text(_entries([
        ("urn:new:1", "http://www.blog.test/1/?utm_source=rss", "One", "2026-11-20T10:00:00Z"),
        ("urn:new:2", "https://blog.test/2", "Two", "2026-11-21T10:00:00Z"),
        ("urn:new:3", "https://blog.test/3", "Three", "2026-11-22T10:00:00Z"),
    ]))
    second = run_digest(config, "send", check=True).stdout
    assert "blog.atom: 1 new, 0 updated, 2 unchanged" in second
    assert "Edition 2: 1 post, 1 delivered" in second
    text = smtp_server.received[-1].message.get_body(("plain",)).get_content()
    assert "Three" in text and "One" not in text and "Two" not in text
    (config.parent / "blog.atom").write_text(_entries([
        ("urn:newer:1", "https://blog.test/1", "One", "2026-11-20T10:00:00Z"),
        ("urn:newer:2", "https://blog.test/2", "Two", "2026-11-21T10:00:00Z"),
        ("urn:newer:3", "https://blog.test/3", "Three", "2026-11-22T10:00:00Z"),
    ]))
    assert "Nothing new to send." in run_digest(config, "send", check=True).stdout
    assert len(smtp_server.received) == 2  # one edition each time, never a post twice


def test_without_links_a_post_is_known_by_title_and_date(tmp_path, db, clock):
    path = tmp_path / "feed.atom"
    path.write_text(_entries([("urn:a:1", None, "One", "2026-11-20T10:00:00Z")]))
    cfg = load_settings(write_config(tmp_path, feeds=[str(path)]))
    pipeline.poll(db, cfg, clock)
    assert edition_titles(db, new_edition(db, clock, cfg)) == ["One"]
    path.write_text(_entries([("urn:b:1", None, "One", "2026-11-20T10:00:00Z"),
                              ("urn:b:2", None, "One", "2026-11-27T10:00:00Z")]))  # same title, new date
    assert pipeline.poll(db, cfg, clock)[0].new == 1
    assert [p.published_at.day for p in editions.unsent_posts(db)] == [27]


def test_a_link_many_entries_share_is_no_identity(tmp_path, db, clock):
    """Some feeds link every entry to the blog's home page: a new post must not be taken for the
    one that just dropped off the feed."""
    path = tmp_path / "feed.atom"
    home = "https://blog.test/"
    path.write_text(_entries([("urn:1", home, "One", "2026-11-20T10:00:00Z"), ("urn:2", home, "Two", "2026-11-21T10:00:00Z")]))
    cfg = load_settings(write_config(tmp_path, feeds=[str(path)]))
    pipeline.poll(db, cfg, clock)
    new_edition(db, clock, cfg)
    path.write_text(_entries([("urn:2", home, "Two", "2026-11-21T10:00:00Z"), ("urn:3", home, "Three", "2026-11-22T10:00:00Z")]))
    assert pipeline.poll(db, cfg, clock)[0].new == 1
    assert edition_titles(db, new_edition(db, clock, cfg)) == ["Three"]


def test_moving_the_config_folder_with_its_feeds_sends_nothing_again(tmp_path, smtp_server):
    config = _site(tmp_path / "site", smtp_server)
    run_digest(config, "send", check=True)
    moved = tmp_path / "elsewhere" / "site"
    shutil.copytree(config.parent, moved)
    assert "Nothing new to send." in run_digest(moved / "digest.toml", "send", check=True).stdout
    assert len(smtp_server.received) == 1


def test_a_source_keyed_by_its_absolute_path_is_re_keyed_not_sent_again(tmp_path, smtp_server):
    """Sources stored by an earlier version under the absolute path keep their posts."""
    config = _site(tmp_path / "site", smtp_server)
    run_digest(config, "send", check=True)
    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    absolute = str((config.parent / "blog.atom").resolve())
    with session(engine) as s:
        source = s.exec(select(Source)).one()
        source.url = absolute  # what the earlier version stored
        s.add(source)
        s.commit()
    out = run_digest(config, "send", check=True).stdout
    assert "0 new" in out and "Nothing new to send." in out
    with session(engine) as s:
        assert [src.url for src in s.exec(select(Source)).all()] == ["blog.atom"]
    engine.dispose()
    assert len(smtp_server.received) == 1


def test_a_post_stored_before_lead_images_gets_its_image_on_the_next_poll_unless_sent(tmp_path, db, clock):
    thumbnail = ("<media:thumbnail xmlns:media='http://search.yahoo.com/mrss/' width='1200' height='800'"
                 " url='https://blog.test/{id}.jpg'/></entry>")
    entries = [{"id": 1, "date": "2026-11-20T10:00:00Z", "title": "Explained: Sent"}]
    cfg, path = setup(tmp_path, entries)
    pipeline.poll(db, cfg, clock)
    new_edition(db, clock, cfg)
    entries.append({"id": 2, "date": "2026-11-21T10:00:00Z", "title": "Explained: Unsent"})
    path.write_text(feed(entries))
    pipeline.poll(db, cfg, clock)
    for post in db.exec(select(Post)).all():  # as the migration leaves them: no image
        post.image_url = post.image_width = post.image_height = None
        db.add(post)
    db.commit()
    *posts, end = feed(entries).split("</entry>")  # the feed now gives each post an image
    path.write_text("".join(part + thumbnail.format(id=n) for n, part in enumerate(posts, start=1)) + end)
    report = pipeline.poll(db, cfg, clock)[0]
    assert (report.new, report.updated) == (0, 0)  # no post is new, no text was edited
    images = {p.display_title: (p.image_url, p.image_width, p.image_height) for p in db.exec(select(Post)).all()}
    assert images == {"Sent": (None, None, None), "Unsent": ("https://blog.test/2.jpg", 1200, 800)}
    [section] = editions.edition_view(db, new_edition(db, clock, cfg)).sections
    assert [p.image_url for p in section.posts] == ["https://blog.test/2.jpg"]
