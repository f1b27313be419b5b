"""Untrusted text made fit to show: one line, no invisible characters, a bounded length.

Titles, authors, categories and excerpts come from feeds; names from the sign-up form, `subscribers
add` and CSV imports. Unicode format characters (category Cf) draw nothing but change what a reader
sees: a right-to-left override (U+202E) shows "moc.elpmaxe" for "example.com" and can flip a title
or a name; zero-width spaces (U+200B) and joiners hide inside words and links. `clean()` drops them
all, wherever the text enters (so what is stored is clean) and again where it is shown.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote

TITLE_LIMIT = 300  # characters of a post title in an email or a page
NAME_LIMIT = 200  # a subscriber's name: the Subscriber.name column (VARCHAR(200))
AUTHOR_LIMIT = 200
CATEGORY_LIMIT = 200  # the Post.category column (VARCHAR(200))
SOURCE_TITLE_LIMIT = 500  # the Source.title column

ELLIPSIS = "…"

# Drawn as a break or a gap: become one space, then runs of spaces collapse.
_BREAKING = frozenset({"Cc", "Zl", "Zp"})
# Drawn as nothing (format characters) or not characters at all (lone surrogates, which no
# encoder accepts): dropped.
_INVISIBLE = frozenset({"Cf", "Cs"})

_ZWJ = "\u200d"
_ZWJ_RE = re.compile(_ZWJ)
_EMOJI_MODIFIERS = frozenset({"\ufe0f", *map(chr, range(0x1F3FB, 0x1F400))})  # emoji presentation, skin tones


def clean(value: str) -> str:
    """`value` on one line without format characters: control characters, CR, LF and the line
    and paragraph separators become a space, spaces collapse; bidi embeddings, overrides, isolates
    and marks (U+202A–U+202E, U+2066–U+2069, U+200E/U+200F, U+061C), zero-width characters
    (U+200B, U+200C, U+2060, U+FEFF), the soft hyphen (U+00AD) and every other Cf character are
    dropped. One exception: a zero-width joiner between two emoji stays, since it draws one emoji
    (👩‍💻) out of two and hides nothing."""
    if value.isprintable() and "  " not in value and value[:1] != " " and value[-1:] != " ":
        return value  # the common case, without a scan (isprintable() is False for every Cc, Cf, Cs, Zl, Zp)
    if _ZWJ in value:
        value = _ZWJ_RE.sub(_emoji_joiner, value)
    # One look at each distinct character, not at each character: a 100 KB title has a few dozen.
    table: dict[int, str | None] = {}
    for ch in set(value):
        if ch.isprintable():
            continue
        category = unicodedata.category(ch)
        if category in _BREAKING:
            table[ord(ch)] = " "
        elif category in _INVISIBLE and ch != _ZWJ:  # the joiners left are between emoji
            table[ord(ch)] = None
    return " ".join(value.translate(table).split())


def _emoji_joiner(match: re.Match[str]) -> str:
    text, at = match.string, match.start()
    before = text[at - 1] if at else ""
    after = text[at + 1] if at + 1 < len(text) else ""
    joins = (
        before != ""
        and after != ""
        and (before in _EMOJI_MODIFIERS or unicodedata.category(before) == "So")
        and unicodedata.category(after) == "So"
    )
    return _ZWJ if joins else ""


def shorten(value: str, limit: int) -> str:
    """At most `limit` characters: a longer `value` is cut at a word and ends with "…" (cut
    mid-word only when its last space is in the first half)."""
    if len(value) <= limit:
        return value
    cut = value[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-–—(" + _ZWJ) + ELLIPSIS


# Characters an excerpt may have per word: twice an English word with its space, so only text
# without spaces (Chinese, Japanese, a 20 KB token) is cut by characters rather than by words.
EXCERPT_CHARS_PER_WORD = 16


def excerpt(text: str, words: int) -> str:
    """About `words` words of `text` (and at most 16 characters a word), cut at a word with "…"."""
    parts = text.split(maxsplit=words)
    if len(parts) <= words:
        return shorten(" ".join(parts), words * EXCERPT_CHARS_PER_WORD)
    cut = " ".join(parts[:words]).rstrip(",;:-–—(")
    return shorten(cut + ELLIPSIS, words * EXCERPT_CHARS_PER_WORD)


def hides_characters(url: str) -> bool:
    """True when a link holds a character a reader cannot see: a control character, a space
    that is not ASCII, a format character (bidi, zero-width, soft hyphen), as it is or
    percent-encoded (%E2%80%AE): no blog links to such an address, and a mail client or a browser
    may show it decoded. An encoded control character (%0A) is allowed: browsers keep those
    encoded."""
    if not _visible(url, allow_controls=False):
        return True
    return "%" in url and not _visible(unquote(url), allow_controls=True)


def _visible(text: str, *, allow_controls: bool) -> bool:
    if text.isascii() and text.isprintable():
        return True  # the common case: no ASCII character is a format character
    for ch in set(text):
        category = unicodedata.category(ch)
        if category in _INVISIBLE or category in ("Zl", "Zp") or (category == "Zs" and ch != " "):
            return False
        if category == "Cc" and not allow_controls:
            return False
    return True
