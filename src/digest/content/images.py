"""A post's lead image: which of the images a feed names, under which URL, at what size.

The feed's own size is all there is: nothing here (nor at send time) fetches an image, and the
email links the image where the feed put it, never through a proxy of ours or anyone's.
Blogger hands out 72 px square thumbnails (`.../s72-c/name.jpg`, `...=s72-w400-h390-c`) whose URL
asks its image server for that size: the URL is rewritten to ask for BLOGGER_WIDTH px wide and a
height that keeps the aspect the URL (or the feed) names, cropped to exactly that (`-c`), so the
email can give both sizes and nothing moves as the image loads. A square thumbnail names no
aspect: it is asked for at 16:9 (BLOGGER_ASPECT), the shape Blogger's own themes crop post
images to.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

from digest.content.plaintext import hides_characters

# Wide enough for the card on any screen (CARD_WIDTH), small enough to load fast on a phone.
BLOGGER_WIDTH = 600
BLOGGER_ASPECT = 9 / 16  # height / width asked for when the URL and the feed name none
# The card's text column: the 600 px email less 24 px of padding each side. The issue asks for at
# most 560 px; the image lines up with the text above and below it instead.
CARD_WIDTH = 552
# A side smaller than this (as the feed gives it) makes an icon, an emoji, a spacer or a tracking
# pixel (1×1), not a lead image: the next candidate is tried.
MIN_SIDE = 80
URL_LIMIT = 2000  # the column
LARGEST_SIDE = 20_000  # a width or height above this is a mistake in the feed: taken as unknown
IMG_TAGS = 20  # <img> tags of a post's content looked at, at most: the first usable one wins

# Characters RFC 3986 never allows in a URL (a browser would percent-encode them), white space
# and control characters: a URL holding one is refused rather than repaired.
_NOT_IN_URL = re.compile(r'[\x00-\x20\x7f"<>\\^`{|}]')


@dataclass(frozen=True)
class Image:
    url: str
    width: int | None  # pixels, as the feed (or a Blogger URL) says; None when unknown
    height: int | None


def pixels(value: object) -> int | None:
    """A width or height attribute ("600", "600px", 600) as pixels; None when it is not one."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and (m := re.fullmatch(r"\s*(\d{1,6})\s*(?:px)?\s*", value)):
        number = int(m.group(1))
    else:
        return None
    return number if 0 < number <= LARGEST_SIDE else None


def web_url(url: str, base: str = "") -> str | None:
    """`url` as an absolute http(s) URL (a relative one against `base`, the post's link), or None:
    another scheme (javascript:, data:, file:), a hidden character, a character no URL holds."""
    url = url.strip()
    if not url or len(url) > URL_LIMIT or _NOT_IN_URL.search(url) or hides_characters(url):
        return None
    try:
        if url.startswith("//"):
            url = "https:" + url  # protocol-relative: the https version
        elif not urlsplit(url).scheme and base:
            url = urljoin(base, url)
        parts = urlsplit(url)
    except ValueError:  # e.g. "http://[::1/x.png": Invalid IPv6 URL
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > URL_LIMIT:
        return None
    return url


def lead_image(candidates: Iterable[Image], base: str = "") -> Image | None:
    """The first candidate that makes a lead image (see `usable`), or None."""
    for candidate in candidates:
        image = usable(candidate, base)
        if image is not None:
            return image
    return None


def usable(candidate: Image, base: str = "") -> Image | None:
    """`candidate` as stored: an http(s) URL (Blogger's resized, see `blogger_sized`), its sizes
    when known; None when the URL is refused or the image is too small to lead a post."""
    url = web_url(candidate.url, base)
    if url is None:
        return None
    image = blogger_sized(url, candidate.width, candidate.height)
    if image is None:
        image = Image(url, candidate.width, candidate.height)
        if any(side is not None and side < MIN_SIDE for side in (image.width, image.height)):
            return None
    return image


# Blogger's image servers: blogger.googleusercontent.com, 1-4.bp.blogspot.com, lh3-6.googleusercontent.com.
_BLOGGER_HOST = re.compile(r"(?:blogger\.googleusercontent\.com|\d\.bp\.blogspot\.com|lh\d\.googleusercontent\.com)")
# Its size options: "s72-c", "s72-w395-h220-c", "w640-h400", "s1600", "w400-h300-c-rw": tokens
# joined by "-", at least one of them a size (s, w or h and a number: checked in blogger_sized).
_SIZE_OPTIONS = r"[a-z]+\d*(?:-[a-z]+\d*)*"
_SIZE_SEGMENT = re.compile(r"^(.*/)(" + _SIZE_OPTIONS + r")(/[^/]+)$")  # .../s72-c/name.jpg
_SIZE_SUFFIX = re.compile(r"^(.*=)(" + _SIZE_OPTIONS + r")$")  # .../img/a/TOKEN=s72-w400-h390-c


def blogger_sized(url: str, width: int | None, height: int | None) -> Image | None:
    """A Blogger image URL that names a size, rewritten to ask for BLOGGER_WIDTH px wide and a
    height, cropped to that size; None for any other URL. The height follows from the width and
    height the options name (`w395-h220`: the size the image was shown at), else from
    `width`/`height` unless the options crop (`-c`: then those are the crop's, 72×72), else from
    BLOGGER_ASPECT."""
    parts = urlsplit(url)
    if not _BLOGGER_HOST.fullmatch(parts.hostname or "") or parts.query or parts.fragment:
        return None
    found = _size_options(parts.path)
    if found is None:
        return None
    before, options, after = found
    named = {o[0]: int(o[1:]) for o in options if re.fullmatch(r"[swh]\d+", o)}
    if named.get("w") and named.get("h"):
        aspect: float = named["h"] / named["w"]
    elif width and height and "c" not in options:
        aspect = height / width
    else:
        aspect = BLOGGER_ASPECT
    new_height = min(max(1, round(BLOGGER_WIDTH * aspect)), LARGEST_SIDE)
    path = f"{before}w{BLOGGER_WIDTH}-h{new_height}-c{after}"
    return Image(parts._replace(path=path).geturl(), BLOGGER_WIDTH, new_height)


def _size_options(path: str) -> tuple[str, list[str], str] | None:
    """(what comes before, the options, what comes after) of a Blogger path naming a size."""
    for form in (_SIZE_SUFFIX, _SIZE_SEGMENT):
        match = form.match(path)
        if match is None:
            continue
        options = match.group(2).split("-")
        if any(re.fullmatch(r"[swh]\d+", o) for o in options):  # not a path segment of letters ("img", "a")
            return match.group(1), options, (match.group(3) if form is _SIZE_SEGMENT else "")
    return None


def shown_size(width: int | None, height: int | None) -> tuple[int, int | None]:
    """(width, height) the email shows an image at: as large as the card allows, never wider than
    the image itself; the height in proportion (None when unknown: the mail program finds it)."""
    if width is None:
        return CARD_WIDTH, None
    shown = min(width, CARD_WIDTH)
    return shown, (max(1, round(height * shown / width)) if height else None)


class _ImgTags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[Image] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img" and len(self.images) < IMG_TAGS:
            values = {k: v or "" for k, v in attrs}
            self.images.append(Image(values.get("src", ""), pixels(values.get("width")), pixels(values.get("height"))))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)


def img_tags(fragment: str) -> list[Image]:
    """The <img> tags of an HTML fragment (the first IMG_TAGS), in order: src, width, height."""
    if "<img" not in fragment.lower():
        return []
    parser = _ImgTags()
    parser.feed(fragment)
    parser.close()
    return parser.images
