"""Parsing real feed shapes into posts: Blogger Atom, WordPress RSS, broken and hostile feeds."""

from __future__ import annotations

import pytest

from conftest import FIXTURES
from digest.content import feeds
from digest.errors import FeedError


def parse(name: str, **kw) -> feeds.ParsedFeed:
    return feeds.parse((FIXTURES / name).read_bytes(), name, **kw)


def test_blogger_titles_become_sections():
    feed = parse("blogger.atom")
    got = [(p.category, p.display_title) for p in feed.posts]
    assert got == [
        ("Architecture", "Confluent Cloud Gateway"),
        ("Explained", "Model Distillation Attacks"),
        ("Explained", "AWS ENIs (Elastic Network Interfaces)"),
        ("In Focus", "The Lean AI Firm"),
        ("Architecture", "Snowflake"),
    ]
    first = feed.posts[0]
    assert first.author == "Phee Jay"
    assert first.url == "https://www.codelooru.com/2026/06/architecture-confluent-cloud-gateway.html"
    assert first.guid.startswith("tag:blogger.com,1999:blog-")
    assert first.published_at.isoformat() == "2026-06-26T16:30:00+00:00"
    assert feed.title == "codelooru"


def test_excerpt_is_text_cut_at_a_word_with_ellipsis():
    post = parse("blogger.atom", excerpt_words=13).posts[4]
    assert post.excerpt == "A data engineer kicks off a heavy quarterly report at 9 a.m. It…"
    assert "<" not in parse("blogger.atom").posts[0].excerpt
    assert len(parse("blogger.atom", excerpt_words=60).posts[0].excerpt.split()) == 60


def test_wordpress_rss_uses_content_and_feed_categories():
    feed = parse("wordpress.rss")
    by_title = {p.title: p for p in feed.posts}
    deja = by_title["Deep Dive: Déjà vu & caching"]
    assert (deja.category, deja.display_title) == ("Deep Dive", "Déjà vu & caching")
    assert deja.author == "Ana Gomez"
    tiny = by_title["Writing a tiny HTTP server in Python"]
    assert tiny.category == "Tutorials"  # no prefix: the first feed category
    assert by_title["Weeknotes, early November"].category == "More"  # no prefix, no category
    assert tiny.guid == "https://fieldnotes.example/?p=405"


def test_category_from_feed_keeps_full_title():
    post = parse("blogger.atom", category_from="feed").posts[0]
    assert (post.category, post.display_title) == ("Architecture", "Architecture: Confluent Cloud Gateway")


@pytest.mark.parametrize("name, reason", [("broken.xml", "not a valid feed"), ("not_a_feed.html", "not a valid feed")])
def test_broken_feeds_are_a_clear_error(name, reason):
    with pytest.raises(FeedError) as exc:
        parse(name)
    assert name in str(exc.value) and reason in str(exc.value)


def test_hostile_html_never_survives():
    feed = parse("hostile.atom")
    first, second = feed.posts
    assert (first.category, first.display_title) == ("Explained", '<b>bold</b> & "quotes"')  # a text title, kept as text
    for text in (first.excerpt,):
        for bad in ("<script", "alert(", "onerror", "javascript:", "<iframe", "onclick", "<form"):
            assert bad not in text
    # CR/LF from the feed never reaches a value that could become a header
    for value in (second.title, second.display_title, second.author):
        assert "\r" not in value and "\n" not in value
    assert second.title == "Innocent subject Bcc: victim@example.com"


def test_guid_falls_back_to_link_then_hash():
    rss = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>
    <item><title>A</title><link>https://x.example/a</link><description>one</description></item>
    <item><title>B</title><description>two</description></item></channel></rss>"""
    a, b = feeds.parse(rss, "inline").posts
    assert a.guid == "https://x.example/a"
    assert b.guid.startswith("sha256:") and b.url == ""


def test_split_category_ignores_long_prefixes():
    assert feeds.split_category("Why this matters to every team today: a note", [], "title")[0] == "More"
    assert feeds.split_category("In Focus: The Lean AI Firm", [], "title") == ("In Focus", "The Lean AI Firm")


def test_values_longer_than_their_columns_are_stored_on_every_database(tmp_path, db, clock):
    """SQLite ignores VARCHAR lengths and PostgreSQL enforces them: feeds must fit either way."""
    from sqlmodel import select

    from conftest import write_config
    from digest.config import load_settings
    from digest.service import pipeline
    from digest.store.models import Post, Source

    long_link = "https://blog.test/" + "a" * 2100
    atom = (
        "<?xml version='1.0' encoding='UTF-8'?><feed xmlns='http://www.w3.org/2005/Atom'><id>tag:t</id>"
        f"<title>{'T' * 700}</title><updated>2026-11-26T00:00:00Z</updated>"
        "<entry><id>tag:t,1</id><updated>2026-11-25T00:00:00Z</updated><title>Plain title</title>"
        f"<category term='{'c' * 300}'/><link rel='alternate' href='{long_link}'/><content>Body</content></entry>"
        "</feed>"
    )
    path = tmp_path / "long.atom"
    path.write_text(atom)
    cfg = load_settings(write_config(tmp_path, feeds=[str(path)]))
    cfg.edition.category_from = "feed"

    async def fetch(location, **_kw):
        return feeds.FetchResult(path.read_bytes(), '"' + "e" * 600 + '"', "x" * 200)

    report = pipeline.poll(db, cfg, clock, fetch=fetch)[0]
    assert report.ok and report.new == 1
    post = db.exec(select(Post)).one()
    assert post.url == ""
    assert post.category == "c" * 199 + "…"  # cut to the column, visibly
    source = db.exec(select(Source)).one()
    assert len(source.title) == 500 and source.etag is None and source.last_modified is None


@pytest.mark.parametrize("url", ["ftp://blog.test/feed.xml", "htps://blog.test/feed", "file://blog.test/feed.xml"])
def test_a_feed_url_that_is_not_http_or_a_local_path_is_a_one_line_config_error(tmp_path, url):
    """Before, `htps://…` was taken for a local file of that name: "no such file" at fetch time."""
    from conftest import run_digest, write_config

    proc = run_digest(write_config(tmp_path, feeds=[url]), "fetch")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "invalid setting 'feeds.urls'" in proc.stderr and repr(url) in proc.stderr


def test_a_file_url_is_the_local_path_it_names(tmp_path):
    from conftest import run_digest, write_config
    from feedgen import write_feed

    feed = write_feed(tmp_path / "my feed.atom", [1, 2])
    proc = run_digest(write_config(tmp_path, feeds=[feed.as_uri()]), "fetch", check=True)
    assert f"{feed}: 2 new, 0 updated, 0 unchanged" in proc.stdout


def test_an_entry_without_an_author_is_the_feeds_authors():
    body = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Blog</title><id>urn:blog</id>
<updated>2026-01-01T00:00:00Z</updated><author><name>Feed Writer</name></author>
<entry><title>Anonymous</title><id>urn:a</id><link href="https://blog.test/a"/>
<updated>2026-01-01T00:00:00Z</updated><summary>a</summary></entry>
<entry><title>Signed</title><id>urn:b</id><link href="https://blog.test/b"/>
<updated>2026-01-01T00:00:00Z</updated><author><name>Guest</name></author><summary>b</summary></entry>
</feed>"""
    anonymous, signed = feeds.parse(body, "blog.atom").posts
    assert (anonymous.author, signed.author) == ("Feed Writer", "Guest")
