"""Fetch a feed (http(s) or a local file) and parse it into FeedPost values.

Nothing here touches the database: `sources.poll()` stores what this returns.

RSS and Atom are read by feedparser; JSON Feed (1.0 and 1.1, jsonfeed.org) by the standard `json`
module here, since feedparser does not read it and PyPI has no well-kept reader: `jsonfeed` (0.0.1)
and `pyjsonfeed` (1.0.0) were last released in 2017 and 2018; `jsonfeed-util` (1.2.0, 2025) maps
keys to attributes without checking types (an `authors` that is a string fails with
AttributeError), refuses an item without an `id` (the spec's readers fall back to the URL) and
leaves dates as strings. JSON Feed is plain JSON with a small, fixed set of keys, so the part left
to write is what every path here does anyway: check each value's type, sanitize, fall back.
A document is a JSON Feed by its content (a JSON object whose `version` is a jsonfeed.org
version URL), whatever its file name or Content-Type.
"""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import html
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import feedparser
import nh3

from digest.content.images import Image, img_tags, lead_image, pixels
from digest.content.plaintext import (
    AUTHOR_LIMIT,
    CATEGORY_LIMIT,
    SOURCE_TITLE_LIMIT,
    TITLE_LIMIT,
    clean,
    excerpt,
    hides_characters,
    shorten,
)
from digest.errors import FeedError

if TYPE_CHECKING:
    import httpx  # imported where a feed is fetched over http(s): it costs ~0.1 s at start-up

FALLBACK_CATEGORY = "More"


@dataclass(frozen=True)
class FetchResult:
    body: bytes | None  # None: not modified since the last fetch
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class FeedPost:
    guid: str
    url: str  # "" when the feed gave no http(s) link
    title: str  # plain text, one line, at most TITLE_LIMIT characters
    category: str
    display_title: str
    author: str | None
    published_at: datetime | None  # UTC
    excerpt: str  # plain text
    content_hash: str
    image_url: str | None  # the lead image (images.lead_image): an http(s) URL
    image_width: int | None  # its size in pixels, when the feed (or a Blogger URL) gives it
    image_height: int | None


def _feed_post(guid: str, url: str, title: str, category: str, display: str, author: str | None,
          published_at: datetime | None, excerpt_text: str, content_hash: str, image: Image | None) -> FeedPost:
    """A post as stored, whichever format it came in: capped to the columns and the limits."""
    return FeedPost(
        guid=guid[:2000],
        url=url,
        title=shorten(title, TITLE_LIMIT),
        category=shorten(category, CATEGORY_LIMIT),
        display_title=shorten(display, TITLE_LIMIT),
        author=author,
        published_at=published_at,
        excerpt=excerpt_text,
        content_hash=content_hash,
        image_url=image.url if image else None,  # images.URL_LIMIT: within the column
        image_width=image.width if image else None,
        image_height=image.height if image else None,
    )


@dataclass(frozen=True)
class ParsedFeed:
    title: str | None
    posts: list[FeedPost] = field(default_factory=list)


def is_http(location: str) -> bool:
    return location.lower().startswith(("http://", "https://"))  # a scheme's case does not matter


# Feeds fetched at once by one poll: enough that a few slow servers don't hold up the rest,
# few enough not to look like a crawler to a host serving several of them.
CONCURRENT_FETCHES = 8
# How often a running poll looks at its stop flag: SIGTERM ends a poll within this (and the
# time cancelled requests take to close their sockets, a few ms).
STOP_CHECK_SECONDS = 0.1


@dataclass(frozen=True)
class FetchRequest:
    location: str  # an http(s) URL or an absolute local path
    etag: str | None = None
    last_modified: str | None = None


