"""Parsing real feed shapes into posts: Blogger Atom, WordPress RSS, JSON Feed, broken and hostile feeds."""

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


def test_json_feed_titles_and_tags_become_sections():
    feed = parse("jsonfeed.json")
    assert feed.title == "Sidings"
    got = [(p.category, p.display_title) for p in feed.posts]
    assert got == [
        ("Explained", "Signal Blocks"),
        ("In Focus", "Timetable Graphs"),
        ("Notes", "Weeknotes 25"),  # no prefix: the first tag
        ("Explained", "Level Crossings"),
    ]
    blocks, graphs, weeknotes, crossings = feed.posts
    assert blocks.guid == blocks.url == "https://sidings.example/2026/06/signal-blocks"
    assert blocks.published_at.isoformat() == "2026-06-26T16:30:00+00:00"  # date_published, not date_modified
    assert weeknotes.published_at.isoformat() == "2026-06-21T18:45:00+00:00"  # lower-case t and z (RFC 3339)
    assert crossings.published_at.isoformat() == "2026-06-20T10:00:00+00:00"  # only date_modified
    assert weeknotes.guid == "1042"  # a numeric id is read as a string (the spec)
    assert crossings.guid == crossings.url == "https://sidings.example/2026/06/level-crossings"  # no id: the url
    # authors (1.1) joined, author (1.0), else the feed's authors
    assert (blocks.author, weeknotes.author, graphs.author) == ("Rosa Lind, Tomás Ek", "Guest Writer", "Rosa Lind")


def test_json_feed_html_is_sanitized_and_text_stays_text():
    blocks, graphs, weeknotes, _ = parse("jsonfeed.json", excerpt_words=200).posts
    assert blocks.excerpt.startswith("A railway line is cut into blocks, and only one train")
    for bad in ("<script", "alert(", "onerror", "<strong", "<img"):
        assert bad not in blocks.excerpt
    assert graphs.excerpt == "Distance against time Every train is a line; where two lines cross, trains meet & one of them waits."
    # content_text is text: "<b>" and "x < y" are what the author wrote, not markup to strip
    assert weeknotes.excerpt == "Short week. Fixed the <b> tags in the old importer & wrote about x < y. More next week."


def test_json_feed_category_from_feed_uses_the_first_tag():
    blocks = parse("jsonfeed.json", category_from="feed").posts[0]
    assert (blocks.category, blocks.display_title) == ("Explained", "Explained: Signal Blocks")


def test_json_feed_is_known_by_content_not_by_name(tmp_path):
    body = (FIXTURES / "jsonfeed.json").read_bytes()
    assert len(feeds.parse(b"\xef\xbb\xbf\n  " + body, "https://x.example/feed").posts) == 4  # BOM, white space
    assert feeds.parse((FIXTURES / "blogger.atom").read_bytes(), "feed.json").title == "codelooru"


def test_json_feed_1_0_with_odd_types_is_read_as_far_as_it_goes():
    body = b"""{"version": "https://jsonfeed.org/version/1", "title": ["not", "text"], "author": {"name": "Solo"},
      "items": ["junk", {"id": true, "title": 7, "url": "javascript:alert(1)", "tags": "Tag",
                         "authors": "Ann", "content_html": null, "date_published": "yesterday"}]}"""
    feed = feeds.parse(body, "odd.json")
    assert feed.title is None
    (post,) = feed.posts
    assert (post.title, post.url, post.category, post.author, post.published_at) == (
        "(untitled)", "", "More", "Solo", None)
    assert post.guid == "javascript:alert(1)"  # an identity only, never shown: as the XML path keeps a link


@pytest.mark.parametrize("body, reason", [
    (b'{"version": "https://jsonfeed.org/version/1.1", "items": [', "not a valid feed (JSON: Expecting value: line 1"),
    (b'{"version": "1.1", "items": []}', "not a valid feed (JSON, but no JSON Feed version)"),
    (b'[{"version": "https://jsonfeed.org/version/1.1"}]', "not a valid feed (JSON, but no JSON Feed version)"),
    (b'{"version": "https://jsonfeed.org/version/1.1", "items": {}}', "not a valid feed (JSON Feed without an items list)"),
    (b'{"title": "\xff"}', "not a valid feed (JSON: not UTF-8 text)"),
    (b"[" * 100_000, "not a valid feed (JSON: nested too deeply)"),
])
def test_bad_json_or_json_that_is_no_json_feed_is_a_one_line_error(body, reason):
    with pytest.raises(FeedError) as exc:
        feeds.parse(body, "https://x.example/feed.json")
    message = str(exc.value)
    assert message.startswith("https://x.example/feed.json: " + reason) and "\n" not in message


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


