"""Which posts go into an edition: each exactly once, late posts not lost, edits not resent."""

from __future__ import annotations

import shutil
from datetime import timedelta

from sqlmodel import select

from conftest import FIXTURES, write_config
from digest import editions, sources
from digest.config import load_settings
from digest.models import EditionPost, Post

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
    sources.poll(db, cfg, clock)
    first = new_edition(db, clock, cfg)
    assert first.number == 1 and edition_titles(db, first) == ["Explained: One"]
    assert new_edition(db, clock, cfg) is None  # nothing new

    # A backdated post that appears later is not lost: it goes into the next edition.
    path.write_text(feed([
        {"id": 1, "date": "2026-11-20T10:00:00Z", "title": "Explained: One"},
        {"id": 2, "date": "2026-10-01T10:00:00Z", "title": "Explained: Backdated"},
    ]))
    clock.now += timedelta(days=7)
    report = sources.poll(db, cfg, clock)[0]
    assert (report.new, report.unchanged) == (1, 1)
    second = new_edition(db, clock, cfg)
    assert second.number == 2 and edition_titles(db, second) == ["Explained: Backdated"]
    post_ids = db.exec(select(EditionPost.post_id)).all()
    assert len(post_ids) == len(set(post_ids)) == 2


def test_edited_after_sending_is_not_sent_again(tmp_path, db, clock):
    cfg, path = setup(tmp_path, [{"id": 1, "date": "2026-11-20T10:00:00Z", "title": "Explained: One"}])
    sources.poll(db, cfg, clock)
    new_edition(db, clock, cfg)
    path.write_text(feed([{"id": 1, "date": "2026-11-20T10:00:00Z", "title": "Explained: One (fixed typo)", "body": "New"}]))
    sources.poll(db, cfg, clock)
    assert new_edition(db, clock, cfg) is None
    # an unsent post does pick up its edit
    path.write_text(feed([
        {"id": 1, "date": "2026-11-20T10:00:00Z", "title": "Explained: One (fixed typo)", "body": "New"},
        {"id": 3, "date": "2026-11-21T10:00:00Z", "title": "Explained: Draft"},
    ]))
    sources.poll(db, cfg, clock)
    path.write_text(feed([{"id": 3, "date": "2026-11-21T10:00:00Z", "title": "Explained: Final"}]))
    report = sources.poll(db, cfg, clock)[0]
    assert report.updated == 1
    assert edition_titles(db, new_edition(db, clock, cfg)) == ["Explained: Final"]


def test_new_install_only_takes_recent_posts(tmp_path, db, clock):
    cfg, path = setup(tmp_path, [
        {"id": 1, "date": "2026-11-24T10:00:00Z", "title": "Explained: Recent"},
        {"id": 2, "date": "2026-10-01T10:00:00Z", "title": "Explained: Old"},
    ], first_edition_days=7)
    sources.poll(db, cfg, clock)
    assert [p.title for p in editions.unsent_posts(db)] == ["Explained: Recent"]
    assert db.exec(select(Post).where(Post.title == "Explained: Old")).one().eligible is False


def test_sections_follow_config_order_then_alphabet_newest_first(tmp_path, db, clock):
    cfg = load_settings(write_config(tmp_path, feeds=[str(FIXTURES / "blogger.atom")],
                                     extra='\n'))
    sources.poll(db, cfg, clock)
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
    reports = sources.poll(db, cfg, clock)
    assert [r.ok for r in reports] == [False, True, False]
    assert "not a valid feed" in reports[0].error and "no such file" in reports[2].error
    assert reports[1].new == 5