def fetch_all(
    requests: list[FetchRequest],
    *,
    timeout: float = 20.0,
    max_bytes: int = 10 * 1024 * 1024,
    user_agent: str = "digest",
    stop: Callable[[], bool] = lambda: False,
    fetch: Callable[..., Awaitable[FetchResult]] | None = None,
    on_fetched: Callable[[], None] = lambda: None,
) -> list[FetchResult | FeedError | None]:
    """Fetch every feed, CONCURRENT_FETCHES at a time, each within `timeout` seconds in all.

    One result per request, in order: a FetchResult, the FeedError that feed failed with, or None
    when `stop()` turned true before it was done (it is cancelled: its socket is closed at once).
    Runs an event loop in the calling thread; nothing here touches the database.

    Why asyncio: httpx's timeouts are per operation (connect, each read), so a server trickling
    one byte a second never trips a 20 s read timeout and held a poll for minutes. A task can be
    cancelled wherever it waits, which gives a real total deadline per feed (`asyncio.timeout`)
    and lets SIGTERM end a poll at once, with no thread left blocked in a read. Not covered: a
    DNS lookup runs in a thread that the end of the poll waits for; the system resolver bounds it
    (resolv.conf: 5 s a try, 2 tries, by default).
    """
    return asyncio.run(_fetch_all(requests, timeout, max_bytes, user_agent, stop, fetch or fetch_one, on_fetched))


async def _fetch_all(
    requests: list[FetchRequest],
    timeout: float,
    max_bytes: int,
    user_agent: str,
    stop: Callable[[], bool],
    fetch: Callable[..., Awaitable[FetchResult]],
    on_fetched: Callable[[], None],
) -> list[FetchResult | FeedError | None]:
    turns = asyncio.Semaphore(CONCURRENT_FETCHES)
    client = _client(user_agent) if any(is_http(r.location) for r in requests) else None

    async def one(request: FetchRequest) -> FetchResult | FeedError:
        async with turns:
            try:
                return await fetch(
                    request.location, etag=request.etag, last_modified=request.last_modified,
                    timeout=timeout, max_bytes=max_bytes, client=client,
                )
            except FeedError as exc:
                return exc
            finally:
                on_fetched()  # a feed done, fetched or failed (not one cancelled by stop())

    tasks = [asyncio.create_task(one(r)) for r in requests]
    try:
        pending = set(tasks)
        while pending and not stop():
            _, pending = await asyncio.wait(pending, timeout=STOP_CHECK_SECONDS)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if client is not None:
            await client.aclose()
    return [None if t.cancelled() else t.result() for t in tasks]


def _client(user_agent: str) -> httpx.AsyncClient:
    import httpx

    # No httpx timeout: the deadline in fetch_one bounds connect, headers and body together.
    return httpx.AsyncClient(headers={"User-Agent": user_agent}, timeout=None, follow_redirects=True)