# --- lead images ------------------------------------------------------------------------------

def lead(post: feeds.FeedPost) -> tuple[str | None, int | None, int | None]:
    return post.image_url, post.image_width, post.image_height


def test_each_post_takes_its_lead_image_from_the_feed():
    posts = {p.display_title: lead(p) for p in parse("images.rss").posts}
    assert posts == {
        # Blogger's 72 px square thumbnail, asked for 600 px wide; its height from the w400-h300 the URL names
        "The lighthouse at dusk": (
            "https://blogger.googleusercontent.com/img/b/R29vZ2xl/AVvXsEhTestLighthouse0Qm9Zx7Yk2/w600-h450-c/lighthouse-dusk.jpg",
            600, 450),
        # ...and the other form of its URLs; a square crop names no aspect ratio: asked for at 16:9
        "Tide pools": ("https://blogger.googleusercontent.com/img/a/AVvXsEgTestTidePools8Lw3Rn5Kd1=w600-h338-c", 600, 338),
        # media:content: the largest image (not the video, not the thumbnail)
        "Night market": ("https://static.pictures.example/2026/11/night-market-large.jpg", 1200, 800),
        # the enclosure that is an image (not the podcast's mp3), no size given
        "Bridges of the old town": ("https://cdn.pictures.example/upload/v1764/bridges-cover.png", None, None),
        # the first <img> of the content that is an http(s) image, not a data: or javascript: one
        # nor a tracking pixel
        "First frost": ("https://pictures.example/wp-content/uploads/2026/11/frost-on-dahlias.jpg", 1024, 683),
        # javascript:, data:, a quote that would end the attribute, a hidden character: no image
        "Seed catalogue": (None, None, None),
    }


def test_a_json_feed_items_image_and_else_its_first_img():
    body = b"""{"version": "https://jsonfeed.org/version/1.1", "title": "J", "items": [
      {"id": "1", "url": "https://j.example/1", "title": "One", "content_text": "x",
       "image": "https://j.example/img/one.jpg"},
      {"id": "2", "url": "https://j.example/posts/2", "title": "Two", "image": "javascript:alert(1)",
       "content_html": "<p><img src='/img/two.png' width='640' height='480'>Two</p>"},
      {"id": "3", "url": "https://j.example/3", "title": "Three", "image": 42, "content_html": "<p>No picture</p>"}]}"""
    posts = feeds.parse(body, "j.json").posts
    assert [lead(p) for p in posts] == [
        ("https://j.example/img/one.jpg", None, None),
        ("https://j.example/img/two.png", 640, 480),  # relative: against the post's link
        (None, None, None),
    ]


@pytest.mark.parametrize(("url", "declared", "expected"), [
    ("https://blogger.googleusercontent.com/img/b/R29vZ2xl/AVv/s72-c/a.png", (72, 72),
     ("https://blogger.googleusercontent.com/img/b/R29vZ2xl/AVv/w600-h338-c/a.png", 600, 338)),
    ("https://blogger.googleusercontent.com/img/b/R29vZ2xl/AVv/s72-w395-h220-c/a.png", (72, 72),
     ("https://blogger.googleusercontent.com/img/b/R29vZ2xl/AVv/w600-h334-c/a.png", 600, 334)),
    ("https://1.bp.blogspot.com/-aB/XyZ/AAAA/cD-eF/s320/a.jpg", (320, 240),  # not cropped: the declared aspect
     ("https://1.bp.blogspot.com/-aB/XyZ/AAAA/cD-eF/w600-h450-c/a.jpg", 600, 450)),
    ("https://blogger.googleusercontent.com/img/a/AVvXsEg-x_y=s72-w400-h390-c", (72, 72),
     ("https://blogger.googleusercontent.com/img/a/AVvXsEg-x_y=w600-h585-c", 600, 585)),
    ("https://img.youtube.com/vi/abc/default.jpg", (72, 72), None),  # a thumbnail elsewhere is too small
    ("https://example.com/s72-c/a.png", (None, None), ("https://example.com/s72-c/a.png", None, None)),
    ("//cdn.example/a.png", (None, None), ("https://cdn.example/a.png", None, None)),
    ("ftp://cdn.example/a.png", (None, None), None),
    ("https://cdn.example/a b.png", (None, None), None),
])
def test_a_lead_image_url_is_http_and_bloggers_are_asked_for_600_px(url, declared, expected):
    from digest.content.images import Image, usable
    image = usable(Image(url, *declared))
    assert (image and (image.url, image.width, image.height)) == expected