async def fetch_one(
    location: str,
    *,
    client: httpx.AsyncClient | None,
    etag: str | None = None,
    last_modified: str | None = None,
    timeout: float = 20.0,
    max_bytes: int = 10 * 1024 * 1024,
) -> FetchResult:
    """Read a feed's bytes: conditional GET for http(s) (all of it within `timeout` seconds),
    a plain read for a local path. `client` (needed for http(s)) carries the User-Agent."""
    if not is_http(location):
        return read_file(location, max_bytes)
    if client is None:  # fetch_all makes one whenever a location is http(s)
        raise TypeError(f"fetch_one({location!r}) needs an httpx.AsyncClient for an http(s) URL")

    import httpx

    headers = {
        "Accept": "application/atom+xml, application/rss+xml, application/feed+json, application/xml;q=0.9,"
        " application/json;q=0.9, */*;q=0.5"
    }
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("GET", location, headers=headers) as resp:
                if resp.status_code == 304:
                    return FetchResult(None, etag, last_modified)
                if resp.status_code >= 400:
                    raise FeedError(f"{location}: HTTP {resp.status_code} {resp.reason_phrase}")
                declared = resp.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise FeedError(f"{location}: feed is larger than {max_bytes} bytes")
                chunks, total = [], 0
                async for chunk in resp.aiter_bytes():
                    total += len(chunk)
                    if total > max_bytes:
                        raise FeedError(f"{location}: feed is larger than {max_bytes} bytes")
                    chunks.append(chunk)
                return FetchResult(
                    b"".join(chunks),
                    resp.headers.get("ETag"),
                    resp.headers.get("Last-Modified"),
                )
    except TimeoutError:
        raise FeedError(f"{location}: timed out after {timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise FeedError(f"{location}: {exc.__class__.__name__}: {exc}") from None


def read_file(location: str, max_bytes: int) -> FetchResult:
    """A local feed file, refused when larger than `max_bytes`."""
    path = Path(location)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise FeedError(f"{location}: file is larger than {max_bytes} bytes")
        return FetchResult(path.read_bytes())
    except FileNotFoundError:
        raise FeedError(f"{location}: no such file") from None
    except OSError as exc:
        raise FeedError(f"{location}: cannot read: {exc.strerror or exc}") from None


def parse(
    body: bytes,
    location: str,
    *,
    category_from: str = "title",
    excerpt_words: int = 60,
) -> ParsedFeed:
    """Parse feed bytes (RSS, Atom or JSON Feed). A document that is not a feed raises FeedError."""
    if _looks_like_json(body):
        return parse_json_feed(body, location, category_from=category_from, excerpt_words=excerpt_words)
    # Our own sanitizer (nh3) handles untrusted HTML; feedparser's would hide its mistakes.
    d = feedparser.parse(body, sanitize_html=False)
    if not d.entries:
        if d.get("bozo"):
            reason = d.get("bozo_exception")
            raise FeedError(f"{location}: not a valid feed ({clean(str(reason)) or 'parse error'})")
        if not d.get("version"):
            raise FeedError(f"{location}: not an RSS or Atom feed")
    title = shorten(clean(html_to_text(d.feed.get("title", ""))), SOURCE_TITLE_LIMIT) or None
    # An entry without an author of its own is the feed's (Atom's <feed><author>, RFC 4287 4.2.1;
    # RSS's <managingEditor>): feedparser leaves such entries without one.
    feed_author = _author_of(d.feed)
    posts = [_post(e, category_from, excerpt_words, feed_author) for e in d.entries]
    return ParsedFeed(title=title, posts=posts)


def _author_of(item: feedparser.FeedParserDict) -> str | None:
    """The name of an entry's or a feed's author, as text; None when it names none."""
    detail = item.get("author_detail") or {}
    raw = detail.get("name") or item.get("author", "") or ""
    return shorten(clean(html_to_text(raw)), AUTHOR_LIMIT) or None


def _post(
    entry: feedparser.FeedParserDict, category_from: str, excerpt_words: int, feed_author: str | None = None
) -> FeedPost:
    title = clean(_text_of(entry, "title")) or "(untitled)"
    content = ""
    if entry.get("content"):
        content = entry.content[0].get("value", "")
    summary = entry.get("summary", "")
    body_html = content or summary
    tags = [t.get("term") or t.get("label") for t in entry.get("tags", []) or []]
    tags = [shorten(clean(t), CATEGORY_LIMIT) for t in tags if t and clean(t)]

    category, display = split_category(title, tags, category_from)
    link = entry.get("link", "") or ""
    url = link if _is_web_link(link) and len(link) <= 2000 else ""  # longer than the column: no link
    guid = entry.get("id") or link or ""
    digest_src = (title + "\x00" + body_html).encode("utf-8", "replace")
    content_hash = hashlib.sha256(digest_src).hexdigest()
    if not guid:
        guid = "sha256:" + content_hash
    published = entry.get("published_parsed") or entry.get("updated_parsed")
    published_at = (
        datetime.fromtimestamp(calendar.timegm(published), tz=UTC)
        if published
        else None
    )
    author = _author_of(entry) or feed_author
    image = lead_image(_entry_images(entry, body_html), base=url)
    return _feed_post(guid, url, title, category, display, author, published_at,
                      excerpt(clean(html_to_text(body_html)), excerpt_words), content_hash, image)


_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".avif")


def _entry_images(entry: feedparser.FeedParserDict, body_html: str) -> list[Image]:
    """An entry's images, best first: its media:content images, then its media:thumbnails (each
    the largest first), then image enclosures, then the <img> tags of its content."""
    def largest_first(items: list[feedparser.FeedParserDict]) -> list[Image]:
        images = [Image(m.get("url") or "", pixels(m.get("width")), pixels(m.get("height"))) for m in items]
        return sorted(images, key=lambda i: -(i.width or 0) * (i.height or 0))  # stable: unknown sizes keep their order

    media = [m for m in entry.get("media_content") or [] if _is_image(m.get("medium"), m.get("type"), m.get("url"))]
    thumbnails = list(entry.get("media_thumbnail") or [])
    enclosures = [Image(e.get("href") or "", None, None) for e in entry.get("enclosures") or []
                  if _is_image(None, e.get("type"), e.get("href"))]
    return largest_first(media) + largest_first(thumbnails) + enclosures + img_tags(body_html)


def _is_image(medium: object, kind: object, url: object) -> bool:
    """Whether a media:content or an enclosure is an image: by its medium, else its MIME type,
    else (neither given) the extension of its URL."""
    if isinstance(medium, str) and medium:
        return medium.lower() == "image"
    if isinstance(kind, str) and kind:
        return kind.lower().startswith("image/")
    return isinstance(url, str) and urlsplit(url).path.lower().endswith(_IMAGE_EXTENSIONS)


def _looks_like_json(body: bytes) -> bool:
    """True when the first character that is not white space (after a UTF-8 byte order mark)
    opens a JSON object or array: no XML document starts so."""
    start = body[:1024].lstrip(b"\xef\xbb\xbf \t\r\n")  # 1 KB: leading white space of a real feed is short
    return start[:1] in (b"{", b"[")


_JSON_FEED_VERSION = ("https://jsonfeed.org/version/", "http://jsonfeed.org/version/")  # 1.0 feeds in the wild use http


def parse_json_feed(
    body: bytes,
    location: str,
    *,
    category_from: str = "title",
    excerpt_words: int = 60,
) -> ParsedFeed:
    """A JSON Feed 1.0 or 1.1 as posts; bad JSON or JSON that is no JSON Feed raises FeedError.

    Every value is checked for its type: one of the wrong type counts as missing, an item that is
    not an object is skipped."""
    try:
        document = json.loads(body)  # UTF-8, -16 or -32 (RFC 8259), a UTF-8 byte order mark allowed
    except UnicodeDecodeError:
        raise FeedError(f"{location}: not a valid feed (JSON: not UTF-8 text)") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4300 digits
        raise FeedError(f"{location}: not a valid feed (JSON: {clean(str(exc))})") from None
    except RecursionError:  # arrays nested thousands deep
        raise FeedError(f"{location}: not a valid feed (JSON: nested too deeply)") from None
    version = document.get("version") if isinstance(document, dict) else None
    if not (isinstance(version, str) and version.startswith(_JSON_FEED_VERSION)):
        raise FeedError(f"{location}: not a valid feed (JSON, but no JSON Feed version)")
    items = document.get("items")
    if not isinstance(items, list):
        raise FeedError(f"{location}: not a valid feed (JSON Feed without an items list)")
    title = shorten(clean(_string(document, "title")), SOURCE_TITLE_LIMIT) or None
    feed_author = _author_names(document)
    posts = [
        _json_post(item, feed_author, category_from, excerpt_words)
        for item in items
        if isinstance(item, dict)
    ]
    return ParsedFeed(title=title, posts=posts)


def _json_post(item: dict[str, object], feed_author: str, category_from: str, excerpt_words: int) -> FeedPost:
    # JSON Feed titles, text content, summaries, names and tags are plain text: cleaned, never
    # read as HTML (so "a <b> c" stays as written, and the templates escape it).
    title = clean(_string(item, "title")) or "(untitled)"
    content_html = _string(item, "content_html")
    if content_html:
        body = content_html
        text = html_to_text(content_html)
    else:
        body = _string(item, "content_text") or _string(item, "summary")
        text = body
    raw_tags = item.get("tags")
    tags = [clean(t) for t in raw_tags if isinstance(t, str)] if isinstance(raw_tags, list) else []
    tags = [shorten(t, CATEGORY_LIMIT) for t in tags if t]
    category, display = split_category(title, tags, category_from)

    link = _string(item, "url") or _string(item, "external_url")
    url = link if _is_web_link(link) and len(link) <= 2000 else ""  # longer than the column: no link
    content_hash = hashlib.sha256((title + "\x00" + body).encode("utf-8", "replace")).hexdigest()
    raw_id = item.get("id")
    # The spec: an id given as a number is read as a string.
    guid = str(raw_id) if isinstance(raw_id, (str, int, float)) and not isinstance(raw_id, bool) else ""
    guid = guid or link or "sha256:" + content_hash
    published_at = _rfc3339(_string(item, "date_published")) or _rfc3339(_string(item, "date_modified"))
    author = shorten(clean(_author_names(item) or feed_author), AUTHOR_LIMIT) or None
    # `image`: "the main image for the item" (jsonfeed.org/version/1.1), no size given.
    candidates = [Image(_string(item, "image"), None, None), *img_tags(content_html)]
    return _feed_post(guid, url, title, category, display, author, published_at, excerpt(clean(text), excerpt_words),
                      content_hash, lead_image(candidates, base=url))


def _string(obj: dict[str, object], key: str) -> str:
    value = obj.get(key)
    return value if isinstance(value, str) else ""


def _author_names(obj: dict[str, object]) -> str:
    """ "A, B" from `authors` (1.1), else the name of `author` (1.0); "" when there is none."""
    authors = obj.get("authors")
    if not isinstance(authors, list):
        single = obj.get("author")
        authors = [single] if isinstance(single, dict) else []
    names = [clean(_string(a, "name")) for a in authors if isinstance(a, dict)]
    return ", ".join(n for n in names if n)


def _rfc3339(value: str) -> datetime | None:
    """An RFC 3339 date-time in UTC; None when missing or not a date. One without an offset is
    taken as UTC, as feedparser takes it for RSS and Atom."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip().upper())  # RFC 3339 allows a lower-case t and z
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: year 1 at +14:00 is before year 1 in UTC
        return None


_PREFIX = re.compile(r"^\s*([^:]{1,40}?):\s+(\S.*)$")


def split_category(title: str, tags: list[str], category_from: str) -> tuple[str, str]:
    """(section, shown title): "Architecture: Snowflake" -> ("Architecture", "Snowflake")."""
    if category_from == "title":
        m = _PREFIX.match(title)
        if m and len(m.group(1).split()) <= 4:
            return m.group(1).strip(), m.group(2).strip()
    return (tags[0] if tags else FALLBACK_CATEGORY), title


_BLOCK = re.compile(
    r"<(?:br|/?p|/?div|/?h[1-6]|/?li|/?ul|/?ol|/?tr|/?td|/?th|/?blockquote|/?pre|/?section|"
    r"/?article|/?figure|/?figcaption|img|hr)\b[^>]*>",
    re.IGNORECASE,
)
_SPACE = re.compile(r"\s+")


def html_to_text(fragment: str) -> str:
    """Untrusted HTML to plain text: tags (and script/style contents) dropped, entities decoded."""
    if not fragment:
        return ""
    spaced = _BLOCK.sub(" ", fragment)
    stripped = nh3.clean(spaced, tags=set(), attributes={}, strip_comments=True)
    return _SPACE.sub(" ", html.unescape(stripped)).strip()


def _text_of(entry: feedparser.FeedParserDict, key: str) -> str:
    """A text construct as plain text: markup is stripped only when the feed says it is HTML."""
    value = entry.get(key, "") or ""
    kind = (entry.get(key + "_detail") or {}).get("type", "text/html")
    return value if kind == "text/plain" else html_to_text(value)


def _is_web_link(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    # A link holding a character nobody sees (a bidi override, a zero-width space) is no link.
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not hides_characters(url)
